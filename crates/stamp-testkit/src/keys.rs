//! In-memory keys implementing stamp-core's [`Signer`] and [`KeyAgreement`] with aws-lc-rs.

use aws_lc_rs::agreement;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use stamp_core::key::{
    KeyAgreement, KeyAgreementAlgorithm, KeyError, SharedSecret, SignatureAlgorithm, Signer,
};
use zeroize::Zeroizing;

enum Key {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A signing key held in memory: ECDSA P-256, ECDSA P-384 or Ed25519.
pub struct MemSigner {
    alg: SignatureAlgorithm,
    key: Key,
    public: Vec<u8>,
    pkcs8: Vec<u8>,
    key_ref: String,
}

impl std::fmt::Debug for MemSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemSigner")
            .field("alg", &self.alg)
            .field("key_ref", &self.key_ref)
            .finish_non_exhaustive()
    }
}

impl MemSigner {
    /// A fresh key of `alg`; panics for an algorithm it does not hold (RSA).
    pub fn new(alg: SignatureAlgorithm) -> Self {
        let (key, pkcs8) = match alg {
            SignatureAlgorithm::EcdsaP256Sha256 | SignatureAlgorithm::EcdsaP384Sha384 => {
                let a = if alg == SignatureAlgorithm::EcdsaP256Sha256 {
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING
                } else {
                    &signature::ECDSA_P384_SHA384_ASN1_SIGNING
                };
                let k = EcdsaKeyPair::generate(a).unwrap();
                let der = k.to_pkcs8v1().unwrap().as_ref().to_vec();
                (Key::Ecdsa(k), der)
            }
            SignatureAlgorithm::Ed25519 => {
                let k = Ed25519KeyPair::generate().unwrap();
                let der = k.to_pkcs8v1().unwrap().as_ref().to_vec();
                (Key::Ed25519(k), der)
            }
            other => panic!("no in-memory test key for {other:?}"),
        };
        Self::from_key(alg, key, pkcs8)
    }

    /// The Ed25519 key of a 32-byte seed (for documented test vectors).
    pub fn ed25519_from_seed(seed: &[u8]) -> Self {
        let k = Ed25519KeyPair::from_seed_unchecked(seed).unwrap();
        let pkcs8 = k.to_pkcs8v1().unwrap().as_ref().to_vec();
        Self::from_key(SignatureAlgorithm::Ed25519, Key::Ed25519(k), pkcs8)
    }

    /// The ECDSA key of a DER private key (PKCS#8 or RFC 5915), for fixed test keys; panics on a
    /// key that is not of `alg` (P-256 or P-384).
    pub fn ecdsa_from_der(alg: SignatureAlgorithm, der: &[u8]) -> Self {
        let a = match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            SignatureAlgorithm::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            other => panic!("not an ECDSA algorithm: {other:?}"),
        };
        let k = EcdsaKeyPair::from_private_key_der(a, der).unwrap();
        let pkcs8 = k.to_pkcs8v1().unwrap().as_ref().to_vec();
        Self::from_key(alg, Key::Ecdsa(k), pkcs8)
    }

    fn from_key(alg: SignatureAlgorithm, key: Key, pkcs8: Vec<u8>) -> Self {
        let public = match &key {
            Key::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            Key::Ed25519(k) => k.public_key().as_ref().to_vec(),
        };
        MemSigner {
            alg,
            key,
            public,
            pkcs8,
            key_ref: "test-signer".to_owned(),
        }
    }

    /// The same key under another reference (what [`Signer::key_ref`] returns).
    pub fn with_key_ref(mut self, key_ref: &str) -> Self {
        key_ref.clone_into(&mut self.key_ref);
        self
    }

    /// The private key as DER PKCS#8 v1 (for independent tools).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }
}

impl Signer for MemSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.alg
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        Ok(match &self.key {
            Key::Ecdsa(k) => k.sign(&SystemRandom::new(), message).unwrap().as_ref().to_vec(),
            Key::Ed25519(k) => k.sign(message).as_ref().to_vec(),
        })
    }
    fn key_ref(&self) -> &str {
        &self.key_ref
    }
}

/// An ECDH key held in memory (P-256 or P-384).
pub struct MemKeyAgreement {
    alg: KeyAgreementAlgorithm,
    key: agreement::PrivateKey,
    public: Vec<u8>,
}

impl std::fmt::Debug for MemKeyAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemKeyAgreement")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn lc(alg: KeyAgreementAlgorithm) -> &'static agreement::Algorithm {
    match alg {
        KeyAgreementAlgorithm::EcdhP256 => &agreement::ECDH_P256,
        KeyAgreementAlgorithm::EcdhP384 => &agreement::ECDH_P384,
    }
}

impl MemKeyAgreement {
    /// A fresh key of `alg`.
    pub fn new(alg: KeyAgreementAlgorithm) -> Self {
        let key = agreement::PrivateKey::generate(lc(alg)).unwrap();
        let public = key.compute_public_key().unwrap().as_ref().to_vec();
        MemKeyAgreement { alg, key, public }
    }

    /// The key of a fixed private scalar (big-endian, the curve's field length), for fixed test
    /// keys; panics on a scalar that is not a valid key.
    pub fn from_scalar(alg: KeyAgreementAlgorithm, scalar: &[u8]) -> Self {
        let key = agreement::PrivateKey::from_private_key(lc(alg), scalar).unwrap();
        let public = key.compute_public_key().unwrap().as_ref().to_vec();
        MemKeyAgreement { alg, key, public }
    }

    /// The private key as DER PKCS#8 v1 (for independent tools).
    pub fn pkcs8(&self) -> Vec<u8> {
        let der: Pkcs8V1Der<'static> = self.key.as_der().unwrap();
        der.as_ref().to_vec()
    }
}

impl KeyAgreement for MemKeyAgreement {
    fn algorithm(&self) -> KeyAgreementAlgorithm {
        self.alg
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn agree(&self, peer: &[u8]) -> Result<SharedSecret, KeyError> {
        agreement::agree(
            &self.key,
            agreement::UnparsedPublicKey::new(lc(self.alg), peer),
            KeyError::BadPeerKey(self.alg.name()),
            |s| Ok(Zeroizing::new(s.to_vec())),
        )
    }
    fn key_ref(&self) -> &str {
        "test-ka"
    }
}
