//! stamp's key layer: where private keys live and the only code that touches them.
//!
//! Callers name keys by [`KeyRef`] and get back a [`Signer`] or [`KeyAgreement`] (traits from
//! `stamp-core`), whatever the backend. Two backends:
//!
//! - [`soft::SoftKeyStore`] (the default): keys generated with aws-lc-rs and kept as
//!   passphrase-encrypted PKCS#8 files (PBES2, scrypt, AES-256-CBC) that openssl can read, mode 0600;
//! - [`pkcs11::Pkcs11Store`]: keys generated and used inside a PKCS#11 token (HSM).
//!
//! Roles use [`open_store`], which makes new keys where [`KeyConfig::new_keys`] says and opens
//! every key by its reference, so callers never care which backend holds a key.

// Items are `pub` only where the crate exports them (rustls and webpki do the same).
#![warn(unreachable_pub)]

pub mod device;
mod dispatch;
pub mod passphrase;
pub mod pkcs11;
pub mod soft;

use std::fmt;
use std::path::PathBuf;

pub use dispatch::{open_store, KeyConfig, Keys, NewKeys, StoreTarget};
pub use passphrase::{Passphrase, PassphraseError, PassphraseSource};
pub use pkcs11::{Pin, PinSource, Pkcs11Config, Pkcs11Error, Pkcs11Uri};
use stamp_core::key::{KeyAgreement, KeyAgreementAlgorithm, SignatureAlgorithm, Signer};

/// A reference to a key in some backend, written as a URI.
///
/// - `file:<path>`: a software key file; a relative path is relative to the state directory.
/// - `pkcs11:<RFC 7512 attributes>`: a private key in a PKCS#11 token
///   (`pkcs11:token=site;object=site-issuing-ca`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// A key file of the software store.
    File(PathBuf),
    /// A key in a PKCS#11 token.
    Pkcs11(Pkcs11Uri),
}

impl KeyRef {
    /// Parses a key reference.
    pub fn parse(s: &str) -> Result<Self, KeyStoreError> {
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(KeyStoreError::BadKeyRef(s.to_owned()));
            }
            return Ok(KeyRef::File(PathBuf::from(path)));
        }
        if s.starts_with("pkcs11:") {
            return Ok(KeyRef::Pkcs11(
                Pkcs11Uri::parse_key(s).map_err(|e| KeyStoreError::Pkcs11(e.into()))?,
            ));
        }
        Err(KeyStoreError::BadKeyRef(s.chars().take(200).collect()))
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::File(p) => write!(f, "file:{}", p.display()),
            KeyRef::Pkcs11(u) => write!(f, "{u}"),
        }
    }
}

/// Errors from a key store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// Not a key reference stamp understands.
    #[error("invalid key reference {0:?} (expected file:PATH or pkcs11:token=...;object=...)")]
    BadKeyRef(String),
    /// A backend this build does not offer yet.
    #[error("the {0} key backend is not available in this build")]
    BackendUnavailable(&'static str),
    /// The key file does not exist.
    #[error("key file {0} not found")]
    NotFound(PathBuf),
    /// A key file already exists where a new key would be written.
    #[error("key file {0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    /// The key file's permissions let others read it.
    #[error("key file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Not an encrypted PKCS#8 key, or a KDF this store does not accept.
    #[error("key file {path} is not a stamp key file: {why}")]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// The passphrase does not decrypt the key.
    #[error("wrong passphrase for key file {0}")]
    WrongPassphrase(PathBuf),
    /// The key is not of the expected algorithm.
    #[error("key {key} is a {found} key, expected {expected}")]
    WrongAlgorithm {
        /// The key.
        key: String,
        /// What it is.
        found: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// Key generation or the pairwise consistency check after it failed.
    #[error("generating key {0} failed its consistency check")]
    Generation(String),
    /// A PKCS#11 module, token or key failed.
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
    /// The software store's passphrase could not be had.
    #[error(transparent)]
    Passphrase(#[from] PassphraseError),
    /// Reading or writing a key file failed.
    #[error("cannot access key file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What every key backend offers: make keys and open them by reference.
pub trait KeyStore {
    /// Generates a signing key named `name`, checks it with a pairwise sign/verify, and returns
    /// its reference and a signer.
    fn generate_signer(
        &self,
        name: &str,
        alg: SignatureAlgorithm,
    ) -> Result<(KeyRef, Box<dyn Signer>), KeyStoreError>;

    /// Generates a key-agreement key named `name`, checks it with a pairwise agreement, and
    /// returns its reference and the key.
    fn generate_key_agreement(
        &self,
        name: &str,
        alg: KeyAgreementAlgorithm,
    ) -> Result<(KeyRef, Box<dyn KeyAgreement>), KeyStoreError>;

    /// Opens an existing signing key.
    fn open_signer(&self, key: &KeyRef) -> Result<Box<dyn Signer>, KeyStoreError>;

    /// Opens an existing key-agreement key.
    fn open_key_agreement(&self, key: &KeyRef) -> Result<Box<dyn KeyAgreement>, KeyStoreError>;
}
