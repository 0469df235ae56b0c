//! What the engine decides under its policy lock: each grant's runtime state, and admission of
//! first certificates, hand-outs and renewals through the one rule of
//! [`stamp_core::admission::check`], which HQ applies to the same entries when it reconciles.
//!
//! Admission does not change anything; only [`Policy::commit`] does, once the certificate is
//! built. Both run under the engine's policy lock, so nothing is reserved and then undone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::{params, OptionalExtension};
use stamp_core::admission::{self, Ask, RateWindow, Request, Usage};
use stamp_core::audit::RefusalReason;
use stamp_core::csr;
use stamp_core::device;
use stamp_core::entitlement::{GrantState, HqDeviceKey, RatePeriod, SerialRange};
use stamp_core::fingerprint;

use super::key_filter::KeyFilter;
use super::lock;
use super::writer::Pending;
use crate::{SiteError, SiteStore};

/// A grant as the engine tracks it.
pub(super) struct GrantRuntime {
    pub(super) state: GrantState,
    /// Issued, committed or in flight.
    pub(super) issued: u64,
    /// The next serial to hand out, if any is left.
    pub(super) next_serial: Option<u64>,
    /// One rate window per rate limit.
    rates: BTreeMap<RatePeriod, RateWindow>,
}

impl GrantRuntime {
    /// A grant's runtime state from the database: devices issued, the next serial, and the tail
    /// of issuance times for each rate period.
    pub(super) fn load(reader: &SiteStore, state: GrantState) -> Result<GrantRuntime, SiteError> {
        let id = state.grant.entitlement_id.clone();
        let (issued, max_serial): (i64, Option<i64>) = reader.conn().query_row(
            "SELECT COUNT(*), MAX(device_serial) FROM devices WHERE entitlement_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut rates = admission::rate_windows(&state.grant.rate_limits);
        for (period, window) in &mut rates {
            let limit = state.grant.rate_limits.get(period).copied().unwrap_or(0);
            let mut stmt = reader.conn().prepare(
                "SELECT issued_ms FROM devices WHERE entitlement_id = ?1 ORDER BY issued_ms DESC LIMIT ?2",
            )?;
            let mut times: Vec<i64> = stmt
                .query_map(params![&id, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                    r.get(0)
                })?
                .collect::<Result<_, _>>()?;
            times.reverse();
            for t in times {
                window.record(t);
            }
        }
        let next_serial = serial_after(&state.grant.serial_ranges, max_serial.map(stamp_store::from_sql));
        Ok(GrantRuntime {
            state,
            issued: u64::try_from(issued).unwrap_or(0),
            next_serial,
            rates,
        })
    }
}

fn sorted_ranges(ranges: &[SerialRange]) -> Vec<SerialRange> {
    let mut rs = ranges.to_vec();
    rs.sort_by_key(|r| r.first);
    rs
}

/// The serial after `last` in the ranges (the first one if `last` is none).
pub(super) fn serial_after(ranges: &[SerialRange], last: Option<u64>) -> Option<u64> {
    let rs = sorted_ranges(ranges);
    match last {
        None => rs.first().map(|r| r.first),
        Some(l) => rs.iter().find_map(|r| {
            if l < r.first {
                Some(r.first)
            } else if l < r.last {
                Some(l + 1)
            } else {
                None
            }
        }),
    }
}

/// A refusal, with the grant it concerns when known.
pub(super) type Refusal = (Option<String>, RefusalReason);

/// A request admitted: what [`Policy::commit`] records once its certificate is built.
pub(super) struct Admitted {
    pub(super) entitlement_id: String,
    pub(super) device_serial: u64,
    pub(super) spki_sha256: [u8; 32],
    pub(super) time_ms: i64,
    /// A renewal: it counts against no quota or rate, and becomes the device's certificate.
    pub(super) renewal: bool,
}

pub(super) struct Policy {
    pub(super) grants: HashMap<String, GrantRuntime>,
    /// HQ-generated keys per grant (from the sealed packages) and how many were handed out.
    pub(super) hq_keys: HashMap<String, (Vec<HqDeviceKey>, u64)>,
    /// Keys and renewals admitted whose entries are not committed yet.
    pub(super) pending: Arc<Pending>,
    /// Every key certified or admitted: lets a new key skip the database lookup.
    pub(super) key_filter: KeyFilter,
    pub(super) last_time_ms: i64,
    pub(super) reader: SiteStore,
}

impl Policy {
    fn key_known(&self, spki_sha256: &[u8; 32]) -> Result<bool, SiteError> {
        if !self.key_filter.may_contain(spki_sha256) {
            return Ok(false);
        }
        if lock(&self.pending.keys).contains(spki_sha256) {
            return Ok(true);
        }
        Ok(!self.key_owners(spki_sha256)?.is_empty())
    }

    /// The device serials whose certificates (first or renewed) certify this key.
    fn key_owners(&self, spki_sha256: &[u8; 32]) -> Result<Vec<u64>, SiteError> {
        let mut stmt = self.reader.conn().prepare_cached(
            "SELECT device_serial FROM devices WHERE spki_sha256 = ?1
             UNION SELECT device_serial FROM renewals WHERE spki_sha256 = ?1",
        )?;
        let owners = stmt
            .query_map([spki_sha256.as_slice()], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(stamp_store::from_sql))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(owners)
    }

    /// A device's live certificate (the newest, renewed or first) and its grant: in flight, or
    /// committed.
    fn live_certificate(&self, serial: u64) -> Result<Option<(String, Vec<u8>)>, SiteError> {
        let Ok(serial_i) = i64::try_from(serial) else {
            return Ok(None);
        };
        let conn = self.reader.conn();
        let Some(entitlement_id) = conn
            .query_row(
                "SELECT entitlement_id FROM devices WHERE device_serial = ?1",
                [serial_i],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        else {
            return Ok(None);
        };
        if let Some((cert, _)) = lock(&self.pending.renewals).get(&serial) {
            return Ok(Some((entitlement_id, cert.clone())));
        }
        let cert: Option<Vec<u8>> = conn
            .query_row(
                "SELECT certificate FROM renewals WHERE device_serial = ?1 ORDER BY log_index DESC LIMIT 1",
                [serial_i],
                |r| r.get(0),
            )
            .optional()?;
        let cert = match cert {
            Some(c) => c,
            None => conn.query_row(
                "SELECT certificate FROM devices WHERE device_serial = ?1",
                [serial_i],
                |r| r.get(0),
            )?,
        };
        Ok(Some((entitlement_id, cert)))
    }

    /// Renewals of a device, committed or in flight, less than `period_ms` before `time_ms`.
    fn renewals_since(&self, serial: u64, time_ms: i64, period_ms: i64) -> Result<u64, SiteError> {
        let committed: i64 = self.reader.conn().query_row(
            "SELECT COUNT(*) FROM renewals WHERE device_serial = ?1 AND issued_ms > ?2",
            params![stamp_store::to_sql(serial), time_ms.saturating_sub(period_ms)],
            |r| r.get(0),
        )?;
        let in_flight = lock(&self.pending.renewals).get(&serial).map_or(0, |e| e.1);
        Ok(u64::try_from(committed).unwrap_or(0).saturating_add(in_flight))
    }

    /// Decides a first certificate (`ask` is issue or hand-out) at `time_ms`; changes nothing.
    pub(super) fn admit(
        &self,
        entitlement_id: &str,
        ask: Ask,
        station: &str,
        key_type: csr::KeyType,
        spki_sha256: [u8; 32],
        time_ms: i64,
    ) -> Result<Result<Admitted, RefusalReason>, SiteError> {
        let Some(g) = self.grants.get(entitlement_id) else {
            return Ok(Err(RefusalReason::UnknownEntitlement));
        };
        let Some(key_type) = device::device_key_type(key_type) else {
            return Ok(Err(RefusalReason::KeyTypeNotAllowed));
        };
        let req = Request {
            ask,
            time_ms,
            station,
            key_type: Some(key_type),
            device_serial: None,
            key_known: self.key_known(&spki_sha256)?,
        };
        let usage = Usage {
            issued: g.issued,
            rates: &g.rates,
            device_renewals: 0,
        };
        if let Some(b) = admission::check(&g.state, &usage, &req).first() {
            return Ok(Err(b.refusal()));
        }
        let Some(device_serial) = g.next_serial else {
            return Ok(Err(RefusalReason::QuotaExhausted));
        };
        Ok(Ok(Admitted {
            entitlement_id: entitlement_id.to_owned(),
            device_serial,
            spki_sha256,
            time_ms,
            renewal: false,
        }))
    }

    /// Decides a renewal at `time_ms`; changes nothing. The request's subject must be exactly
    /// that of a device this site issued (and ask for no subject alternative name). A new key
    /// needs `proof`: the device's signature with its current key
    /// ([`device::verify_renewal_proof`]); keeping the key needs none (the request's own
    /// signature proves possession). Then the grant's rule, as for every request.
    /// Returns, with the decision, whether the renewal keeps the device's key.
    pub(super) fn admit_renewal(
        &self,
        csr: &csr::VerifiedCsr,
        proof: Option<&[u8]>,
        station: &str,
        time_ms: i64,
    ) -> Result<Result<(Admitted, bool), Refusal>, SiteError> {
        let spki_sha256 = fingerprint::sha256(csr.spki_der());
        let target = match device::serial_in_subject(csr.subject_der()) {
            Some(serial) => self.live_certificate(serial)?.map(|t| (serial, t)),
            None => None,
        };
        let Some((device_serial, (entitlement_id, live))) = target.filter(|(_, (_, cert))| {
            device::subject_matches(cert, csr.subject_der()) && !csr.requests_subject_alt_name()
        }) else {
            return Ok(Err((None, RefusalReason::UnknownDevice)));
        };
        let refuse = |r| Ok(Err((Some(entitlement_id.clone()), r)));
        let live_key = stamp_core::cert::parse(&live)
            .map(|c| fingerprint::sha256(c.public_key().raw))
            .ok();
        let keeps_key = live_key == Some(spki_sha256);
        if !keeps_key {
            let proven = proof.is_some_and(|p| device::verify_renewal_proof(&live, &spki_sha256, p).is_ok());
            if !proven {
                return refuse(RefusalReason::PossessionNotProven);
            }
        }
        let Some(g) = self.grants.get(&entitlement_id) else {
            return refuse(RefusalReason::UnknownEntitlement);
        };
        let Some(key_type) = device::device_key_type(csr.key_type()) else {
            return refuse(RefusalReason::KeyTypeNotAllowed);
        };
        // A new key must be new: certified before (even for this device, as HQ's claims see it),
        // it is a duplicate.
        let key_known = !keeps_key && self.key_known(&spki_sha256)?;
        let limit = g.state.grant.renewal_limit;
        let req = Request {
            ask: Ask::Renew { keeps_key },
            time_ms,
            station,
            key_type: Some(key_type),
            device_serial: Some(device_serial),
            key_known,
        };
        let usage = Usage {
            issued: g.issued,
            rates: &g.rates,
            device_renewals: self.renewals_since(device_serial, time_ms, limit.period.seconds() * 1000)?,
        };
        if let Some(b) = admission::check(&g.state, &usage, &req).first() {
            return refuse(b.refusal());
        }
        Ok(Ok((
            Admitted {
                entitlement_id,
                device_serial,
                spki_sha256,
                time_ms,
                renewal: true,
            },
            keeps_key,
        )))
    }

    /// Records what was admitted once its certificate `cert` is built: a first certificate takes
    /// its serial, a unit of quota and a place in every rate window; a renewal becomes the
    /// device's live certificate. Either way its key is known from now on.
    pub(super) fn commit(&mut self, a: &Admitted, cert: &[u8]) {
        if a.renewal {
            let mut renewals = lock(&self.pending.renewals);
            let entry = renewals.entry(a.device_serial).or_insert_with(|| (Vec::new(), 0));
            entry.0 = cert.to_vec();
            entry.1 += 1;
        } else if let Some(g) = self.grants.get_mut(&a.entitlement_id) {
            g.next_serial = serial_after(&g.state.grant.serial_ranges, Some(a.device_serial));
            g.issued += 1;
            for window in g.rates.values_mut() {
                window.record(a.time_ms);
            }
        }
        lock(&self.pending.keys).insert(a.spki_sha256);
        self.key_filter.insert(&a.spki_sha256);
        self.last_time_ms = a.time_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_walk_the_ranges_in_order() {
        let rs = [
            SerialRange { first: 50, last: 51 },
            SerialRange { first: 10, last: 11 },
        ];
        assert_eq!(serial_after(&rs, None), Some(10));
        assert_eq!(serial_after(&rs, Some(10)), Some(11));
        assert_eq!(serial_after(&rs, Some(11)), Some(50));
        assert_eq!(serial_after(&rs, Some(51)), None);
    }
}
