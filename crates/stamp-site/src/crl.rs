//! The site issuing CA's CRL: every certificate the site issued (first issue and renewals) to a
//! device HQ revoked in an entitlement update, so RFC 5280 verifiers (`openssl verify
//! -crl_check`) refuse those devices. Numbers grow by one per CRL; each CRL made is recorded.

use rusqlite::params;
use stamp_core::crl::{self, CrlReport, Revoked};
use stamp_core::fingerprint;
use time::OffsetDateTime;

use crate::{Site, SiteError};

impl Site {
    /// The certificates of revoked devices with their revocation times (HQ's), in grant order,
    /// then device serial, then issue order.
    pub fn revoked_certificates(&self) -> Result<Vec<(Vec<u8>, i64)>, SiteError> {
        let conn = self.store.conn();
        let mut all = conn.prepare(
            "SELECT certificate FROM devices WHERE entitlement_id = ?1
             UNION ALL SELECT certificate FROM renewals WHERE entitlement_id = ?1",
        )?;
        let mut one = conn.prepare(
            "SELECT certificate FROM devices WHERE entitlement_id = ?1 AND device_serial = ?2
             UNION ALL SELECT certificate FROM (SELECT certificate FROM renewals
               WHERE entitlement_id = ?1 AND device_serial = ?2 ORDER BY log_index)",
        )?;
        let mut out = Vec::new();
        for (state, _) in self.store.grants()? {
            let id = &state.grant.entitlement_id;
            if let Some(at) = state.all_devices_revoked_at {
                for c in all.query_map([id], |r| r.get::<_, Vec<u8>>(0))? {
                    out.push((c?, at));
                }
                continue;
            }
            for (serial, at) in &state.revoked_devices {
                let serial = i64::try_from(*serial).unwrap_or(-1);
                for c in one.query_map(params![id, serial], |r| r.get::<_, Vec<u8>>(0))? {
                    out.push((c?, *at));
                }
            }
        }
        Ok(out)
    }

    /// Makes and records the site issuing CA's next CRL, valid `days` days from `now`; returns
    /// its DER.
    pub fn crl(&mut self, days: u32, now: OffsetDateTime) -> Result<(Vec<u8>, CrlReport), SiteError> {
        let (this_update, next_update) = crl::times(now, days)?;
        let (ca_der, signer) = self.issuing()?;
        let revoked = self
            .revoked_certificates()?
            .into_iter()
            .map(|(der, at)| {
                let at = OffsetDateTime::from_unix_timestamp(at).unwrap_or(this_update);
                Revoked::of(&der, at.min(this_update))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.store.db_mut().transaction(|tx| {
            let number = stamp_store::next_crl_number(tx)?;
            let crl_der = crl::issue(
                &ca_der,
                signer.as_ref(),
                number,
                this_update,
                next_update,
                &revoked,
            )?;
            let (this, next) = (this_update.unix_timestamp(), next_update.unix_timestamp());
            stamp_store::record_crl(
                tx,
                number,
                this,
                next,
                revoked.len(),
                &fingerprint::sha256(&crl_der),
            )?;
            let report = CrlReport::of(&crl_der, number, this_update, next_update, revoked.len());
            Ok((crl_der, report))
        })
    }
}
