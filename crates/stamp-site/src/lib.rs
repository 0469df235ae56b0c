//! stamp's site role: a factory site's keys, its enrollment request and its credentials.
//!
//! State lives in a site directory: `stamp-site.db` (SQLite), `keys/` (the key store),
//! `request.json` (a copy of the enrollment request) and, once installed, `certs/`.

// Items are `pub` only where the crate exports them (rustls and webpki do the same).
#![warn(unreachable_pub)]
// Numbers cross into SQLite's signed 64-bit integers here: every conversion is explicit.
#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss
    )
)]

pub mod cloud;
pub mod crl;
pub mod engine;
pub mod entitlements;
pub mod export;
pub mod inbox;
pub mod log;
pub mod stations;
mod store;

use std::fs;
use std::path::{Path, PathBuf};

use stamp_core::ceremony::{
    CeremonyError, SiteCredentials, SitePublicKeys, SiteRequest, VerifiedCredentials,
};
use stamp_core::key::{KeyAgreementAlgorithm, SignatureAlgorithm};
use stamp_core::profile::Profile;
use stamp_core::{cert, fingerprint, SiteId};
use stamp_keys::{KeyConfig, KeyRef, KeyStore, KeyStoreError, Keys};
use stamp_store::{StagingDir, StoreError};
use time::OffsetDateTime;

pub use store::SiteStore;

/// Name of the site database inside the site directory.
pub const DB_FILE: &str = "stamp-site.db";
/// Name of the copy of the request kept in the site directory.
pub const REQUEST_FILE: &str = "request.json";

/// Site errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SiteError {
    /// Key store failure.
    #[error(transparent)]
    Key(#[from] KeyStoreError),
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request or credentials file was refused.
    #[error(transparent)]
    Ceremony(#[from] CeremonyError),
    /// The directory is not a site directory.
    #[error("{0} is not a stamp site directory (no {DB_FILE}); create one with `stamp site init`")]
    NotSiteDir(PathBuf),
    /// Credentials were installed before.
    #[error("site {0} already has credentials installed")]
    AlreadyInstalled(SiteId),
    /// An entitlement package was refused.
    #[error(transparent)]
    Import(#[from] entitlements::ImportError),
    /// A database query failed.
    #[error("site database query failed")]
    Sql(#[from] stamp_store::SqlError),
    /// Stored JSON could not be read or written.
    #[error("site database holds malformed data")]
    Json(#[from] serde_json::Error),
    /// The stored audit log is inconsistent (disk corruption or tampering).
    #[error("the site's audit log is inconsistent ({0}); do not issue until it is investigated")]
    CorruptLog(&'static str),
    /// Another engine holds the site's engine lock.
    #[error(
        "another stamp process is issuing for this site (the site service, or a site issue or hand-out run); stop it first, or send the requests to the service"
    )]
    EngineBusy,
    /// The provisioning engine failed.
    #[error("the provisioning engine failed")]
    Engine(#[source] Box<engine::IssueError>),
    /// A CRL could not be made.
    #[error(transparent)]
    Crl(#[from] stamp_core::crl::CrlError),
    /// A cloud verification certificate could not be made.
    #[error("cannot make the cloud verification certificate")]
    VerificationCert(#[from] stamp_core::cloud_ca::VerificationCertError),
    /// An audit export failed.
    #[error("audit export failed")]
    Export(#[from] export::ExportError),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A certificate could not be built from its profile.
    #[error(transparent)]
    Profile(#[from] stamp_core::profile::ProfileError),
    /// A station of that name was added before.
    #[error("station {0} exists already (station names are never reused; pick another)")]
    StationExists(String),
    /// No station of that name.
    #[error("no station named {0} at this site")]
    UnknownStation(String),
    /// A file operation failed.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for SiteError {
    fn from(e: rusqlite::Error) -> Self {
        SiteError::Sql(e.into())
    }
}

impl SiteError {
    /// A stable code naming what failed, for scripts (`--json` prints it as `code`); a refused
    /// bundle or package gives the rejection's own code.
    pub fn code(&self) -> &'static str {
        match self {
            SiteError::Key(..) => "key-store",
            SiteError::Store(..) => "store",
            SiteError::Ceremony(..) => "ceremony",
            SiteError::NotSiteDir(..) => "not-site-dir",
            SiteError::AlreadyInstalled(..) => "already-installed",
            SiteError::Import(e) => e.code(),
            SiteError::Sql(..) => "store",
            SiteError::Json(..) => "store-corrupt",
            SiteError::CorruptLog(..) => "log-corrupt",
            SiteError::EngineBusy => "engine-busy",
            SiteError::Engine(..) => "engine-failed",
            SiteError::Crl(..) => "crl",
            SiteError::VerificationCert(..) => "verification-cert",
            SiteError::Export(..) => "export-failed",
            SiteError::Random => "random-failed",
            SiteError::Profile(..) => "certificate",
            SiteError::StationExists(..) => "station-exists",
            SiteError::UnknownStation(..) => "unknown-station",
            SiteError::Io { .. } => "io",
        }
    }
}

/// Unix milliseconds of a time.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn sql(e: rusqlite::Error) -> SiteError {
    SiteError::Sql(e.into())
}

pub(crate) fn json(e: serde_json::Error) -> SiteError {
    SiteError::Json(e)
}

/// The site's three keys, by profile.
const SITE_KEYS: [Profile; 3] = [
    Profile::SiteIdentitySigning,
    Profile::SiteIdentityKeyAgreement,
    Profile::SiteIssuingCa,
];

/// What `site init` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    /// The site directory.
    pub dir: PathBuf,
    /// The site's ID.
    pub site_id: SiteId,
    /// The request file written.
    pub request: PathBuf,
    /// Short fingerprint of the request, to read out to HQ.
    pub request_fingerprint: String,
    /// The database.
    pub database: PathBuf,
}

/// Creates a site directory: the identity signing, identity key-agreement and issuing CA keys,
/// the database, and the enrollment request (written to `request_out` and kept in the directory).
/// New keys go where `keys` says (the software store in the directory, or a PKCS#11 token).
pub fn init(
    dir: &Path,
    site_id: &SiteId,
    keys: impl Into<KeyConfig>,
    request_out: &Path,
    now: OffsetDateTime,
) -> Result<InitReport, SiteError> {
    let staging = StagingDir::new(dir)?;
    let base = staging.path();
    let keys = stamp_keys::open_store(base, keys.into());
    let new_keys = keys.guard_new_keys();
    let (id_ref, id_key) = keys.generate_signer(
        Profile::SiteIdentitySigning.name(),
        SignatureAlgorithm::EcdsaP256Sha256,
    )?;
    let (ka_ref, ka_key) = keys.generate_key_agreement(
        Profile::SiteIdentityKeyAgreement.name(),
        KeyAgreementAlgorithm::EcdhP256,
    )?;
    let (ca_ref, ca_key) =
        keys.generate_signer(Profile::SiteIssuingCa.name(), SignatureAlgorithm::EcdsaP256Sha256)?;
    let request = SiteRequest::build(site_id, id_key.as_ref(), ka_key.as_ref(), ca_key.as_ref())?;
    let verified = request.verify()?;
    let json = request.to_json();
    let mut store = SiteStore::create(&base.join(DB_FILE), site_id, &verified.fingerprint, now)?;
    store.add_key(Profile::SiteIdentitySigning, &id_ref, id_key.algorithm().name())?;
    store.add_key(
        Profile::SiteIdentityKeyAgreement,
        &ka_ref,
        ka_key.algorithm().name(),
    )?;
    store.add_key(Profile::SiteIssuingCa, &ca_ref, ca_key.algorithm().name())?;
    drop(store);
    stamp_store::write_atomic(&base.join(REQUEST_FILE), &json, 0o644)?;
    stamp_store::write_atomic(request_out, &json, 0o644)?;
    if let Err(e) = staging.commit() {
        let _ = fs::remove_file(request_out);
        return Err(e.into());
    }
    new_keys.keep();
    Ok(InitReport {
        dir: dir.to_owned(),
        site_id: site_id.clone(),
        request: request_out.to_owned(),
        request_fingerprint: verified.short_fingerprint(),
        database: dir.join(DB_FILE),
    })
}

/// What `site install` stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallReport {
    /// The site.
    pub site_id: SiteId,
    /// SHA-256 of the OEM root the site now trusts.
    pub root_fingerprint: String,
    /// PEM files written, by profile name.
    pub certs: std::collections::BTreeMap<String, PathBuf>,
}

/// An open site directory.
pub struct Site {
    dir: PathBuf,
    store: SiteStore,
    keys: Keys,
}

impl Site {
    /// Opens a site directory; its keys are opened by the references in its database, with the
    /// passphrase or the PKCS#11 module and PIN from `keys`.
    pub fn open(dir: &Path, keys: impl Into<KeyConfig>) -> Result<Self, SiteError> {
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            return Err(SiteError::NotSiteDir(dir.to_owned()));
        }
        Ok(Site {
            dir: dir.to_owned(),
            store: SiteStore::open(&db)?,
            keys: stamp_keys::open_store(dir, keys.into()),
        })
    }

    /// The site database.
    pub fn store(&self) -> &SiteStore {
        &self.store
    }

    /// Verifies a credentials file for this site: format, site ID, chain to the root (pinned by
    /// `pinned_root` if given), profiles, holders, and that the site certificates are for this
    /// site's own keys. Nothing is stored.
    pub fn verify_credentials(
        &self,
        bytes: &[u8],
        pinned_root: Option<&[u8; 32]>,
        now: OffsetDateTime,
    ) -> Result<VerifiedCredentials, SiteError> {
        let creds = SiteCredentials::parse(bytes)?;
        let site_id = self.store.site_id()?;
        if self.store.installed()? {
            return Err(SiteError::AlreadyInstalled(site_id));
        }
        let mut raw = Vec::with_capacity(3);
        for p in SITE_KEYS {
            let key_ref = KeyRef::parse(&self.store.key_ref(p)?)?;
            raw.push(match p {
                Profile::SiteIdentityKeyAgreement => {
                    self.keys.open_key_agreement(&key_ref)?.public_key().to_vec()
                }
                _ => self.keys.open_signer(&key_ref)?.public_key().to_vec(),
            });
        }
        let keys = SitePublicKeys {
            identity_signing: &raw[0],
            identity_key_agreement: &raw[1],
            issuing_ca: &raw[2],
        };
        Ok(creds.verify(&site_id, &keys, pinned_root, now)?)
    }

    /// Stores verified credentials: PEM files in `certs/` and the certificates in the database.
    pub fn install(
        &mut self,
        creds: &VerifiedCredentials,
        now: OffsetDateTime,
    ) -> Result<InstallReport, SiteError> {
        if self.store.installed()? {
            return Err(SiteError::AlreadyInstalled(creds.site_id.clone()));
        }
        let entries: [(Profile, &[u8]); 6] = [
            (Profile::OemRoot, &creds.oem_root),
            (Profile::HqAuthoritySigning, &creds.hq_authority_signing),
            (
                Profile::HqAuthorityKeyAgreement,
                &creds.hq_authority_key_agreement,
            ),
            (Profile::SiteIdentitySigning, &creds.site_identity_signing),
            (
                Profile::SiteIdentityKeyAgreement,
                &creds.site_identity_key_agreement,
            ),
            (Profile::SiteIssuingCa, &creds.site_issuing_ca),
        ];
        self.store.install(&entries, now)?;
        let certs_dir = self.dir.join("certs");
        fs::create_dir_all(&certs_dir).map_err(|source| SiteError::Io {
            path: certs_dir.clone(),
            source,
        })?;
        let mut certs = std::collections::BTreeMap::new();
        for (p, der) in entries {
            let path = certs_dir.join(format!("{}.pem", p.name()));
            stamp_store::write_atomic(&path, cert::to_pem(der).as_bytes(), 0o644)?;
            certs.insert(p.name().to_owned(), path);
        }
        Ok(InstallReport {
            site_id: creds.site_id.clone(),
            root_fingerprint: fingerprint::cert_sha256(&creds.oem_root),
            certs,
        })
    }
}
