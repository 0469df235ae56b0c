//! stamp's HQ role: creates the OEM root and the HQ authority, and enrolls factory sites.
//!
//! State lives in an HQ directory: `stamp-hq.db` (SQLite), `keys/` (the key store) and `certs/`
//! and `sites/<id>/` (PEM copies of every certificate, for people and other tools).

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
pub mod entitle;
pub mod firmware;
pub mod reconcile;
mod store;

use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use stamp_core::ceremony::{self, CeremonyError, SiteRequest, VerifiedSiteRequest};
use stamp_core::csr::KeyType;
use stamp_core::key::{KeyAgreementAlgorithm, SignatureAlgorithm};
use stamp_core::profile::{self, Holder, Profile, ProfileError, Serial, Validity};
use stamp_core::{cert, fingerprint, SiteId};
use stamp_keys::{KeyConfig, KeyRef, KeyStore, KeyStoreError, Keys};
use stamp_store::{StagingDir, StoreError};
use time::OffsetDateTime;

pub use store::HqStore;

/// Name of the HQ database inside the HQ directory.
pub const DB_FILE: &str = "stamp-hq.db";

/// HQ errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HqError {
    /// Key store failure.
    #[error(transparent)]
    Key(#[from] KeyStoreError),
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Certificate building failure.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A request or credentials file was refused.
    #[error(transparent)]
    Ceremony(#[from] CeremonyError),
    /// A certificate stored at HQ is unusable.
    #[error("stored {0} certificate is invalid: {1}")]
    StoredCert(&'static str, cert::CertError),
    /// The directory is not an HQ directory.
    #[error("{0} is not a stamp HQ directory (no {DB_FILE}); create one with `stamp hq init`")]
    NotHqDir(PathBuf),
    /// The site was enrolled before.
    #[error("site {0} is already enrolled; a site ID is enrolled once (choose a new site ID for new keys)")]
    AlreadyEnrolled(SiteId),
    /// The request reuses a key.
    #[error("the request uses the same public key for two roles, or a key HQ already certified")]
    KeyReused,
    /// The fingerprint typed by the operator differs from the request's.
    #[error(
        "request fingerprint {found} does not match the expected {expected}: do not enroll this request"
    )]
    FingerprintMismatch {
        /// The request's.
        found: String,
        /// The operator's.
        expected: String,
    },
    /// The site is not enrolled.
    #[error("site {0} is not enrolled at this HQ; enroll it first with `stamp hq enroll-site`")]
    UnknownSite(SiteId),
    /// No recorded firmware release matches.
    #[error("no firmware release {0} at this HQ (see `stamp hq firmware`)")]
    UnknownFirmware(String),
    /// No such entitlement.
    #[error("no entitlement {0} at this HQ (see `stamp hq entitlements`)")]
    UnknownEntitlement(String),
    /// HQ never sealed a package with that sequence for that site (or entitlement).
    #[error("{0}")]
    UnknownPackage(String),
    /// The serial number space is used up.
    #[error("cannot allocate that many device serials")]
    SerialsExhausted,
    /// An entitlement breaks a rule.
    #[error(transparent)]
    Entitlement(#[from] stamp_core::entitlement::EntitlementError),
    /// Sealing failed.
    #[error("sealing the package failed")]
    Envelope(#[from] stamp_core::envelope::EnvelopeError),
    /// A firmware image could not be signed.
    #[error(transparent)]
    Firmware(#[from] stamp_core::firmware::FirmwareError),
    /// No firmware key of that name.
    #[error("no firmware key {0:?} at this HQ (see `stamp hq firmware`; create one with `stamp hq add-firmware-key`)")]
    UnknownFirmwareKey(String),
    /// A firmware key of that name exists.
    #[error("a firmware key named {0:?} already exists; choose another name")]
    FirmwareKeyExists(String),
    /// The version was released before with this key and format.
    #[error("version {version} was already released in {format} format with key {key}; give the new build a new version")]
    FirmwareReleased {
        /// The version.
        version: String,
        /// The key.
        key: String,
        /// The format.
        format: &'static str,
    },
    /// A database query failed.
    #[error("HQ database query failed")]
    Sql(#[from] stamp_store::SqlError),
    /// Stored JSON could not be read or written.
    #[error("HQ database holds malformed data")]
    Json(#[from] serde_json::Error),
    /// A stored value is not what HQ writes there.
    #[error("HQ database holds malformed data: {0}")]
    CorruptStore(&'static str),
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// An audit bundle was rejected; nothing was recorded except equivocation evidence.
    #[error("audit bundle rejected")]
    Rejected(#[source] reconcile::Rejection),
    /// A revocation names a serial, entitlement or site this HQ never allocated or enrolled.
    #[error("cannot revoke {0}: this HQ never allocated or enrolled it")]
    UnknownRevocationTarget(String),
    /// The same thing was revoked before.
    #[error("{0} is already revoked")]
    AlreadyRevoked(String),
    /// A CRL could not be made or read.
    #[error(transparent)]
    Crl(#[from] stamp_core::crl::CrlError),
    /// A revocation that cannot be carried to a site in an entitlement update.
    #[error("no site update: {0}")]
    NoSiteUpdate(String),
    /// The registry could not be signed.
    #[error(transparent)]
    Registry(#[from] stamp_core::registry::RegistryError),
    /// A verification certificate could not be made.
    #[error(transparent)]
    VerificationCert(#[from] stamp_core::cloud_ca::VerificationCertError),
    /// A file operation failed.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for HqError {
    fn from(e: rusqlite::Error) -> Self {
        HqError::Sql(e.into())
    }
}

impl HqError {
    /// A stable code naming what failed, for scripts (`--json` prints it as `code`); a refused
    /// bundle or package gives the rejection's own code.
    pub fn code(&self) -> &'static str {
        match self {
            HqError::Key(..) => "key-store",
            HqError::Store(..) => "store",
            HqError::Profile(..) => "certificate",
            HqError::Ceremony(..) => "ceremony",
            HqError::StoredCert(..) => "stored-certificate",
            HqError::NotHqDir(..) => "not-hq-dir",
            HqError::AlreadyEnrolled(..) => "already-enrolled",
            HqError::KeyReused => "key-reused",
            HqError::FingerprintMismatch { .. } => "fingerprint-mismatch",
            HqError::UnknownSite(..) => "unknown-site",
            HqError::UnknownFirmware(..) => "unknown-firmware",
            HqError::UnknownEntitlement(..) => "unknown-entitlement",
            HqError::UnknownPackage(..) => "unknown-package",
            HqError::SerialsExhausted => "serials-exhausted",
            HqError::Entitlement(..) => "entitlement",
            HqError::Envelope(..) => "envelope",
            HqError::Firmware(..) => "firmware",
            HqError::UnknownFirmwareKey(..) => "unknown-firmware-key",
            HqError::FirmwareKeyExists(..) => "firmware-key-exists",
            HqError::FirmwareReleased { .. } => "firmware-released",
            HqError::Sql(..) => "store",
            HqError::Json(..) => "store-corrupt",
            HqError::CorruptStore(..) => "store-corrupt",
            HqError::Random => "random-failed",
            HqError::Rejected(r) => r.code(),
            HqError::UnknownRevocationTarget(..) => "unknown-revocation-target",
            HqError::AlreadyRevoked(..) => "already-revoked",
            HqError::Crl(..) => "crl",
            HqError::NoSiteUpdate(..) => "no-site-update",
            HqError::Registry(..) => "registry",
            HqError::VerificationCert(..) => "verification-cert",
            HqError::Io { .. } => "io",
        }
    }
}

/// Options of `hq init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The OEM's name, used in certificate subjects.
    pub org: String,
    /// The root's key algorithm (ECDSA P-384 by default).
    pub root_algorithm: SignatureAlgorithm,
}

/// What `hq init` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    /// The HQ directory.
    pub dir: PathBuf,
    /// The OEM's name.
    pub org: String,
    /// SHA-256 of the root certificate (as `openssl x509 -fingerprint -sha256` prints it).
    pub root_fingerprint: String,
    /// PEM of the OEM root.
    pub root_cert: PathBuf,
    /// PEM of the HQ authority signing certificate.
    pub hq_authority_signing_cert: PathBuf,
    /// PEM of the HQ authority key-agreement certificate.
    pub hq_authority_key_agreement_cert: PathBuf,
    /// The database.
    pub database: PathBuf,
}

/// Fresh random serial number.
pub(crate) fn random_serial(rng: &SystemRandom) -> Result<Serial, HqError> {
    let mut b = [0u8; 16];
    rng.fill(&mut b).map_err(|_| HqError::Random)?;
    Ok(Serial::from_random(b))
}

fn write_pem(path: &Path, der: &[u8]) -> Result<(), HqError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| HqError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    stamp_store::write_atomic(path, cert::to_pem(der).as_bytes(), 0o644)?;
    Ok(())
}

/// PEM path of a certificate kept in the HQ directory.
fn cert_path(dir: &Path, profile: Profile) -> PathBuf {
    dir.join("certs").join(format!("{}.pem", profile.name()))
}

/// Creates an HQ directory: the OEM root, the HQ authority's signing and key-agreement keys and
/// certificates, and the database. New keys go where `keys` says (the software store in the
/// directory, or a PKCS#11 token). Nothing is left behind if any step fails, in a token either.
pub fn init(
    dir: &Path,
    opts: &InitOptions,
    keys: impl Into<KeyConfig>,
    now: OffsetDateTime,
) -> Result<InitReport, HqError> {
    let staging = StagingDir::new(dir)?;
    let base = staging.path();
    let keys = stamp_keys::open_store(base, keys.into());
    let new_keys = keys.guard_new_keys();
    let rng = SystemRandom::new();

    let (root_ref, root_key) = keys.generate_signer(Profile::OemRoot.name(), opts.root_algorithm)?;
    let root_validity = Validity::starting(now, Profile::OemRoot.default_lifetime());
    let root_der =
        profile::self_signed_root(root_key.as_ref(), &opts.org, root_validity, random_serial(&rng)?)?;
    let issuer = profile::Issuer {
        cert_der: &root_der,
        signer: root_key.as_ref(),
    };

    let (sign_ref, sign_key) = keys.generate_signer(
        Profile::HqAuthoritySigning.name(),
        SignatureAlgorithm::EcdsaP256Sha256,
    )?;
    let sign_der = profile::issue(
        Profile::HqAuthoritySigning,
        &opts.org,
        &Holder::Hq,
        &cert::subject_key(sign_key.algorithm().rcgen(), sign_key.public_key()),
        Validity::starting(now, Profile::HqAuthoritySigning.default_lifetime()),
        random_serial(&rng)?,
        &issuer,
    )?;
    let (ka_ref, ka_key) = keys.generate_key_agreement(
        Profile::HqAuthorityKeyAgreement.name(),
        KeyAgreementAlgorithm::EcdhP256,
    )?;
    let ka_der = profile::issue(
        Profile::HqAuthorityKeyAgreement,
        &opts.org,
        &Holder::Hq,
        &cert::subject_key(ka_key.algorithm().rcgen_public_key(), ka_key.public_key()),
        Validity::starting(now, Profile::HqAuthorityKeyAgreement.default_lifetime()),
        random_serial(&rng)?,
        &issuer,
    )?;

    let mut store = HqStore::create(&base.join(DB_FILE), &opts.org, now)?;
    store.add_own_key(
        Profile::OemRoot,
        &root_ref,
        opts.root_algorithm.name(),
        &root_der,
        now,
    )?;
    store.add_own_key(
        Profile::HqAuthoritySigning,
        &sign_ref,
        sign_key.algorithm().name(),
        &sign_der,
        now,
    )?;
    store.add_own_key(
        Profile::HqAuthorityKeyAgreement,
        &ka_ref,
        ka_key.algorithm().name(),
        &ka_der,
        now,
    )?;
    drop(store);
    for (p, der) in [
        (Profile::OemRoot, &root_der),
        (Profile::HqAuthoritySigning, &sign_der),
        (Profile::HqAuthorityKeyAgreement, &ka_der),
    ] {
        write_pem(&cert_path(base, p), der)?;
    }
    staging.commit()?;
    new_keys.keep();
    Ok(InitReport {
        dir: dir.to_owned(),
        org: opts.org.clone(),
        root_fingerprint: fingerprint::cert_sha256(&root_der),
        root_cert: cert_path(dir, Profile::OemRoot),
        hq_authority_signing_cert: cert_path(dir, Profile::HqAuthoritySigning),
        hq_authority_key_agreement_cert: cert_path(dir, Profile::HqAuthorityKeyAgreement),
        database: dir.join(DB_FILE),
    })
}

/// Reads and verifies a site's request file (CSRs, key types, binding signature).
pub fn read_request(bytes: &[u8]) -> Result<VerifiedSiteRequest, HqError> {
    Ok(SiteRequest::parse(bytes)?.verify()?)
}

/// What `hq enroll-site` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnrollReport {
    /// The site enrolled.
    pub site_id: SiteId,
    /// The request's short fingerprint.
    pub request_fingerprint: String,
    /// The credentials file written.
    pub credentials: PathBuf,
    /// PEM of the site identity signing certificate (kept at HQ).
    pub site_identity_signing_cert: PathBuf,
    /// PEM of the site identity key-agreement certificate.
    pub site_identity_key_agreement_cert: PathBuf,
    /// PEM of the site issuing CA certificate.
    pub site_issuing_ca_cert: PathBuf,
    /// PEM of the OEM root.
    pub root_cert: PathBuf,
}

/// An open HQ directory.
pub struct Hq {
    dir: PathBuf,
    store: HqStore,
    keys: Keys,
}

impl Hq {
    /// Opens an HQ directory; its keys are opened by the references in its database, with the
    /// passphrase or the PKCS#11 module and PIN from `keys`.
    pub fn open(dir: &Path, keys: impl Into<KeyConfig>) -> Result<Self, HqError> {
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            return Err(HqError::NotHqDir(dir.to_owned()));
        }
        Ok(Hq {
            dir: dir.to_owned(),
            store: HqStore::open(&db)?,
            keys: stamp_keys::open_store(dir, keys.into()),
        })
    }

    /// The HQ database.
    pub fn store(&self) -> &HqStore {
        &self.store
    }

    /// Issues a verified request's certificates, records the site and writes the credentials
    /// file to `out`. If `expected_fingerprint` is given it must equal the request's short
    /// fingerprint. On any error HQ state is unchanged and no credentials file is left.
    pub fn enroll_site(
        &mut self,
        request: &VerifiedSiteRequest,
        expected_fingerprint: Option<&str>,
        out: &Path,
        now: OffsetDateTime,
    ) -> Result<EnrollReport, HqError> {
        let short = request.short_fingerprint();
        if let Some(expected) = expected_fingerprint {
            let norm = |s: &str| {
                s.chars()
                    .filter(|c| c.is_ascii_hexdigit())
                    .collect::<String>()
                    .to_lowercase()
            };
            if norm(expected) != norm(&short) {
                return Err(HqError::FingerprintMismatch {
                    found: short,
                    expected: expected.to_owned(),
                });
            }
        }
        let site = &request.site_id;
        if self.store.site_enrolled(site)? {
            return Err(HqError::AlreadyEnrolled(site.clone()));
        }
        let spkis = [
            request.identity.spki_der(),
            &request.key_agreement_spki,
            request.issuing.spki_der(),
        ];
        if spkis[0] == spkis[1] || spkis[0] == spkis[2] || spkis[1] == spkis[2] {
            return Err(HqError::KeyReused);
        }
        for spki in spkis {
            if self.store.public_key_known(&fingerprint::sha256(spki))? {
                return Err(HqError::KeyReused);
            }
        }
        let org = self.store.org()?;
        let (root_ref, root_der) = self.store.own_key(Profile::OemRoot)?;
        let root_signer = self.keys.open_signer(&KeyRef::parse(&root_ref)?)?;
        let issuer = profile::Issuer {
            cert_der: &root_der,
            signer: root_signer.as_ref(),
        };
        let rng = SystemRandom::new();
        let holder = Holder::Site(site.clone());
        let rcgen_alg = |kt: KeyType| {
            ceremony::signature_algorithm(kt)
                .map(SignatureAlgorithm::rcgen)
                .ok_or(HqError::KeyReused)
        };
        let ka_raw = request.key_agreement_raw()?;
        let ka_alg = match request.key_agreement_type {
            KeyType::P384 => KeyAgreementAlgorithm::EcdhP384,
            _ => KeyAgreementAlgorithm::EcdhP256,
        };
        let mut issued = Vec::new();
        for (profile, alg, raw) in [
            (
                Profile::SiteIdentitySigning,
                rcgen_alg(request.identity.key_type())?,
                request.identity.raw_public_key(),
            ),
            (
                Profile::SiteIdentityKeyAgreement,
                ka_alg.rcgen_public_key(),
                ka_raw.as_slice(),
            ),
            (
                Profile::SiteIssuingCa,
                rcgen_alg(request.issuing.key_type())?,
                request.issuing.raw_public_key(),
            ),
        ] {
            let der = profile::issue(
                profile,
                &org,
                &holder,
                &cert::subject_key(alg, raw),
                Validity::starting(now, profile.default_lifetime()),
                random_serial(&rng)?,
                &issuer,
            )?;
            issued.push((profile, der));
        }
        let creds =
            self.store
                .credentials(site, short.clone(), [&issued[0].1, &issued[1].1, &issued[2].1])?;
        // The credentials file first; then the database in one transaction; if that fails the
        // file is removed again, so a failure leaves neither.
        stamp_store::write_atomic(out, &creds.to_json(), 0o644)?;
        if let Err(e) = self.store.record_site(site, &request.fingerprint, &issued, now) {
            let _ = fs::remove_file(out);
            return Err(e);
        }
        let site_dir = self.dir.join("sites").join(site.as_str());
        let mut paths = Vec::new();
        for (profile, der) in &issued {
            let p = site_dir.join(format!("{}.pem", profile.name()));
            write_pem(&p, der)?;
            paths.push(p);
        }
        let mut paths = paths.into_iter();
        let mut next = || paths.next().unwrap_or_default();
        Ok(EnrollReport {
            site_id: site.clone(),
            request_fingerprint: short,
            credentials: out.to_owned(),
            site_identity_signing_cert: next(),
            site_identity_key_agreement_cert: next(),
            site_issuing_ca_cert: next(),
            root_cert: cert_path(&self.dir, Profile::OemRoot),
        })
    }
}
