//! Entitlements at HQ: allocate serials, seal packages to a site, keep HQ's view of every grant.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rusqlite::{params, Transaction};
use serde_bytes::ByteBuf;
use stamp_core::csr::{self, KeyType};
use stamp_core::entitlement::{
    self, Action, Amend, DeviceKeyType, DeviceProfile, Entitlement, FirmwareRef, GrantState, HqDeviceKey,
    Product, RatePeriod, RenewalLimit, SerialRange, Status,
};
use stamp_core::envelope::{self, Recipient};
use stamp_core::key::KeyAgreementAlgorithm;
use stamp_core::profile::Profile;
use stamp_core::{cert, SiteId};
use stamp_keys::{KeyRef, KeyStore};
use time::OffsetDateTime;

pub use crate::store::{EntitlementSummary, PackageSelector, SealedPackage};

use crate::store::summary;
use crate::{Hq, HqError};

/// Media type of a sealed entitlement's content.
pub const CONTENT_TYPE: &str = "application/vnd.stamp.entitlement+cbor";
/// Serials are allocated below this bound (SQLite integers are signed 64-bit).
const SERIAL_LIMIT: u64 = i64::MAX as u64;

/// What HQ grants a site (the parts HQ does not allocate itself).
#[derive(Debug, Clone)]
pub struct GrantRequest {
    /// The site.
    pub site: SiteId,
    /// The product.
    pub product: Product,
    /// Device quota.
    pub quota: u64,
    /// Rate limits.
    pub rate_limits: BTreeMap<RatePeriod, u64>,
    /// Window start (Unix seconds).
    pub not_before: i64,
    /// Window end (Unix seconds).
    pub not_after: i64,
    /// Device certificate profile.
    pub device_profile: DeviceProfile,
    /// Stations allowed (empty: all).
    pub stations: Vec<String>,
    /// Device data.
    pub device_data: BTreeMap<String, String>,
    /// Generate one key per device of the quota at HQ, for devices that cannot make their own.
    pub hq_keys: Option<HqKeys>,
    /// Firmware releases the site may program, as `VERSION` or `VERSION@FORMAT` (releases recorded
    /// by `stamp hq sign-firmware`).
    pub firmware: Vec<String>,
    /// How often one device may be renewed.
    pub renewal_limit: RenewalLimit,
}

/// Resolves `VERSION` or `VERSION@FORMAT` selectors to recorded releases.
fn resolve_firmware(store: &crate::HqStore, selectors: &[String]) -> Result<Vec<FirmwareRef>, HqError> {
    let releases = crate::firmware::releases(store)?;
    let mut out = Vec::new();
    for sel in selectors {
        let (version, format) = match sel.split_once('@') {
            Some((v, f)) => (v, Some(f)),
            None => (sel.as_str(), None),
        };
        // `1.4.2` names every build of 1.4.2 (`1.4.2+0`, ...); `1.4.2+7` one build.
        let same_version =
            |v: &str| v == version || (!version.contains('+') && v.split('+').next() == Some(version));
        let found: Vec<_> = releases
            .iter()
            .filter(|r| same_version(&r.version) && format.is_none_or(|f| r.format == f))
            .collect();
        if found.is_empty() {
            return Err(HqError::UnknownFirmware(sel.chars().take(64).collect()));
        }
        for r in found {
            out.push(FirmwareRef {
                version: r.version.clone(),
                format: r.format.clone(),
                key: r.key.clone(),
                sha256: ByteBuf::from(
                    hex::decode(&r.sha256)
                        .map_err(|_| HqError::CorruptStore("a firmware release's SHA-256 is not hex"))?,
                ),
            });
        }
    }
    Ok(out)
}

/// How HQ generates device keys for a grant.
#[derive(Debug, Clone)]
pub struct HqKeys {
    /// Key type (ECDSA P-256/P-384 or Ed25519).
    pub key_type: DeviceKeyType,
    /// Per-device random secrets to generate: name and length in bytes.
    pub secrets: Vec<(String, usize)>,
}

/// Generates the device keys and secrets of a grant.
fn generate_keys(spec: &HqKeys, count: u64) -> Result<Vec<HqDeviceKey>, HqError> {
    if count > entitlement::MAX_DEVICE_KEYS as u64 {
        return Err(HqError::Entitlement(entitlement::EntitlementError::Invalid(
            "at most 10000 HQ-generated keys per grant",
        )));
    }
    let rng = SystemRandom::new();
    let mut keys = Vec::with_capacity(usize::try_from(count).unwrap_or(usize::MAX));
    for _ in 0..count {
        let k = stamp_keys::device::generate(spec.key_type)?;
        let mut secrets = BTreeMap::new();
        for (name, len) in &spec.secrets {
            let mut v = vec![0u8; *len];
            rng.fill(&mut v).map_err(|_| HqError::Random)?;
            secrets.insert(name.clone(), ByteBuf::from(v));
        }
        keys.push(HqDeviceKey {
            spki_sha256: ByteBuf::from(stamp_core::fingerprint::sha256(&k.spki_der).to_vec()),
            private_key: ByteBuf::from(k.pkcs8.to_vec()),
            secrets,
        });
    }
    Ok(keys)
}

/// A change to an existing grant.
#[derive(Debug, Clone)]
pub struct AmendRequest {
    /// The grant.
    pub entitlement_id: String,
    /// Devices to add.
    pub add_quota: u64,
    /// New window start.
    pub not_before: Option<i64>,
    /// New window end.
    pub not_after: Option<i64>,
    /// New status.
    pub status: Option<Status>,
    /// Devices revoked (see [`Hq::revoke`], which makes these).
    pub revoke: Option<entitlement::DeviceRevocation>,
}

/// What `hq entitle` or `hq amend` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackageReport {
    /// The sealed package file.
    pub package: PathBuf,
    /// The package's sequence number for the site.
    pub sequence: u64,
    /// The grant as it now stands.
    pub entitlement: EntitlementSummary,
}

fn next_sequence(tx: &Transaction<'_>, site: &str) -> Result<u64, HqError> {
    let last: Option<i64> = tx.query_row(
        "SELECT MAX(sequence) FROM packages WHERE site_id = ?1",
        [site],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(last.unwrap_or(0)).unwrap_or(0) + 1)
}

/// Allocates `count` serials after everything HQ ever allocated, so no two ranges overlap.
fn allocate(tx: &Transaction<'_>, count: u64) -> Result<SerialRange, HqError> {
    let last: Option<i64> = tx.query_row("SELECT MAX(last) FROM serial_allocations", [], |r| r.get(0))?;
    let first = u64::try_from(last.unwrap_or(0)).unwrap_or(0) + 1;
    let end = first
        .checked_add(count - 1)
        .filter(|e| *e < SERIAL_LIMIT)
        .ok_or(HqError::SerialsExhausted)?;
    Ok(SerialRange { first, last: end })
}

fn record_range(
    tx: &Transaction<'_>,
    r: &SerialRange,
    id: &str,
    site: &str,
    seq: u64,
) -> Result<(), HqError> {
    tx.execute(
        "INSERT INTO serial_allocations (first, last, entitlement_id, site_id, sequence) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![stamp_store::to_sql(r.first), stamp_store::to_sql(r.last), id, site, stamp_store::to_sql(seq)],
    )?;
    Ok(())
}

/// Everything needed to seal packages to one site, loaded before the write lock is taken.
struct Sealer {
    site: SiteId,
    signer: Box<dyn stamp_core::key::Signer>,
    chain: Vec<Vec<u8>>,
    alg: KeyAgreementAlgorithm,
    public_key: Vec<u8>,
}

impl Sealer {
    /// Seals `e` and writes it to `out`.
    fn seal_to(&self, e: &Entitlement, out: &Path) -> Result<Vec<u8>, HqError> {
        let recipient = Recipient {
            alg: self.alg,
            public_key: &self.public_key,
            key_id: self.site.as_str().as_bytes(),
            recipient_id: self.site.as_str().as_bytes(),
        };
        let sealed = envelope::seal(
            CONTENT_TYPE,
            &e.to_cbor(),
            self.signer.as_ref(),
            &self.chain,
            &recipient,
            &[],
            &SystemRandom::new(),
        )?;
        stamp_store::write_atomic(out, &sealed, 0o644)?;
        Ok(sealed)
    }
}

impl Hq {
    /// Loads the HQ signing key and the site's key-agreement key (from its certificate).
    fn sealer(&self, site: &SiteId) -> Result<Sealer, HqError> {
        if !self.store.site_enrolled(site)? {
            return Err(HqError::UnknownSite(site.clone()));
        }
        let der = self
            .store
            .site_certificate(site, Profile::SiteIdentityKeyAgreement)?;
        let c = cert::parse(&der).map_err(|e| HqError::StoredCert("site key-agreement", e))?;
        let alg = match csr::classify_spki(c.public_key().raw) {
            Ok(KeyType::P384) => KeyAgreementAlgorithm::EcdhP384,
            Ok(KeyType::P256) => KeyAgreementAlgorithm::EcdhP256,
            _ => {
                return Err(HqError::StoredCert(
                    "site key-agreement",
                    cert::CertError::UnsupportedKey("site"),
                ))
            }
        };
        let public_key = c.public_key().subject_public_key.data.to_vec();
        let (sign_ref, sign_cert) = self.store.own_key(Profile::HqAuthoritySigning)?;
        let signer = self.keys.open_signer(&KeyRef::parse(&sign_ref)?)?;
        Ok(Sealer {
            site: site.clone(),
            signer,
            chain: vec![sign_cert],
            alg,
            public_key,
        })
    }

    /// Grants a site a production run: allocates the next sequence and a serial range, seals the
    /// package to the site, writes it to `out` and records it. On error nothing is recorded and no
    /// file is left.
    pub fn entitle(
        &mut self,
        req: &GrantRequest,
        out: &Path,
        now: OffsetDateTime,
    ) -> Result<PackageReport, HqError> {
        if req.quota == 0 {
            return Err(HqError::Entitlement(entitlement::EntitlementError::Invalid(
                "quota must be at least 1",
            )));
        }
        let sealer = self.sealer(&req.site)?;
        let firmware = resolve_firmware(&self.store, &req.firmware)?;
        let site = req.site.as_str().to_owned();
        let db = self.store.db_mut();
        let result = db.transaction(|tx| {
            let sequence = next_sequence(tx, &site)?;
            let range = allocate(tx, req.quota)?;
            let id = format!("{site}.{sequence}");
            let grant = entitlement::Grant {
                entitlement_id: id.clone(),
                product: req.product.clone(),
                quota: req.quota,
                rate_limits: req.rate_limits.clone(),
                not_before: req.not_before,
                not_after: req.not_after,
                serial_ranges: vec![range],
                device_profile: req.device_profile.clone(),
                stations: req.stations.clone(),
                device_data: req.device_data.clone(),
                device_keys: match &req.hq_keys {
                    Some(spec) => generate_keys(spec, req.quota)?,
                    None => vec![],
                },
                firmware: firmware.clone(),
                renewal_limit: req.renewal_limit,
            };
            let e = Entitlement {
                version: entitlement::VERSION,
                site_id: req.site.clone(),
                sequence,
                issued_at: now.unix_timestamp(),
                action: Action::Grant(grant.clone()),
            };
            e.validate()?;
            entitlement::check_applicable(&e, &req.site, sequence - 1, now.unix_timestamp())?;
            let sealed = sealer.seal_to(&e, out)?;
            // HQ keeps no device private key or secret: only the sealed package holds them.
            let state = GrantState::new(grant.redacted(), sequence);
            let redacted = Entitlement { action: Action::Grant(grant.redacted()), ..e.clone() };
            let ts = crate::store::ts(now);
            tx.execute(
                "INSERT INTO entitlements (entitlement_id, site_id, state_json, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![id, site, serde_json::to_string(&state)?, ts],
            )?;
            tx.execute(
                "INSERT INTO packages (site_id, sequence, entitlement_id, action, payload_cbor, sealed, created_at)
                 VALUES (?1, ?2, ?3, 'grant', ?4, ?5, ?6)",
                params![site, stamp_store::to_sql(sequence), id, redacted.to_cbor(), sealed, ts],
            )?;
            record_range(tx, &range, &id, &site, sequence)?;
            Ok(PackageReport { package: out.to_owned(), sequence, entitlement: summary(&site, &state) })
        });
        if result.is_err() {
            let _ = fs::remove_file(out);
        }
        result
    }

    /// Amends a grant: top up, move the window, suspend, resume or revoke. Same guarantees as
    /// [`Hq::entitle`].
    pub fn amend(
        &mut self,
        req: &AmendRequest,
        out: &Path,
        now: OffsetDateTime,
    ) -> Result<PackageReport, HqError> {
        let (site, state) = self.store.entitlement(&req.entitlement_id)?;
        let site_id =
            SiteId::new(&site).map_err(|_| HqError::UnknownEntitlement(req.entitlement_id.clone()))?;
        let sealer = self.sealer(&site_id)?;
        let db = self.store.db_mut();
        let result = db.transaction(|tx| {
            let sequence = next_sequence(tx, &site)?;
            let add_serial_ranges = if req.add_quota > 0 { vec![allocate(tx, req.add_quota)?] } else { vec![] };
            let a = Amend {
                entitlement_id: req.entitlement_id.clone(),
                add_quota: req.add_quota,
                add_serial_ranges: add_serial_ranges.clone(),
                not_before: req.not_before,
                not_after: req.not_after,
                status: req.status,
                revoke: req.revoke.clone(),
            };
            let e = Entitlement {
                version: entitlement::VERSION,
                site_id: site_id.clone(),
                sequence,
                issued_at: now.unix_timestamp(),
                action: Action::Amend(a.clone()),
            };
            e.validate()?;
            let next = entitlement::amend(&state, &a, sequence)?;
            let sealed = sealer.seal_to(&e, out)?;
            let ts = crate::store::ts(now);
            tx.execute(
                "UPDATE entitlements SET state_json = ?1, updated_at = ?2 WHERE entitlement_id = ?3",
                params![serde_json::to_string(&next)?, ts, req.entitlement_id],
            )?;
            tx.execute(
                "INSERT INTO packages (site_id, sequence, entitlement_id, action, payload_cbor, sealed, created_at)
                 VALUES (?1, ?2, ?3, 'amend', ?4, ?5, ?6)",
                params![site, stamp_store::to_sql(sequence), req.entitlement_id, e.to_cbor(), sealed, ts],
            )?;
            for r in &add_serial_ranges {
                record_range(tx, r, &req.entitlement_id, &site, sequence)?;
            }
            Ok(PackageReport { package: out.to_owned(), sequence, entitlement: summary(&site, &next) })
        });
        if result.is_err() {
            let _ = fs::remove_file(out);
        }
        result
    }
}
