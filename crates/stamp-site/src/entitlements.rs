//! Entitlements at the site: verify a sealed package completely, then apply it atomically.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use stamp_core::entitlement::{
    self, Action, Entitlement, EntitlementError, GrantState, RatePeriod, SerialRange, Status,
};
use stamp_core::envelope;
use stamp_core::oid::RoleEku;
use stamp_core::profile::Profile;
use stamp_core::{cert, fingerprint};
use stamp_keys::{KeyRef, KeyStore};
use time::OffsetDateTime;

use crate::{Site, SiteError};

/// Media type of a sealed entitlement's content.
pub const CONTENT_TYPE: &str = "application/vnd.stamp.entitlement+cbor";
/// Largest package file accepted.
pub const MAX_PACKAGE: usize = entitlement::MAX_PAYLOAD + 64 * 1024;

/// Why a package was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Not a sealed envelope, or tampered with.
    #[error("entitlement package refused")]
    Envelope(#[from] envelope::EnvelopeError),
    /// A sealed envelope of another kind.
    #[error("this is a package of type {0}, not an entitlement")]
    WrongContentType(String),
    /// The signer is not the HQ authority under this site's OEM root.
    #[error("entitlement signer refused")]
    Signer(#[from] cert::CertError),
    /// Sealed to another site.
    #[error("entitlement is addressed to site {0}, not this site")]
    NotForThisSite(String),
    /// The payload was refused.
    #[error(transparent)]
    Payload(#[from] EntitlementError),
    /// The site has no credentials yet.
    #[error("this site has no credentials installed; run `stamp site install` first")]
    NotInstalled,
}

impl ImportError {
    /// A stable code naming why the package was refused.
    pub fn code(&self) -> &'static str {
        match self {
            ImportError::Envelope(..) => "envelope",
            ImportError::WrongContentType(..) => "wrong-content-type",
            ImportError::Signer(..) => "signer",
            ImportError::NotForThisSite(..) => "not-for-this-site",
            ImportError::Payload(..) => "payload",
            ImportError::NotInstalled => "not-installed",
        }
    }
}

/// An entitlement whose signature, chain, address, decryption, sequence, payload and window have
/// all been checked; only [`Site::verify_entitlement`] makes one, and only it can be applied.
#[derive(Debug)]
pub struct VerifiedEntitlement {
    entitlement: Entitlement,
    sealed_sha256: [u8; 32],
    sealed: Vec<u8>,
    /// For an amendment: the target's state after applying it.
    amended: Option<GrantState>,
}

impl VerifiedEntitlement {
    /// The verified payload.
    pub fn entitlement(&self) -> &Entitlement {
        &self.entitlement
    }

    /// The package's sequence.
    pub fn sequence(&self) -> u64 {
        self.entitlement.sequence
    }
}

/// A firmware release a grant allows, for people and JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FirmwareInfo {
    /// The release's version.
    pub version: String,
    /// Its image format.
    pub format: String,
    /// The HQ firmware key that signed it.
    pub key: String,
    /// SHA-256 of the signed image (hex).
    pub sha256: String,
}

/// The firmware releases a grant allows.
pub fn firmware_of(g: &stamp_core::entitlement::Grant) -> Vec<FirmwareInfo> {
    g.firmware
        .iter()
        .map(|f| FirmwareInfo {
            version: f.version.clone(),
            format: f.format.clone(),
            key: f.key.clone(),
            sha256: hex_lower(&f.sha256),
        })
        .collect()
}

/// One grant as the site holds it, for `site status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrantStatus {
    /// The grant's ID.
    pub entitlement_id: String,
    /// Status.
    pub status: Status,
    /// OEM ID.
    pub oem_id: String,
    /// Product ID.
    pub product_id: String,
    /// Product name.
    pub product_name: String,
    /// Quota.
    pub quota: u64,
    /// Devices issued so far.
    pub issued: u64,
    /// Devices left.
    pub remaining: u64,
    /// Rate limits.
    pub rate_limits: BTreeMap<RatePeriod, u64>,
    /// Window start (RFC 3339).
    pub not_before: String,
    /// Window end (RFC 3339).
    pub not_after: String,
    /// Whether `now` is inside the window.
    pub in_window: bool,
    /// Serial ranges.
    pub serial_ranges: Vec<SerialRange>,
    /// Stations allowed (empty: all).
    pub stations: Vec<String>,
    /// Device data.
    pub device_data: BTreeMap<String, String>,
    /// Firmware releases the site may program under it.
    pub firmware: Vec<FirmwareInfo>,
    /// Sequence of the last package that touched it.
    pub last_sequence: u64,
    /// Device serials HQ revoked (each listed in the site's CRL; their renewals are refused).
    pub revoked_devices: Vec<u64>,
    /// Whether HQ revoked every device of the grant.
    pub all_devices_revoked: bool,
}

/// Checks that every HQ-generated key is a valid key of a type the profile allows, matching the
/// public-key hash it is listed with.
fn check_hq_keys(g: &stamp_core::entitlement::Grant) -> Result<(), EntitlementError> {
    for k in &g.device_keys {
        let ok = stamp_keys::device::public_spki(&k.private_key).is_some_and(|(kt, spki)| {
            g.device_profile.key_types.contains(&kt)
                && fingerprint::sha256(&spki).as_slice() == k.spki_sha256.as_slice()
        });
        if !ok {
            return Err(EntitlementError::Invalid(
                "an HQ-generated key is invalid, of a type the profile does not allow, or not the key its hash names",
            ));
        }
    }
    Ok(())
}

impl Site {
    /// Reopens an applied grant's sealed package (stored at import, where it was fully verified)
    /// to read what was redacted from the database: HQ-generated keys and secrets.
    pub(crate) fn reopen_grant(
        &self,
        entitlement_id: &str,
    ) -> Result<Option<stamp_core::entitlement::Grant>, SiteError> {
        let sealed: Option<Vec<u8>> = self
            .store
            .conn()
            .query_row(
                "SELECT sealed FROM packages WHERE entitlement_id = ?1 AND action = 'grant'",
                [entitlement_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(sealed) = sealed else { return Ok(None) };
        let site_id = self.store.site_id()?;
        let signed = envelope::parse(&sealed, MAX_PACKAGE).map_err(ImportError::from)?;
        let leaf = cert::parse(signed.chain().first().map(Vec::as_slice).unwrap_or_default())
            .map_err(ImportError::from)?;
        let alg = stamp_core::ceremony::signature_algorithm(
            stamp_core::csr::classify_spki(leaf.public_key().raw)
                .map_err(|_| ImportError::Signer(cert::CertError::UnsupportedKey("entitlement signer")))?,
        )
        .ok_or(ImportError::Signer(cert::CertError::UnsupportedKey(
            "entitlement signer",
        )))?;
        let key = leaf.public_key().subject_public_key.data.to_vec();
        let verified = signed.verify(alg, &key, &[]).map_err(ImportError::from)?;
        let ka = self.keys.open_key_agreement(&KeyRef::parse(
            &self.store.key_ref(Profile::SiteIdentityKeyAgreement)?,
        )?)?;
        let plaintext = verified
            .open(ka.as_ref(), site_id.as_str().as_bytes())
            .map_err(ImportError::from)?;
        match Entitlement::from_cbor(&plaintext)
            .map_err(ImportError::from)?
            .action
        {
            Action::Grant(g) => Ok(Some(g)),
            Action::Amend(_) => Ok(None),
        }
    }
}

/// What `site import` applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    /// The package's sequence.
    pub sequence: u64,
    /// `grant` or `amend`.
    pub action: &'static str,
    /// SHA-256 of the package file (hex).
    pub package_sha256: String,
    /// The grant as it now stands.
    pub entitlement: GrantStatus,
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn status_of(st: &GrantState, issued: u64, now: i64) -> GrantStatus {
    let g = &st.grant;
    GrantStatus {
        entitlement_id: g.entitlement_id.clone(),
        status: st.status,
        oem_id: g.product.oem_id.clone(),
        product_id: g.product.product_id.clone(),
        product_name: g.product.name.clone(),
        quota: g.quota,
        issued,
        remaining: g.quota.saturating_sub(issued),
        rate_limits: g.rate_limits.clone(),
        not_before: rfc3339(g.not_before),
        not_after: rfc3339(g.not_after),
        in_window: g.not_before <= now && now < g.not_after,
        serial_ranges: g.serial_ranges.clone(),
        stations: g.stations.clone(),
        device_data: g.device_data.clone(),
        firmware: firmware_of(g),
        last_sequence: st.last_sequence,
        revoked_devices: st.revoked_devices.keys().copied().collect(),
        all_devices_revoked: st.all_devices_revoked_at.is_some(),
    }
}

impl Site {
    /// Verifies a sealed entitlement package, in this order, before anything changes: size; the
    /// envelope's structure and algorithms; the signer's chain to this site's pinned OEM root with
    /// the HQ authority profile (rustls-webpki) and the signature; the (signed) content type; that it
    /// is addressed to this site; decryption with this site's key; the payload; the site ID inside it; the sequence
    /// (exactly one above the last package applied: no replay, no rollback, and no package skipped,
    /// so that a suspension or a revocation cannot be left out; a gap is refused naming the missing
    /// sequences); for an amendment, that its target exists and the change is allowed. A grant
    /// whose window is already over is applied in its turn (it admits nothing): refusing it would
    /// leave a gap no later package could close.
    pub fn verify_entitlement(
        &self,
        bytes: &[u8],
        now: OffsetDateTime,
    ) -> Result<VerifiedEntitlement, SiteError> {
        let site_id = self.store.site_id()?;
        let root = self
            .store
            .certificate(Profile::OemRoot)?
            .ok_or(ImportError::NotInstalled)?;
        let signed = envelope::parse(bytes, MAX_PACKAGE).map_err(ImportError::from)?;
        let chain = signed.chain().to_vec();
        let leaf = chain
            .first()
            .ok_or(ImportError::Envelope(envelope::EnvelopeError::Malformed(
                "empty x5chain",
            )))?;
        cert::validate_end_entity(
            "entitlement signer",
            leaf,
            &chain[1..],
            &root,
            Profile::HqAuthoritySigning,
            RoleEku::HqAuthority,
            now,
        )
        .map_err(ImportError::from)?;
        let leaf_cert = cert::parse(leaf).map_err(ImportError::from)?;
        let alg = stamp_core::ceremony::signature_algorithm(
            stamp_core::csr::classify_spki(leaf_cert.public_key().raw)
                .map_err(|_| ImportError::Signer(cert::CertError::UnsupportedKey("entitlement signer")))?,
        )
        .ok_or(ImportError::Signer(cert::CertError::UnsupportedKey(
            "entitlement signer",
        )))?;
        let verified = signed
            .verify(alg, leaf_cert.public_key().subject_public_key.data.as_ref(), &[])
            .map_err(ImportError::from)?;
        // Only a signed content type means anything: checked after the signature.
        if verified.content_type() != CONTENT_TYPE {
            return Err(
                ImportError::WrongContentType(verified.content_type().chars().take(128).collect()).into(),
            );
        }
        if verified.key_id() != site_id.as_str().as_bytes() {
            let to = String::from_utf8_lossy(verified.key_id())
                .chars()
                .take(64)
                .collect();
            return Err(ImportError::NotForThisSite(to).into());
        }
        let ka_ref = KeyRef::parse(&self.store.key_ref(Profile::SiteIdentityKeyAgreement)?)?;
        let ka = self.keys.open_key_agreement(&ka_ref)?;
        let plaintext = verified
            .open(ka.as_ref(), site_id.as_str().as_bytes())
            .map_err(ImportError::from)?;
        let e = Entitlement::from_cbor(&plaintext).map_err(ImportError::from)?;
        let last = self.store.last_sequence()?;
        entitlement::check_next(&e, &site_id, last).map_err(ImportError::from)?;
        let amended = match &e.action {
            Action::Grant(g) => {
                check_hq_keys(g).map_err(ImportError::from)?;
                if self.store.grant(&g.entitlement_id)?.is_some() {
                    return Err(ImportError::Payload(EntitlementError::DuplicateId(
                        g.entitlement_id.clone(),
                    ))
                    .into());
                }
                None
            }
            Action::Amend(a) => {
                let (state, _) = self.store.grant(&a.entitlement_id)?.ok_or_else(|| {
                    ImportError::Payload(EntitlementError::UnknownTarget(a.entitlement_id.clone()))
                })?;
                Some(entitlement::amend(&state, a, e.sequence).map_err(ImportError::from)?)
            }
        };
        Ok(VerifiedEntitlement {
            entitlement: e,
            sealed_sha256: fingerprint::sha256(bytes),
            sealed: bytes.to_vec(),
            amended,
        })
    }

    /// Applies a verified entitlement in one transaction.
    pub fn apply_entitlement(
        &mut self,
        v: VerifiedEntitlement,
        now: OffsetDateTime,
    ) -> Result<ImportReport, SiteError> {
        let e = &v.entitlement;
        let (action, state) = match (&e.action, v.amended) {
            (Action::Grant(g), _) => (
                "grant",
                // Private keys and secrets stay only in the sealed package.
                GrantState::new(g.redacted(), e.sequence),
            ),
            (Action::Amend(_), Some(st)) => ("amend", st),
            (Action::Amend(a), None) => {
                return Err(
                    ImportError::Payload(EntitlementError::UnknownTarget(a.entitlement_id.clone())).into(),
                )
            }
        };
        self.store
            .apply_package(e.sequence, action, &state, &v.sealed_sha256, &v.sealed, now)?;
        let issued = self
            .store
            .grant(&state.grant.entitlement_id)?
            .map(|(_, n)| n)
            .unwrap_or(0);
        Ok(ImportReport {
            sequence: e.sequence,
            action,
            package_sha256: hex_lower(&v.sealed_sha256),
            entitlement: status_of(&state, issued, now.unix_timestamp()),
        })
    }
}

impl Site {
    /// The report of a package applied earlier (by this process or the running engine), with
    /// the grant as it stands now; `None` if no package with that sequence was applied.
    pub fn applied_report(
        &self,
        sequence: u64,
        now: OffsetDateTime,
    ) -> Result<Option<ImportReport>, SiteError> {
        let row: Option<(String, String, Vec<u8>)> = self
            .store
            .conn()
            .query_row(
                "SELECT entitlement_id, action, sha256 FROM packages WHERE sequence = ?1",
                [i64::try_from(sequence).unwrap_or(-1)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(crate::sql)?;
        let Some((id, action, sha256)) = row else {
            return Ok(None);
        };
        let Some((state, issued)) = self.store.grant(&id)? else {
            return Ok(None);
        };
        Ok(Some(ImportReport {
            sequence,
            action: if action == "grant" { "grant" } else { "amend" },
            package_sha256: hex_lower(&sha256),
            entitlement: status_of(&state, issued, now.unix_timestamp()),
        }))
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl crate::SiteStore {
    /// The highest package sequence applied (0 if none).
    pub fn last_sequence(&self) -> Result<u64, SiteError> {
        let last: Option<i64> = self
            .conn()
            .query_row("SELECT MAX(sequence) FROM packages", [], |r| r.get(0))
            .map_err(crate::sql)?;
        Ok(u64::try_from(last.unwrap_or(0)).unwrap_or(0))
    }

    /// A grant's state and the number of devices issued under it.
    pub fn grant(&self, id: &str) -> Result<Option<(GrantState, u64)>, SiteError> {
        let row: Option<(String, i64)> = self
            .conn()
            .query_row(
                "SELECT state_json, issued FROM entitlements WHERE entitlement_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(crate::sql)?;
        match row {
            None => Ok(None),
            Some((json, issued)) => Ok(Some((
                serde_json::from_str(&json).map_err(crate::json)?,
                u64::try_from(issued).unwrap_or(0),
            ))),
        }
    }

    /// Every grant with its issued count, in the order applied.
    pub fn grants(&self) -> Result<Vec<(GrantState, u64)>, SiteError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT state_json, issued FROM entitlements ORDER BY rowid")
            .map_err(crate::sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(crate::sql)?;
        rows.into_iter()
            .map(|(json, n)| {
                Ok((
                    serde_json::from_str(&json).map_err(crate::json)?,
                    u64::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Records a package and the grant's new state in one transaction. The sequence's uniqueness
    /// (primary key) makes a concurrent double import fail instead of applying twice.
    pub fn apply_package(
        &mut self,
        sequence: u64,
        action: &str,
        state: &GrantState,
        sha256: &[u8; 32],
        sealed: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), SiteError> {
        let json = serde_json::to_string(state).map_err(crate::json)?;
        let ts = crate::store::ts(now);
        let id = state.grant.entitlement_id.clone();
        self.db_mut().transaction(|tx| {
            let last: Option<i64> = tx.query_row("SELECT MAX(sequence) FROM packages", [], |r| r.get(0))?;
            // Checked again inside the transaction: a package applied concurrently since it was
            // verified makes this one stale (or, if ever out of turn, a gap), never applied twice.
            let last = u64::try_from(last.unwrap_or(0)).unwrap_or(0);
            if sequence <= last {
                return Err(SiteError::Import(ImportError::Payload(
                    EntitlementError::StaleSequence {
                        found: sequence,
                        last,
                    },
                )));
            }
            if sequence != last.saturating_add(1) {
                return Err(SiteError::Import(ImportError::Payload(
                    EntitlementError::MissingSequence {
                        found: sequence,
                        last,
                    },
                )));
            }
            tx.execute(
                "INSERT INTO packages (sequence, entitlement_id, action, sha256, sealed, applied_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    stamp_store::to_sql(sequence),
                    id,
                    action,
                    sha256.as_slice(),
                    sealed,
                    ts
                ],
            )?;
            crate::log::append_one(
                tx,
                crate::unix_ms(now),
                stamp_core::audit::Event::EntitlementApplied {
                    entitlement_id: id.clone(),
                    sequence,
                    action: action.to_owned(),
                    package_sha256: serde_bytes::ByteBuf::from(sha256.to_vec()),
                },
            )?;
            tx.execute(
                "INSERT INTO entitlements (entitlement_id, state_json, issued, applied_at, updated_at)
                     VALUES (?1, ?2, 0, ?3, ?3)
                     ON CONFLICT (entitlement_id) DO UPDATE SET state_json = excluded.state_json,
                         updated_at = excluded.updated_at",
                params![id, json, ts],
            )?;
            Ok(())
        })
    }
}

/// Every grant with its use, read from the database alone (no keys needed).
pub fn grant_statuses(store: &crate::SiteStore, now: OffsetDateTime) -> Result<Vec<GrantStatus>, SiteError> {
    Ok(store
        .grants()?
        .iter()
        .map(|(st, issued)| status_of(st, *issued, now.unix_timestamp()))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;

    use stamp_core::entitlement::{DeviceKeyType, DeviceProfile, Grant, Product, SerialRange};
    use stamp_core::SiteId;

    use super::*;
    use crate::SiteStore;

    fn state(id: &str, seq: u64) -> GrantState {
        GrantState::new(
            Grant {
                entitlement_id: id.into(),
                product: Product {
                    oem_id: "acme".into(),
                    product_id: "p".into(),
                    name: "P".into(),
                },
                quota: 1,
                rate_limits: BTreeMap::new(),
                not_before: 0,
                not_after: i64::MAX,
                serial_ranges: vec![SerialRange {
                    first: seq,
                    last: seq,
                }],
                device_profile: DeviceProfile {
                    validity_days: 1,
                    key_types: vec![DeviceKeyType::P256],
                    organization: "Acme".into(),
                },
                stations: vec![],
                device_data: BTreeMap::new(),
                device_keys: vec![],
                firmware: vec![],
                renewal_limit: Default::default(),
            },
            seq,
        )
    }

    #[test]
    fn packages_are_recorded_strictly_in_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SiteStore::create(
            &dir.path().join("site.db"),
            &SiteId::new("plant-1").unwrap(),
            &[0; 32],
            OffsetDateTime::UNIX_EPOCH,
        )
        .unwrap();
        let now = OffsetDateTime::UNIX_EPOCH;
        let apply = |store: &mut SiteStore, seq: u64| {
            store.apply_package(
                seq,
                "grant",
                &state(&format!("g{seq}"), seq),
                &[seq as u8; 32],
                b"x",
                now,
            )
        };
        apply(&mut store, 1).unwrap();
        // 3 before 2: a gap, refused, nothing recorded.
        let err = apply(&mut store, 3).unwrap_err().to_string();
        assert!(err.contains("package 2 is missing: import it first"), "{err}");
        assert_eq!(store.last_sequence().unwrap(), 1);
        assert!(store.grant("g3").unwrap().is_none());
        apply(&mut store, 2).unwrap();
        apply(&mut store, 3).unwrap();
        // Replay and rollback stay refused.
        let err = apply(&mut store, 3).unwrap_err().to_string();
        assert!(err.contains("not above the last applied (3)"), "{err}");
        assert!(apply(&mut store, 1).is_err());
        assert_eq!(store.last_sequence().unwrap(), 3);
    }
}
