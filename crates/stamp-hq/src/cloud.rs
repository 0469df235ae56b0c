//! What HQ hands the cloud: the signed stamp registry, AWS IoT and Azure IoT DPS material, and
//! device revocations. Formats: `docs/cloud.md`.

use rusqlite::{params, OptionalExtension};
use serde_bytes::ByteBuf;
use stamp_core::entitlement::{DeviceRevocation, Status};
use stamp_core::profile::{Issuer, Profile};
use stamp_core::registry::{self, RegisteredDevice, Registry, RegistryEntitlement, RegistrySite};
use stamp_core::{fingerprint, SiteId};
use stamp_keys::{KeyRef, KeyStore};
use time::OffsetDateTime;

pub use crate::store::CaCert;

use crate::entitle::AmendRequest;
use crate::store::{grant_states, revocations};
use crate::{Hq, HqError};

/// What to revoke.
#[derive(Clone, Debug)]
pub enum RevokeTarget {
    /// Every certificate with this device serial.
    Serial(u64),
    /// One device certificate, by SHA-256.
    Certificate([u8; 32]),
    /// Every device of an entitlement.
    Entitlement(String),
    /// Every device of a site.
    Site(SiteId),
}

/// A recorded revocation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RevocationReport {
    /// What was revoked (`serial:N`, `certificate:HEX`, `entitlement:ID`, `site:ID`).
    pub revoked: String,
    /// Why.
    pub reason: String,
    /// When (Unix seconds).
    pub revoked_at: i64,
    /// Revocations now recorded.
    pub revocations: u64,
    /// The entitlement update that carries the revocation to the site, if one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_update: Option<crate::entitle::PackageReport>,
}

/// What a registry export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegistryReport {
    /// Its sequence.
    pub sequence: u64,
    /// SHA-256 of the OEM root, colon hex (what verifiers pin).
    pub root_fingerprint: String,
    /// Sites, entitlements, devices and revocations in it.
    pub sites: usize,
    /// Entitlements in it.
    pub entitlements: usize,
    /// Registered devices in it.
    pub devices: usize,
    /// Revocations in it.
    pub revocations: usize,
    /// Its size in bytes.
    pub bytes: usize,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

impl Hq {
    /// Records a revocation; it reaches verifiers with the next registry export. With
    /// `site_update`, also writes there the entitlement update (an amendment, sealed to the site)
    /// that revokes the devices at their site, which refuses to renew them and lists their
    /// certificates in its CRL: for a serial, the grant it was allocated to; for a certificate,
    /// the device HQ reconciled it as; for an entitlement, every device (and the grant). A site
    /// is revoked by the registry and the root's CRL (`Hq::root_crl`), not by an update.
    pub fn revoke(
        &mut self,
        target: &RevokeTarget,
        reason: &str,
        site_update: Option<&std::path::Path>,
        now: OffsetDateTime,
    ) -> Result<RevocationReport, HqError> {
        let reason: String = reason.chars().take(256).collect();
        let at = now.unix_timestamp();
        let c = self.store.conn();
        let known = match target {
            RevokeTarget::Serial(n) => c
                .query_row(
                    "SELECT 1 FROM serial_allocations WHERE first <= ?1 AND last >= ?1",
                    [i64::try_from(*n).unwrap_or(-1)],
                    |_| Ok(()),
                )
                .optional()?
                .is_some(),
            RevokeTarget::Certificate(_) => true,
            RevokeTarget::Entitlement(id) => c
                .query_row(
                    "SELECT 1 FROM entitlements WHERE entitlement_id = ?1",
                    [id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some(),
            RevokeTarget::Site(s) => self.store.site_enrolled(s)?,
        };
        let what = match target {
            RevokeTarget::Serial(n) => format!("serial:{n}"),
            RevokeTarget::Certificate(h) => format!("certificate:{}", hex::encode(h)),
            RevokeTarget::Entitlement(id) => format!("entitlement:{id}"),
            RevokeTarget::Site(s) => format!("site:{s}"),
        };
        if !known {
            return Err(HqError::UnknownRevocationTarget(what));
        }
        let (serial, cert, ent, site) = match target {
            RevokeTarget::Serial(n) => (Some(stamp_store::to_sql(*n)), None, None, None),
            RevokeTarget::Certificate(h) => (None, Some(h.to_vec()), None, None),
            RevokeTarget::Entitlement(id) => (None, None, Some(id.clone()), None),
            RevokeTarget::Site(s) => (None, None, None, Some(s.as_str().to_owned())),
        };
        let dup: Option<i64> = c
            .query_row(
                "SELECT id FROM revocations WHERE device_serial IS ?1 AND certificate_sha256 IS ?2
                 AND entitlement_id IS ?3 AND site_id IS ?4",
                params![serial, cert, ent, site],
                |r| r.get(0),
            )
            .optional()?;
        if dup.is_some() {
            return Err(HqError::AlreadyRevoked(what));
        }
        let site_update = match site_update {
            None => None,
            Some(out) => {
                let req = self.revocation_update(target, at)?;
                Some(self.amend(&req, out, now)?)
            }
        };
        let n = self.store.db_mut().write(|tx| {
            tx.execute(
                "INSERT INTO revocations (device_serial, certificate_sha256, entitlement_id, site_id, reason, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![serial, cert, ent, site, reason, at],
            )?;
            tx.query_row("SELECT COUNT(*) FROM revocations", [], |r| r.get::<_, i64>(0))
        })?;
        Ok(RevocationReport {
            revoked: what,
            reason,
            revoked_at: at,
            revocations: u64::try_from(n).unwrap_or(0),
            site_update,
        })
    }

    /// The amendment that carries a revocation to the site (see [`Hq::revoke`]).
    fn revocation_update(&self, target: &RevokeTarget, at: i64) -> Result<AmendRequest, HqError> {
        let c = self.store.conn();
        let device = |entitlement_id: String, serial: u64| AmendRequest {
            entitlement_id,
            add_quota: 0,
            not_before: None,
            not_after: None,
            status: None,
            revoke: Some(DeviceRevocation {
                revoked_at: at,
                device_serials: vec![serial],
                all: false,
            }),
        };
        match target {
            RevokeTarget::Serial(n) => {
                let id: String = c.query_row(
                    "SELECT entitlement_id FROM serial_allocations WHERE first <= ?1 AND last >= ?1",
                    [i64::try_from(*n).unwrap_or(-1)],
                    |r| r.get(0),
                )?;
                Ok(device(id, *n))
            }
            RevokeTarget::Certificate(h) => {
                let found: Option<(String, i64)> = c
                    .query_row(
                        "SELECT entitlement_id, device_serial FROM devices WHERE certificate_sha256 = ?1",
                        [h.as_slice()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                match found {
                    Some((id, serial)) => Ok(device(id, u64::try_from(serial).unwrap_or(0))),
                    None => Err(HqError::NoSiteUpdate(
                        "HQ has not reconciled this certificate, so it does not know its device; revoke by --serial"
                            .into(),
                    )),
                }
            }
            RevokeTarget::Entitlement(id) => Ok(AmendRequest {
                status: Some(Status::Revoked),
                revoke: Some(DeviceRevocation {
                    revoked_at: at,
                    device_serials: vec![],
                    all: true,
                }),
                ..device(id.clone(), 0)
            }),
            RevokeTarget::Site(_) => Err(HqError::NoSiteUpdate(
                "a revoked site gets no update: its issuing CA is revoked by the registry and the root CRL (stamp hq crl)"
                    .into(),
            )),
        }
    }

    /// Builds, signs and records the next registry; returns the file's bytes.
    /// `provisional_days`: how long after issue a device HQ has not reconciled may count as
    /// provisional (0: no limit; at most [`registry::MAX_PROVISIONAL_DAYS`]).
    pub fn export_registry(
        &mut self,
        provisional_days: u32,
        now: OffsetDateTime,
    ) -> Result<(Vec<u8>, RegistryReport), HqError> {
        if provisional_days > registry::MAX_PROVISIONAL_DAYS {
            return Err(HqError::Registry(registry::RegistryError::Malformed(
                "the provisional period is at most 3650 days",
            )));
        }
        let store = &self.store;
        let (_, root_der) = store.own_key(Profile::OemRoot)?;
        let c = store.conn();
        let last: Option<i64> =
            c.query_row("SELECT MAX(sequence) FROM registry_exports", [], |r| r.get(0))?;
        let sequence = u64::try_from(last.unwrap_or(0)).unwrap_or(0) + 1;
        let mut sites = Vec::new();
        for (site, _) in store.sites()? {
            // Site IDs were checked when enrolled.
            let Ok(id) = SiteId::new(&site) else { continue };
            let issuing_ca = store.site_certificate(&id, Profile::SiteIssuingCa)?;
            let log_size: i64 = c
                .query_row("SELECT size FROM audit_sites WHERE site_id = ?1", [&site], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or(0);
            sites.push(RegistrySite {
                site_id: site,
                issuing_ca: ByteBuf::from(issuing_ca),
                log_size: u64::try_from(log_size).unwrap_or(0),
            });
        }
        let frontiers = crate::reconcile::frontiers(c)?;
        let mut entitlements = Vec::new();
        for (site, st) in grant_states(store)? {
            let serial_frontier = frontiers
                .get(&st.grant.entitlement_id)
                .and_then(|&f| frontier_within(&st.grant.serial_ranges, f));
            entitlements.push(RegistryEntitlement {
                entitlement_id: st.grant.entitlement_id.clone(),
                site_id: site,
                product: st.grant.product.clone(),
                device_profile: st.grant.device_profile.clone(),
                serial_ranges: st.grant.serial_ranges.clone(),
                status: st.status,
                serial_frontier,
            });
        }
        let (mut devices, mut superseded) = (Vec::new(), Vec::new());
        store.for_each_device(None, |d| {
            let h = hex::decode(&d.certificate_sha256)
                .map_err(|_| HqError::CorruptStore("a device's certificate hash is not hex"))?;
            // One live certificate per serial: a renewal HQ accepted replaced a superseded one.
            let into = if d.superseded {
                &mut superseded
            } else {
                &mut devices
            };
            into.push(RegisteredDevice(d.device_serial, ByteBuf::from(h)));
            Ok(())
        })?;
        devices.sort();
        superseded.sort();
        let revocations = revocations(store)?;
        let reg = Registry {
            format: registry::FORMAT.to_owned(),
            version: registry::VERSION,
            sequence,
            issued_at: now.unix_timestamp(),
            org: store.org()?,
            root: ByteBuf::from(root_der.clone()),
            sites,
            entitlements,
            devices,
            superseded,
            revocations,
            provisional_days,
        };
        let (sign_ref, sign_cert) = store.own_key(Profile::HqAuthoritySigning)?;
        let signer = self.keys.open_signer(&KeyRef::parse(&sign_ref)?)?;
        let bytes = registry::sign(&reg, signer.as_ref(), &sign_cert)?;
        let sha = fingerprint::sha256(&bytes);
        let report = RegistryReport {
            sequence,
            root_fingerprint: fingerprint::colon_hex(&fingerprint::sha256(&root_der)),
            sites: reg.sites.len(),
            entitlements: reg.entitlements.len(),
            devices: reg.devices.len(),
            revocations: reg.revocations.len(),
            bytes: bytes.len(),
            sha256: hex::encode(sha),
        };
        let n = i64::try_from(report.devices).unwrap_or(i64::MAX);
        self.store.db_mut().write(|tx| {
            tx.execute(
                "INSERT INTO registry_exports (sequence, sha256, devices, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![stamp_store::to_sql(sequence), sha.as_slice(), n, crate::store::ts(now)],
            )
        })?;
        Ok((bytes, report))
    }

    /// A verification certificate for registering the OEM root with a cloud, signed by the root
    /// key. `spki_der` is a throwaway key's (the caller forgets its private key).
    pub fn root_verification_cert(
        &self,
        code: &str,
        spki_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, HqError> {
        let (root_ref, root_der) = self.store.own_key(Profile::OemRoot)?;
        let signer = self.keys.open_signer(&KeyRef::parse(&root_ref)?)?;
        let issuer = Issuer {
            cert_der: &root_der,
            signer: signer.as_ref(),
        };
        let serial = crate::random_serial(&aws_lc_rs::rand::SystemRandom::new())?;
        Ok(stamp_core::cloud_ca::verification_cert(
            code, spki_der, now, serial, &issuer,
        )?)
    }
}

/// The frontier the registry carries for a grant whose log reached `frontier`: the highest serial
/// of HQ's current ranges at or below it (every one of those was handed out before it), or none
/// if every range lies above it. Equal to `frontier` unless HQ's ranges changed since.
fn frontier_within(ranges: &[stamp_core::entitlement::SerialRange], frontier: u64) -> Option<u64> {
    ranges
        .iter()
        .filter(|r| r.first <= frontier)
        .map(|r| r.last.min(frontier))
        .max()
}

#[cfg(test)]
mod tests {
    use stamp_core::entitlement::SerialRange;

    use super::frontier_within;

    #[test]
    fn frontier_is_kept_within_hq_ranges() {
        let r = |first, last| SerialRange { first, last };
        let ranges = [r(500, 600), r(1, 100)];
        assert_eq!(frontier_within(&ranges, 42), Some(42));
        assert_eq!(frontier_within(&ranges, 100), Some(100));
        // Between the ranges (HQ's ranges changed since): the first range is all handed out.
        assert_eq!(frontier_within(&ranges, 300), Some(100));
        assert_eq!(frontier_within(&ranges, 550), Some(550));
        assert_eq!(frontier_within(&ranges, 900), Some(600));
        assert_eq!(frontier_within(&[r(10, 20)], 5), None);
        assert_eq!(frontier_within(&[], 5), None);
    }
}
