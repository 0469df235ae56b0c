//! The HQ database: a narrow, typed interface over SQLite.
//!
//! Its whole schema is [`schema`] (one ordered migration list); the queries of the cloud exports
//! and of entitlements are in `store/cloud.rs` and `store/entitle.rs`. The store depends on no
//! feature module: they depend on it.

use std::path::Path;

use rusqlite::{params, OptionalExtension};
use stamp_core::ceremony::SiteCredentials;
use stamp_core::fingerprint;
use stamp_core::profile::Profile;
use stamp_core::SiteId;
use stamp_keys::KeyRef;
use stamp_store::{Database, StoreError};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::HqError;

mod cloud;
mod entitle;
pub(crate) mod registry;
mod schema;

pub use cloud::CaCert;
pub(crate) use cloud::{grant_states, revocations};
pub(crate) use entitle::summary;
pub use entitle::{EntitlementSummary, PackageSelector, SealedPackage};
use schema::MIGRATIONS;

/// The HQ database.
pub struct HqStore {
    db: Database,
}

pub(crate) fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo; a certificate HQ cannot read is refused
/// rather than stored with an empty key hash (that would defeat the key-reuse check).
fn spki_sha256(der: &[u8]) -> Result<Vec<u8>, rusqlite::Error> {
    x509_spki(der)
        .map(|s| fingerprint::sha256(&s).to_vec())
        .ok_or_else(|| rusqlite::Error::ToSqlConversionFailure("a certificate HQ cannot read".into()))
}

fn x509_spki(der: &[u8]) -> Option<Vec<u8>> {
    stamp_core::cert::parse(der)
        .ok()
        .map(|c| c.public_key().raw.to_vec())
}

impl HqStore {
    /// Creates a new HQ database.
    pub fn create(path: &Path, org: &str, now: OffsetDateTime) -> Result<Self, StoreError> {
        let db = Database::create(path, MIGRATIONS)?;
        db.conn()
            .execute(
                "INSERT INTO hq (id, org, created_at) VALUES (1, ?1, ?2)",
                params![org, ts(now)],
            )
            .map_err(|e| db.err(e))?;
        Ok(HqStore { db })
    }

    /// Opens an HQ database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(HqStore {
            db: Database::open(path, MIGRATIONS)?,
        })
    }

    /// The connection, for queries of the role's modules.
    pub(crate) fn conn(&self) -> &rusqlite::Connection {
        self.db.conn()
    }

    /// The database, for transactions of the role's modules.
    pub(crate) fn db_mut(&mut self) -> &mut Database {
        &mut self.db
    }

    /// A certificate HQ issued to a site, by profile.
    pub fn site_certificate(&self, site: &SiteId, profile: Profile) -> Result<Vec<u8>, HqError> {
        Ok(self
            .db
            .conn()
            .query_row(
                "SELECT der FROM certificates WHERE site_id = ?1 AND profile = ?2 ORDER BY rowid DESC LIMIT 1",
                params![site.as_str(), profile.name()],
                |r| r.get(0),
            )
            .map_err(|e| self.db.err(e))?)
    }

    /// The OEM's name.
    pub fn org(&self) -> Result<String, StoreError> {
        self.db
            .conn()
            .query_row("SELECT org FROM hq WHERE id = 1", [], |r| r.get(0))
            .map_err(|e| self.db.err(e))
    }

    /// Records one of HQ's own keys and its certificate.
    pub fn add_own_key(
        &mut self,
        profile: Profile,
        key: &KeyRef,
        algorithm: &str,
        cert_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO own_keys (profile, key_ref, algorithm, cert_der) VALUES (?1, ?2, ?3, ?4)",
                params![profile.name(), key.to_string(), algorithm, cert_der],
            )?;
            insert_cert(tx, profile, None, cert_der, now)
        })
    }

    /// One of HQ's own keys: its reference and certificate (DER).
    pub fn own_key(&self, profile: Profile) -> Result<(String, Vec<u8>), HqError> {
        Ok(self
            .db
            .conn()
            .query_row(
                "SELECT key_ref, cert_der FROM own_keys WHERE profile = ?1",
                [profile.name()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.db.err(e))?)
    }

    /// Whether a site ID is enrolled.
    pub fn site_enrolled(&self, site: &SiteId) -> Result<bool, StoreError> {
        self.db
            .conn()
            .query_row("SELECT 1 FROM sites WHERE site_id = ?1", [site.as_str()], |_| {
                Ok(())
            })
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.db.err(e))
    }

    /// Whether HQ has certified this public key (SHA-256 of its SPKI) before.
    pub fn public_key_known(&self, spki_sha256: &[u8; 32]) -> Result<bool, StoreError> {
        self.db
            .conn()
            .query_row(
                "SELECT 1 FROM certificates WHERE spki_sha256 = ?1 LIMIT 1",
                [spki_sha256.as_slice()],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.db.err(e))
    }

    /// Records an enrolled site and its certificates, in one transaction.
    pub fn record_site(
        &mut self,
        site: &SiteId,
        request_sha256: &[u8; 32],
        certs: &[(Profile, Vec<u8>)],
        now: OffsetDateTime,
    ) -> Result<(), HqError> {
        Ok(self.db.write(|tx| {
            tx.execute(
                "INSERT INTO sites (site_id, request_sha256, enrolled_at) VALUES (?1, ?2, ?3)",
                params![site.as_str(), request_sha256.as_slice(), ts(now)],
            )?;
            for (profile, der) in certs {
                insert_cert(tx, *profile, Some(site), der, now)?;
            }
            Ok(())
        })?)
    }

    /// The credentials file of a site: HQ's certificates and the site's three certificates
    /// (identity signing, identity key agreement, issuing CA, in that order), and the request's
    /// short fingerprint.
    pub(crate) fn credentials(
        &self,
        site: &SiteId,
        request_fingerprint: String,
        site_certs: [&[u8]; 3],
    ) -> Result<SiteCredentials, HqError> {
        let (_, root) = self.own_key(Profile::OemRoot)?;
        let (_, hq_sign) = self.own_key(Profile::HqAuthoritySigning)?;
        let (_, hq_ka) = self.own_key(Profile::HqAuthorityKeyAgreement)?;
        let pem = stamp_core::cert::to_pem;
        Ok(SiteCredentials {
            format: stamp_core::ceremony::CREDENTIALS_FORMAT.to_owned(),
            version: 1,
            site_id: site.clone(),
            request_fingerprint,
            oem_root: pem(&root),
            hq_authority_signing: pem(&hq_sign),
            hq_authority_key_agreement: pem(&hq_ka),
            site_identity_signing: pem(site_certs[0]),
            site_identity_key_agreement: pem(site_certs[1]),
            site_issuing_ca: pem(site_certs[2]),
        })
    }

    /// An enrolled site's credentials file again, from HQ's records (`stamp hq
    /// export-credentials`): the same bytes `stamp hq enroll-site` wrote, for a file that was
    /// lost before the site installed it. It holds certificates only, no secret.
    pub fn site_credentials(&self, site: &SiteId) -> Result<SiteCredentials, HqError> {
        let sha: Option<Vec<u8>> = self
            .db
            .conn()
            .query_row(
                "SELECT request_sha256 FROM sites WHERE site_id = ?1",
                [site.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db.err(e))?;
        let sha = sha.ok_or_else(|| HqError::UnknownSite(site.clone()))?;
        let sha: [u8; 32] = sha.try_into().map_err(|_| HqError::UnknownSite(site.clone()))?;
        let certs = [
            self.site_certificate(site, Profile::SiteIdentitySigning)?,
            self.site_certificate(site, Profile::SiteIdentityKeyAgreement)?,
            self.site_certificate(site, Profile::SiteIssuingCa)?,
        ];
        self.credentials(site, fingerprint::short(&sha), [&certs[0], &certs[1], &certs[2]])
    }

    /// Enrolled sites with their enrollment time, in ID order.
    pub fn sites(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .db
            .conn()
            .prepare("SELECT site_id, enrolled_at FROM sites ORDER BY site_id")
            .map_err(|e| self.db.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.db.err(e))?;
        Ok(rows)
    }
}

pub(crate) fn insert_cert(
    tx: &rusqlite::Transaction<'_>,
    profile: Profile,
    site: Option<&SiteId>,
    der: &[u8],
    now: OffsetDateTime,
) -> Result<(), rusqlite::Error> {
    tx.execute(
        "INSERT INTO certificates (sha256, profile, site_id, spki_sha256, issued_at, der)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            fingerprint::sha256(der).as_slice(),
            profile.name(),
            site.map(SiteId::as_str),
            spki_sha256(der)?,
            ts(now),
            der
        ],
    )?;
    Ok(())
}
