//! The software key store: encrypted PKCS#8 files in the state directory.
//!
//! Each key is a PEM `ENCRYPTED PRIVATE KEY` (RFC 5958 EncryptedPrivateKeyInfo) protected with
//! PBES2 (RFC 8018): scrypt (N = 2^14, r = 8, p = 1, 16-byte salt: the parameters of
//! `openssl pkcs8 -scrypt`, inside OpenSSL's 32 MiB scrypt memory limit) and AES-256-CBC. `openssl pkey`
//! reads these files with the same passphrase. Files are created with mode 0600 and refused when
//! group or others can read them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::agreement;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use pkcs8::der::Decode;
use pkcs8::pkcs5::{self, pbes2};
use pkcs8::{EncryptedPrivateKeyInfo, LineEnding, PrivateKeyInfo};
use stamp_core::key::{
    KeyAgreement, KeyAgreementAlgorithm, KeyError, SharedSecret, SignatureAlgorithm, Signer,
};
use zeroize::Zeroizing;

use crate::{KeyRef, KeyStore, KeyStoreError, Passphrase};

/// Largest key file read.
const MAX_KEY_FILE: u64 = 16 * 1024;
/// scrypt cost written into new key files (log2 N).
const SCRYPT_LOG_N: u8 = 14;
/// Largest scrypt cost accepted when reading (bounds the work a crafted file can demand).
const MAX_SCRYPT_LOG_N: u32 = 20;

/// A directory of passphrase-encrypted key files.
pub struct SoftKeyStore {
    base: PathBuf,
    passphrase: Passphrase,
}

impl SoftKeyStore {
    /// A store whose relative key paths are resolved against `base` (the state directory).
    pub fn new(base: &Path, passphrase: Passphrase) -> Self {
        SoftKeyStore {
            base: base.to_owned(),
            passphrase,
        }
    }

    fn path_of(&self, key: &KeyRef) -> Result<PathBuf, KeyStoreError> {
        match key {
            KeyRef::File(p) => Ok(self.base.join(p)),
            other => Err(KeyStoreError::BadKeyRef(other.to_string())),
        }
    }

    fn new_ref(name: &str) -> KeyRef {
        KeyRef::File(PathBuf::from("keys").join(format!("{name}.key")))
    }

    /// Removes a key file this store wrote (a key made by a ceremony that then failed).
    pub(crate) fn remove(&self, key: &KeyRef) -> Result<(), KeyStoreError> {
        let path = self.path_of(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(KeyStoreError::Io { path, source }),
        }
    }

    /// Encrypts PKCS#8 DER and writes it to a new 0600 file (never overwriting one).
    fn write_key(&self, key: &KeyRef, pkcs8_der: &[u8]) -> Result<(), KeyStoreError> {
        let path = self.path_of(key)?;
        let io = |source| KeyStoreError::Io {
            path: path.clone(),
            source,
        };
        let rng = SystemRandom::new();
        let mut salt = [0u8; 16];
        let mut iv = [0u8; 16];
        rng.fill(&mut salt)
            .map_err(|_| KeyStoreError::Generation(key.to_string()))?;
        rng.fill(&mut iv)
            .map_err(|_| KeyStoreError::Generation(key.to_string()))?;
        let scrypt = pkcs5::scrypt::Params::new(SCRYPT_LOG_N, 8, 1, 32)
            .map_err(|_| KeyStoreError::Generation(key.to_string()))?;
        let params = pbes2::Parameters::scrypt_aes256cbc(scrypt, &salt, &iv)
            .map_err(|_| KeyStoreError::Generation(key.to_string()))?;
        let info =
            PrivateKeyInfo::from_der(pkcs8_der).map_err(|_| KeyStoreError::Generation(key.to_string()))?;
        let encrypted = info
            .encrypt_with_params(params, self.passphrase.expose())
            .map_err(|_| KeyStoreError::Generation(key.to_string()))?;
        let pem = encrypted
            .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
            .map_err(|_| KeyStoreError::Generation(key.to_string()))?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyStoreError::Exists(path.clone())
                } else {
                    io(e)
                }
            })?;
        f.write_all(pem.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    /// Reads and decrypts a key file to PKCS#8 DER.
    fn read_key(&self, key: &KeyRef) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let path = self.path_of(key)?;
        let io = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KeyStoreError::NotFound(path.clone())
            } else {
                KeyStoreError::Io {
                    path: path.clone(),
                    source,
                }
            }
        };
        let meta = fs::metadata(&path).map_err(io)?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyStoreError::InsecurePermissions {
                path,
                mode: mode & 0o777,
            });
        }
        let not_key = |why| KeyStoreError::NotAKeyFile {
            path: path.clone(),
            why,
        };
        if !meta.is_file() || meta.len() > MAX_KEY_FILE {
            return Err(not_key("not a regular file of at most 16 KiB"));
        }
        let text = Zeroizing::new(fs::read_to_string(&path).map_err(io)?);
        let (label, der) = pkcs8::der::pem::decode_vec(text.as_bytes()).map_err(|_| not_key("not PEM"))?;
        if label != "ENCRYPTED PRIVATE KEY" {
            return Err(not_key("not an ENCRYPTED PRIVATE KEY"));
        }
        let info = EncryptedPrivateKeyInfo::from_der(&der)
            .map_err(|_| not_key("malformed EncryptedPrivateKeyInfo"))?;
        match &info.encryption_algorithm {
            pkcs5::EncryptionScheme::Pbes2(pbes2::Parameters {
                kdf: pbes2::Kdf::Scrypt(s),
                ..
            }) => {
                let log_n = 63 - s.cost_parameter.leading_zeros();
                if log_n > MAX_SCRYPT_LOG_N || s.block_size > 32 || s.parallelization > 16 {
                    return Err(not_key("scrypt parameters beyond the accepted limits"));
                }
            }
            _ => return Err(not_key("not PBES2 with scrypt")),
        }
        let doc = info
            .decrypt(self.passphrase.expose())
            .map_err(|_| KeyStoreError::WrongPassphrase(path.clone()))?;
        // A wrong passphrase can pass the CBC padding check by chance; the DER then fails to parse.
        PrivateKeyInfo::from_der(doc.as_bytes()).map_err(|_| KeyStoreError::WrongPassphrase(path.clone()))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }
}

enum SoftSigningKey {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A signer whose key is in memory, loaded from the software store.
pub struct SoftSigner {
    key_ref: String,
    alg: SignatureAlgorithm,
    key: SoftSigningKey,
    public: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SoftSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftSigner({}, {})", self.key_ref, self.alg.name())
    }
}

impl SoftSigner {
    /// A new key that lives only in memory, for what is signed once and never again (a
    /// short-lived server certificate, a test's forged CA). `name` is its reference in messages
    /// (`memory:NAME`).
    pub fn ephemeral(name: &str, alg: SignatureAlgorithm) -> Result<SoftSigner, KeyStoreError> {
        Ok(Self::generate_pkcs8(format!("memory:{name}"), alg)?.0)
    }

    /// A new key, checked pairwise, with its PKCS#8 DER.
    fn generate_pkcs8(
        key_ref: String,
        alg: SignatureAlgorithm,
    ) -> Result<(SoftSigner, Zeroizing<Vec<u8>>), KeyStoreError> {
        let gen_err = || KeyStoreError::Generation(key_ref.clone());
        let der = Zeroizing::new(match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => {
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
                    .and_then(|k| k.to_pkcs8v1())
                    .map_err(|_| gen_err())?
                    .as_ref()
                    .to_vec()
            }
            SignatureAlgorithm::EcdsaP384Sha384 => {
                EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_ASN1_SIGNING)
                    .and_then(|k| k.to_pkcs8v1())
                    .map_err(|_| gen_err())?
                    .as_ref()
                    .to_vec()
            }
            SignatureAlgorithm::Ed25519 => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8v1())
                .map_err(|_| gen_err())?
                .as_ref()
                .to_vec(),
            SignatureAlgorithm::Rsa3072PssSha256 => {
                let k = RsaKeyPair::generate(KeySize::Rsa3072).map_err(|_| gen_err())?;
                let der: pkcs8_der::Der = k.as_der().map_err(|_| gen_err())?;
                der.as_ref().to_vec()
            }
        });
        let signer = SoftSigner::from_pkcs8(key_ref.clone(), alg, &der)?;
        if !check_signer(&signer) {
            return Err(gen_err());
        }
        Ok((signer, der))
    }

    fn from_pkcs8(key_ref: String, alg: SignatureAlgorithm, der: &[u8]) -> Result<Self, KeyStoreError> {
        let wrong = |found| KeyStoreError::WrongAlgorithm {
            key: key_ref.clone(),
            found,
            expected: alg.name(),
        };
        let key = match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => SoftSigningKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der)
                    .map_err(|_| wrong("different"))?,
            ),
            SignatureAlgorithm::EcdsaP384Sha384 => SoftSigningKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, der)
                    .map_err(|_| wrong("different"))?,
            ),
            SignatureAlgorithm::Ed25519 => SoftSigningKey::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| wrong("different"))?,
            ),
            SignatureAlgorithm::Rsa3072PssSha256 => {
                let k = RsaKeyPair::from_pkcs8(der).map_err(|_| wrong("different"))?;
                if k.public_modulus_len() * 8 != 3072 {
                    return Err(wrong("RSA key of another size"));
                }
                SoftSigningKey::Rsa(k)
            }
        };
        let public = match &key {
            SoftSigningKey::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            SoftSigningKey::Ed25519(k) => k.public_key().as_ref().to_vec(),
            // DER PKCS#1 RSAPublicKey, the SubjectPublicKeyInfo BIT STRING of an RSA key.
            SoftSigningKey::Rsa(k) => k.public_key().as_ref().to_vec(),
        };
        Ok(SoftSigner {
            key_ref,
            alg,
            key,
            public,
            rng: SystemRandom::new(),
        })
    }
}

impl Signer for SoftSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.alg
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let err = || KeyError::Sign {
            backend: if self.key_ref.starts_with("memory:") {
                "memory"
            } else {
                "file"
            },
            key: self.key_ref.clone(),
        };
        match &self.key {
            SoftSigningKey::Ecdsa(k) => Ok(k.sign(&self.rng, message).map_err(|_| err())?.as_ref().to_vec()),
            SoftSigningKey::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
            SoftSigningKey::Rsa(k) => {
                // RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length = digest length (32 bytes).
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&signature::RSA_PSS_SHA256, &self.rng, message, &mut sig)
                    .map_err(|_| err())?;
                Ok(sig)
            }
        }
    }
    fn key_ref(&self) -> &str {
        &self.key_ref
    }
}

/// A key-agreement key in memory, loaded from the software store.
pub struct SoftKeyAgreement {
    key_ref: String,
    alg: KeyAgreementAlgorithm,
    key: agreement::PrivateKey,
    public: Vec<u8>,
}

impl std::fmt::Debug for SoftKeyAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftKeyAgreement({}, {})", self.key_ref, self.alg.name())
    }
}

impl SoftKeyAgreement {
    fn from_private(
        key_ref: String,
        alg: KeyAgreementAlgorithm,
        key: agreement::PrivateKey,
    ) -> Result<Self, KeyStoreError> {
        let public = key
            .compute_public_key()
            .map_err(|_| KeyStoreError::Generation(key_ref.clone()))?
            .as_ref()
            .to_vec();
        Ok(SoftKeyAgreement {
            key_ref,
            alg,
            key,
            public,
        })
    }
}

impl KeyAgreement for SoftKeyAgreement {
    fn algorithm(&self) -> KeyAgreementAlgorithm {
        self.alg
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn agree(&self, peer_public_key: &[u8]) -> Result<SharedSecret, KeyError> {
        let peer = agreement::UnparsedPublicKey::new(self.alg.agreement(), peer_public_key);
        agreement::agree(&self.key, peer, KeyError::BadPeerKey(self.alg.name()), |secret| {
            Ok(Zeroizing::new(secret.to_vec()))
        })
    }
    fn key_ref(&self) -> &str {
        &self.key_ref
    }
}

/// Pairwise consistency check for a new signing key: sign, then verify with the public key.
fn check_signer(s: &dyn Signer) -> bool {
    let msg = b"stamp pairwise consistency check";
    s.sign(msg)
        .map(|sig| stamp_core::key::verify_signature(s.algorithm(), s.public_key(), msg, &sig))
        .unwrap_or(false)
}

/// Pairwise consistency check for a new key-agreement key: agree with an ephemeral key both ways.
fn check_key_agreement(k: &dyn KeyAgreement) -> bool {
    let alg = k.algorithm().agreement();
    let Ok(eph) = agreement::PrivateKey::generate(alg) else {
        return false;
    };
    let Ok(eph_pub) = eph.compute_public_key() else {
        return false;
    };
    let Ok(ours) = k.agree(eph_pub.as_ref()) else {
        return false;
    };
    let peer = agreement::UnparsedPublicKey::new(alg, k.public_key());
    agreement::agree(&eph, peer, (), |theirs| Ok(theirs == ours.as_slice())).unwrap_or(false)
}

impl KeyStore for SoftKeyStore {
    fn generate_signer(
        &self,
        name: &str,
        alg: SignatureAlgorithm,
    ) -> Result<(KeyRef, Box<dyn Signer>), KeyStoreError> {
        let key_ref = Self::new_ref(name);
        let (signer, der) = SoftSigner::generate_pkcs8(key_ref.to_string(), alg)?;
        self.write_key(&key_ref, &der)?;
        Ok((key_ref, Box::new(signer)))
    }

    fn generate_key_agreement(
        &self,
        name: &str,
        alg: KeyAgreementAlgorithm,
    ) -> Result<(KeyRef, Box<dyn KeyAgreement>), KeyStoreError> {
        let key_ref = Self::new_ref(name);
        let gen_err = || KeyStoreError::Generation(key_ref.to_string());
        let private = agreement::PrivateKey::generate(alg.agreement()).map_err(|_| gen_err())?;
        let der: pkcs8_der::Der = private.as_der().map_err(|_| gen_err())?;
        let der = Zeroizing::new(der.as_ref().to_vec());
        let key = SoftKeyAgreement::from_private(key_ref.to_string(), alg, private)?;
        if !check_key_agreement(&key) {
            return Err(gen_err());
        }
        self.write_key(&key_ref, &der)?;
        Ok((key_ref, Box::new(key)))
    }

    fn open_signer(&self, key: &KeyRef) -> Result<Box<dyn Signer>, KeyStoreError> {
        let der = self.read_key(key)?;
        let alg = detect_signature_algorithm(&der).ok_or_else(|| KeyStoreError::NotAKeyFile {
            path: self.path_of(key).unwrap_or_default(),
            why: "not an ECDSA P-256/P-384, Ed25519 or RSA-3072 key",
        })?;
        Ok(Box::new(SoftSigner::from_pkcs8(key.to_string(), alg, &der)?))
    }

    fn open_key_agreement(&self, key: &KeyRef) -> Result<Box<dyn KeyAgreement>, KeyStoreError> {
        let der = self.read_key(key)?;
        let alg = match detect_signature_algorithm(&der) {
            Some(SignatureAlgorithm::EcdsaP256Sha256) => KeyAgreementAlgorithm::EcdhP256,
            Some(SignatureAlgorithm::EcdsaP384Sha384) => KeyAgreementAlgorithm::EcdhP384,
            _ => {
                return Err(KeyStoreError::NotAKeyFile {
                    path: self.path_of(key).unwrap_or_default(),
                    why: "not an EC P-256/P-384 key",
                })
            }
        };
        let private = agreement::PrivateKey::from_private_key_der(alg.agreement(), &der).map_err(|_| {
            KeyStoreError::NotAKeyFile {
                path: self.path_of(key).unwrap_or_default(),
                why: "malformed EC key",
            }
        })?;
        Ok(Box::new(SoftKeyAgreement::from_private(
            key.to_string(),
            alg,
            private,
        )?))
    }
}

mod pkcs8_der {
    pub(crate) type Der = aws_lc_rs::encoding::Pkcs8V1Der<'static>;
}

/// Reads the algorithm of a PKCS#8 key from its AlgorithmIdentifier.
fn detect_signature_algorithm(der: &[u8]) -> Option<SignatureAlgorithm> {
    const EC: &str = "1.2.840.10045.2.1";
    const P256: &str = "1.2.840.10045.3.1.7";
    const P384: &str = "1.3.132.0.34";
    const ED25519: &str = "1.3.101.112";
    const RSA: &str = "1.2.840.113549.1.1.1";
    let info = PrivateKeyInfo::from_der(der).ok()?;
    let oid = info.algorithm.oid.to_string();
    if oid == ED25519 {
        return Some(SignatureAlgorithm::Ed25519);
    }
    if oid == RSA {
        // The size is checked when the key is loaded.
        return Some(SignatureAlgorithm::Rsa3072PssSha256);
    }
    if oid != EC {
        return None;
    }
    let curve = info.algorithm.parameters_oid().ok()?.to_string();
    match curve.as_str() {
        P256 => Some(SignatureAlgorithm::EcdsaP256Sha256),
        P384 => Some(SignatureAlgorithm::EcdsaP384Sha384),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, pass: &str) -> SoftKeyStore {
        SoftKeyStore::new(dir, Passphrase::new(pass.to_owned()))
    }

    #[test]
    fn generate_then_open_signs_with_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "correct horse");
        for (name, alg) in [
            ("p256", SignatureAlgorithm::EcdsaP256Sha256),
            ("p384", SignatureAlgorithm::EcdsaP384Sha384),
            ("ed", SignatureAlgorithm::Ed25519),
            ("rsa", SignatureAlgorithm::Rsa3072PssSha256),
        ] {
            let (r, signer) = s.generate_signer(name, alg).unwrap();
            let reopened = s.open_signer(&r).unwrap();
            assert_eq!(reopened.algorithm(), alg);
            assert_eq!(reopened.public_key(), signer.public_key());
            let sig = reopened.sign(b"m").unwrap();
            assert!(stamp_core::key::verify_signature(
                alg,
                signer.public_key(),
                b"m",
                &sig
            ));
        }
    }

    /// `text` shows none of `secret`: no 8-byte run of it, in hex (either case) or as Rust's
    /// `Debug` of a byte slice.
    fn shows_nothing_of(text: &str, secret: &[u8]) -> bool {
        secret.windows(8).all(|w| {
            let hex: String = w.iter().map(|b| format!("{b:02x}")).collect();
            let list = format!("{w:?}");
            !text.contains(&hex)
                && !text.contains(&hex.to_uppercase())
                && !text.contains(&list[1..list.len() - 1])
        })
    }

    #[test]
    fn sign_fixed_verifies_with_the_fixed_algorithms() {
        let msg = b"a COSE Sig_structure";
        for alg in SignatureAlgorithm::ALL {
            let signer = SoftSigner::ephemeral("fixed", alg).unwrap();
            let fixed = signer.sign_fixed(msg).unwrap();
            assert_eq!(fixed.len(), alg.fixed_signature_len(), "{alg:?}");
            let fixed_alg: &dyn signature::VerificationAlgorithm = match alg {
                SignatureAlgorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_FIXED,
                SignatureAlgorithm::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_FIXED,
                SignatureAlgorithm::Ed25519 => &signature::ED25519,
                SignatureAlgorithm::Rsa3072PssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
            };
            signature::UnparsedPublicKey::new(fixed_alg, signer.public_key())
                .verify(msg, &fixed)
                .unwrap();
            assert!(stamp_core::key::verify_fixed_signature(
                alg,
                signer.public_key(),
                msg,
                &fixed
            ));
        }
    }

    #[test]
    fn debug_names_the_key_and_shows_no_private_key_bytes() {
        for alg in SignatureAlgorithm::ALL {
            let (signer, pkcs8) = SoftSigner::generate_pkcs8("file:keys/dbg.key".into(), alg).unwrap();
            let shown = format!("{signer:?} {signer:#?}");
            assert!(
                shown.starts_with(&format!("SoftSigner(file:keys/dbg.key, {})", alg.name())),
                "{shown}"
            );
            assert!(shows_nothing_of(&shown, &pkcs8), "{alg:?}: {shown}");
        }
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "correct horse");
        for alg in [KeyAgreementAlgorithm::EcdhP256, KeyAgreementAlgorithm::EcdhP384] {
            let (r, ka) = s.generate_key_agreement(alg.name(), alg).unwrap();
            let shown = format!("{ka:?}");
            assert_eq!(shown, format!("SoftKeyAgreement({r}, {})", alg.name()));
            let pkcs8 = s.read_key(&r).unwrap();
            assert!(shows_nothing_of(&shown, &pkcs8), "{alg:?}: {shown}");
        }
    }

    #[test]
    fn key_agreement_round_trip_and_agree() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "correct horse");
        let (r, a) = s
            .generate_key_agreement("ka", KeyAgreementAlgorithm::EcdhP256)
            .unwrap();
        let b = s.open_key_agreement(&r).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let (_, other) = s
            .generate_key_agreement("other", KeyAgreementAlgorithm::EcdhP256)
            .unwrap();
        let x = a.agree(other.public_key()).unwrap();
        let y = other.agree(b.public_key()).unwrap();
        assert_eq!(*x, *y);
        assert!(
            a.agree(&[4u8; 65]).is_err(),
            "a point not on the curve must be refused"
        );
    }

    #[test]
    fn files_are_0600_encrypted_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "correct horse");
        let (r, _) = s
            .generate_signer("k", SignatureAlgorithm::EcdsaP256Sha256)
            .unwrap();
        let path = s.path_of(&r).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert!(!text.contains("BEGIN PRIVATE KEY"));
        assert!(matches!(
            s.generate_signer("k", SignatureAlgorithm::EcdsaP256Sha256),
            Err(KeyStoreError::Exists(_))
        ));
    }

    #[test]
    fn wrong_passphrase_and_loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = store(dir.path(), "correct horse")
            .generate_signer("k", SignatureAlgorithm::EcdsaP256Sha256)
            .unwrap();
        let wrong = store(dir.path(), "battery staple");
        assert!(matches!(
            wrong.open_signer(&r),
            Err(KeyStoreError::WrongPassphrase(_))
        ));
        let path = dir.path().join("keys/k.key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let right = store(dir.path(), "correct horse");
        assert!(matches!(
            right.open_signer(&r),
            Err(KeyStoreError::InsecurePermissions { .. })
        ));
    }

    #[test]
    fn key_ref_parses() {
        assert_eq!(
            KeyRef::parse("file:keys/a.key").unwrap(),
            KeyRef::File("keys/a.key".into())
        );
        assert_eq!(
            KeyRef::parse("file:keys/a.key").unwrap().to_string(),
            "file:keys/a.key"
        );
        assert!(KeyRef::parse("file:").is_err());
        assert!(KeyRef::parse("/etc/passwd").is_err());
        assert!(
            KeyRef::parse("pkcs11:token=x").is_err(),
            "a key reference names an object"
        );
        let r = KeyRef::parse("pkcs11:token=site;object=site-issuing-ca").unwrap();
        assert_eq!(r.to_string(), "pkcs11:token=site;object=site-issuing-ca");
        let s = store(Path::new("/nonexistent"), "correct horse");
        assert!(matches!(s.open_signer(&r), Err(KeyStoreError::BadKeyRef(_))));
    }
}
