//! One key store for a role: new keys go where the configuration says, existing keys are opened
//! by their reference, whichever backend holds them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock, PoisonError};

use stamp_core::key::{KeyAgreement, KeyAgreementAlgorithm, SignatureAlgorithm, Signer};

use crate::pkcs11::{Pkcs11Config, Pkcs11Store, Pkcs11Uri};
use crate::soft::SoftKeyStore;
use crate::{KeyRef, KeyStore, KeyStoreError, Passphrase, PassphraseError, PassphraseSource};

/// Where new keys are made: `--key-store file:` or `--key-store pkcs11:token=NAME`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreTarget {
    /// The software store in the state directory (`file:`).
    #[default]
    File,
    /// A PKCS#11 token (the URI's token attributes).
    Pkcs11(Pkcs11Uri),
}

impl FromStr for StoreTarget {
    type Err = KeyStoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "file:" | "file" => Ok(StoreTarget::File),
            _ if s.starts_with("pkcs11:") => Ok(StoreTarget::Pkcs11(
                Pkcs11Uri::parse_token(s).map_err(|e| KeyStoreError::Pkcs11(e.into()))?,
            )),
            _ => Err(KeyStoreError::BadKeyRef(format!(
                "{} (a key store is file: or pkcs11:token=LABEL)",
                s.chars().take(200).collect::<String>()
            ))),
        }
    }
}

impl fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreTarget::File => f.write_str("file:"),
            StoreTarget::Pkcs11(u) => write!(f, "{u}"),
        }
    }
}

/// Everything a role needs to reach its keys. Secrets are obtained only when a key of their
/// backend is first used.
#[derive(Debug)]
pub struct KeyConfig {
    /// Where new keys are made.
    pub new_keys: StoreTarget,
    /// The software store's passphrase (asked for only when a `file:` key is used).
    pub passphrase: PassphraseSource,
    /// The PKCS#11 module and PIN (used only when a `pkcs11:` key is used).
    pub pkcs11: Pkcs11Config,
}

impl From<Passphrase> for KeyConfig {
    /// Software keys with this passphrase; PKCS#11 from the environment.
    fn from(p: Passphrase) -> Self {
        KeyConfig {
            new_keys: StoreTarget::File,
            passphrase: PassphraseSource::Given(p),
            pkcs11: Pkcs11Config::default(),
        }
    }
}

/// A role's key store: dispatches by [`KeyRef`] to the software store (rooted at the state
/// directory) or to PKCS#11 tokens.
pub struct Keys {
    base: PathBuf,
    new_keys: StoreTarget,
    passphrase: Mutex<Option<PassphraseSource>>,
    soft: OnceLock<SoftKeyStore>,
    pkcs11: Pkcs11Store,
    generated: Mutex<Vec<KeyRef>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("base", &self.base)
            .field("new_keys", &self.new_keys.to_string())
            .finish_non_exhaustive()
    }
}

/// The key store of a role whose state directory is `base` (relative `file:` paths resolve
/// against it). Nothing is read, loaded or asked for until a key is used.
pub fn open_store(base: &Path, config: KeyConfig) -> Keys {
    let target = match &config.new_keys {
        StoreTarget::Pkcs11(u) => Some(u.clone()),
        StoreTarget::File => None,
    };
    Keys {
        base: base.to_owned(),
        new_keys: config.new_keys,
        passphrase: Mutex::new(Some(config.passphrase)),
        soft: OnceLock::new(),
        pkcs11: Pkcs11Store::new(config.pkcs11, target),
        generated: Mutex::new(Vec::new()),
    }
}

impl Keys {
    fn soft(&self) -> Result<&SoftKeyStore, KeyStoreError> {
        if let Some(s) = self.soft.get() {
            return Ok(s);
        }
        let mut source = self.passphrase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = self.soft.get() {
            return Ok(s);
        }
        let passphrase = source.take().ok_or(PassphraseError::NoSource)?.resolve()?;
        Ok(self
            .soft
            .get_or_init(|| SoftKeyStore::new(&self.base, passphrase)))
    }

    fn record(&self, key: &KeyRef) {
        self.generated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key.clone());
    }

    /// Where new keys are made.
    pub fn target(&self) -> &StoreTarget {
        &self.new_keys
    }

    /// A guard that deletes every key this store generated when it is dropped, unless
    /// [`NewKeys::keep`] is called: a ceremony that fails half-way leaves no key behind, in a
    /// token as in the state directory.
    pub fn guard_new_keys(&self) -> NewKeys<'_> {
        NewKeys {
            keys: self,
            keep: false,
        }
    }
}

/// See [`Keys::guard_new_keys`].
#[must_use = "dropping the guard deletes the new keys; call keep() once they are recorded"]
pub struct NewKeys<'a> {
    keys: &'a Keys,
    keep: bool,
}

impl NewKeys<'_> {
    /// Keeps the keys generated so far.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for NewKeys<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let generated =
            std::mem::take(&mut *self.keys.generated.lock().unwrap_or_else(PoisonError::into_inner));
        for key in generated.iter().rev() {
            // Best effort: the failure that dropped the guard is the one to report.
            let _ = match key {
                KeyRef::File(_) => self.keys.soft.get().map_or(Ok(()), |s| s.remove(key)),
                KeyRef::Pkcs11(u) => self.keys.pkcs11.destroy(u).map_err(KeyStoreError::from),
            };
        }
    }
}

impl KeyStore for Keys {
    fn generate_signer(
        &self,
        name: &str,
        alg: SignatureAlgorithm,
    ) -> Result<(KeyRef, Box<dyn Signer>), KeyStoreError> {
        let made = match &self.new_keys {
            StoreTarget::File => self.soft()?.generate_signer(name, alg)?,
            StoreTarget::Pkcs11(_) => self.pkcs11.generate_signer(name, alg)?,
        };
        self.record(&made.0);
        Ok(made)
    }

    fn generate_key_agreement(
        &self,
        name: &str,
        alg: KeyAgreementAlgorithm,
    ) -> Result<(KeyRef, Box<dyn KeyAgreement>), KeyStoreError> {
        let made = match &self.new_keys {
            StoreTarget::File => self.soft()?.generate_key_agreement(name, alg)?,
            StoreTarget::Pkcs11(_) => self.pkcs11.generate_key_agreement(name, alg)?,
        };
        self.record(&made.0);
        Ok(made)
    }

    fn open_signer(&self, key: &KeyRef) -> Result<Box<dyn Signer>, KeyStoreError> {
        match key {
            KeyRef::File(_) => self.soft()?.open_signer(key),
            KeyRef::Pkcs11(_) => self.pkcs11.open_signer(key),
        }
    }

    fn open_key_agreement(&self, key: &KeyRef) -> Result<Box<dyn KeyAgreement>, KeyStoreError> {
        match key {
            KeyRef::File(_) => self.soft()?.open_key_agreement(key),
            KeyRef::Pkcs11(_) => self.pkcs11.open_key_agreement(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("file:".parse::<StoreTarget>().unwrap(), StoreTarget::File);
        let t: StoreTarget = "pkcs11:token=hq".parse().unwrap();
        assert_eq!(t.to_string(), "pkcs11:token=hq");
        assert!("pkcs11:token=hq;object=x".parse::<StoreTarget>().is_err());
        assert!("pkcs11:token=hq?pin-value=1".parse::<StoreTarget>().is_err());
        assert!("/tmp/keys".parse::<StoreTarget>().is_err());
    }

    #[test]
    fn software_keys_need_no_pkcs11_and_pkcs11_keys_no_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let keys = open_store(dir.path(), Passphrase::new("correct horse".into()).into());
        let (r, s) = keys
            .generate_signer("k", SignatureAlgorithm::EcdsaP256Sha256)
            .unwrap();
        assert_eq!(keys.open_signer(&r).unwrap().public_key(), s.public_key());

        // A store with no passphrase source left and no module fails only when used, each with
        // its own error.
        let cfg = KeyConfig {
            new_keys: StoreTarget::File,
            passphrase: PassphraseSource::Obtain {
                file: Some(dir.path().join("missing")),
                creating: false,
            },
            pkcs11: Pkcs11Config {
                module: Some(dir.path().join("no-such-module.so")),
                ..Default::default()
            },
        };
        let keys = open_store(dir.path(), cfg);
        let p11 = KeyRef::parse("pkcs11:token=t;object=o").unwrap();
        assert!(matches!(
            keys.open_signer(&p11),
            Err(KeyStoreError::Pkcs11(crate::Pkcs11Error::ModuleNotFound(_)))
        ));
        assert!(matches!(
            keys.open_signer(&r),
            Err(KeyStoreError::Passphrase(PassphraseError::Read { .. }))
        ));
    }

    #[test]
    fn a_dropped_guard_removes_new_software_keys() {
        let dir = tempfile::tempdir().unwrap();
        let keys = open_store(dir.path(), Passphrase::new("correct horse".into()).into());
        {
            let _guard = keys.guard_new_keys();
            keys.generate_signer("gone", SignatureAlgorithm::Ed25519).unwrap();
            assert!(dir.path().join("keys/gone.key").exists());
        }
        assert!(!dir.path().join("keys/gone.key").exists());
        let guard = keys.guard_new_keys();
        keys.generate_signer("kept", SignatureAlgorithm::Ed25519).unwrap();
        guard.keep();
        assert!(dir.path().join("keys/kept.key").exists());
    }
}
