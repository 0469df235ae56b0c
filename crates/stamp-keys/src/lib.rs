//! stamp's key layer: where private keys live and the only code that touches them.
//!
//! Callers name keys by [`KeyRef`] and get back a [`Signer`] or [`KeyAgreement`] (traits from
//! `stamp-core`), whatever the backend. The default backend is [`soft::SoftKeyStore`]: keys
//! generated with aws-lc-rs and kept as passphrase-encrypted PKCS#8 files (PBES2, scrypt,
//! AES-256-CBC) that openssl can read, mode 0600.

pub mod device;
pub mod passphrase;
pub mod soft;

use std::fmt;
use std::path::PathBuf;

pub use passphrase::{Passphrase, PassphraseError};
use stamp_core::key::{KeyAgreement, KeyAgreementAlgorithm, SignatureAlgorithm, Signer};

/// A reference to a key in some backend, written as a URI.
///
/// - `file:<path>`: a software key file; a relative path is relative to the state directory.
/// - `pkcs11:<RFC 7512 attributes>`: reserved for the PKCS#11 backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// A key file of the software store.
    File(PathBuf),
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
            return Err(KeyStoreError::BackendUnavailable("pkcs11"));
        }
        Err(KeyStoreError::BadKeyRef(s.chars().take(200).collect()))
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// Errors from a key store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// Not a key reference stamp understands.
    #[error("invalid key reference {0:?} (expected file:PATH)")]
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
