//! The key layer's interface: signers and key-agreement keys.
//!
//! Certificate, envelope and log code use these traits and never see private-key bytes. The
//! implementations (software key store, PKCS#11) live in `stamp-keys`.

use std::fmt;

use zeroize::Zeroizing;

/// Signature algorithms a stamp signing key can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureAlgorithm {
    /// ECDSA on P-256 with SHA-256; signatures DER-encoded (X.509 style).
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384; signatures DER-encoded (X.509 style).
    EcdsaP384Sha384,
    /// Ed25519 (pure).
    Ed25519,
    /// RSASSA-PSS with a 3072-bit key: SHA-256, MGF1 with SHA-256, a 32-byte salt (what ESP32
    /// Secure Boot V2 and MCUboot's RSA-3072 require). Used only to sign firmware: stamp never
    /// signs certificates or packages with it.
    #[serde(rename = "rsa3072-pss")]
    Rsa3072PssSha256,
}

impl SignatureAlgorithm {
    /// The rcgen description of this algorithm.
    ///
    /// For RSA-PSS this describes only the public key (an `rsaEncryption` SubjectPublicKeyInfo, as
    /// imgtool, espsecure and openssl expect); rcgen has no RSA-PSS signing, and stamp's
    /// certificate code refuses to sign with an RSA key (see [`RcgenSigner`]).
    pub fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            SignatureAlgorithm::EcdsaP384Sha384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            SignatureAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            SignatureAlgorithm::Rsa3072PssSha256 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// The aws-lc-rs verification algorithm matching this algorithm.
    pub fn verification(self) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            SignatureAlgorithm::EcdsaP384Sha384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
            SignatureAlgorithm::Ed25519 => &aws_lc_rs::signature::ED25519,
            SignatureAlgorithm::Rsa3072PssSha256 => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        }
    }

    /// Short name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => "ecdsa-p256",
            SignatureAlgorithm::EcdsaP384Sha384 => "ecdsa-p384",
            SignatureAlgorithm::Ed25519 => "ed25519",
            SignatureAlgorithm::Rsa3072PssSha256 => "rsa3072-pss",
        }
    }
}

/// Key-agreement algorithms a stamp key-agreement key can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAgreementAlgorithm {
    /// ECDH on P-256.
    EcdhP256,
    /// ECDH on P-384.
    EcdhP384,
}

impl KeyAgreementAlgorithm {
    /// The SubjectPublicKeyInfo of a key-agreement key is that of an EC key on the same curve, so the
    /// rcgen algorithm of the matching ECDSA curve describes its public key.
    pub fn rcgen_public_key(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAgreementAlgorithm::EcdhP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAgreementAlgorithm::EcdhP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    /// Short name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KeyAgreementAlgorithm::EcdhP256 => "ecdh-p256",
            KeyAgreementAlgorithm::EcdhP384 => "ecdh-p384",
        }
    }
}

/// What went wrong inside a key backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The backend failed to sign.
    #[error("{backend} key {key}: signing failed")]
    Sign {
        /// Backend name (`file`, `pkcs11`).
        backend: &'static str,
        /// The key's reference.
        key: String,
    },
    /// The peer's public key was not a valid point on the key's curve.
    #[error("peer public key is not a valid {0} public key")]
    BadPeerKey(&'static str),
    /// The backend failed to compute a shared secret.
    #[error("{backend} key {key}: key agreement failed")]
    Agree {
        /// Backend name.
        backend: &'static str,
        /// The key's reference.
        key: String,
    },
    /// The backend failed and says why (a PKCS#11 token was removed, for example).
    #[error("{backend} key {key}: {reason}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// The key's reference.
        key: String,
        /// The backend's explanation (never secret).
        reason: String,
    },
}

/// A private signing key that stays inside its backend.
pub trait Signer: Send + Sync {
    /// The algorithm the key signs with.
    fn algorithm(&self) -> SignatureAlgorithm;
    /// The raw public key: the contents of the SubjectPublicKeyInfo BIT STRING (an uncompressed EC
    /// point, the 32 bytes of an Ed25519 key, or a DER PKCS#1 `RSAPublicKey`).
    fn public_key(&self) -> &[u8];
    /// Signs `message`; ECDSA signatures are DER `Ecdsa-Sig-Value`, as X.509 carries them; RSA-PSS
    /// signatures are the modulus-sized big-endian integer of RFC 8017.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// The key's reference, for messages (never secret).
    fn key_ref(&self) -> &str;

    /// DER SubjectPublicKeyInfo of the key.
    fn spki_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        RawPublicKey::new(self.algorithm().rcgen(), self.public_key().to_vec()).subject_public_key_info()
    }
}

/// A shared secret from key agreement, wiped when dropped.
pub type SharedSecret = Zeroizing<Vec<u8>>;

/// A private key-agreement key that stays inside its backend.
pub trait KeyAgreement: Send + Sync {
    /// The key's algorithm.
    fn algorithm(&self) -> KeyAgreementAlgorithm;
    /// The raw public key (uncompressed EC point).
    fn public_key(&self) -> &[u8];
    /// ECDH with a peer's raw public key (uncompressed point); returns the x-coordinate secret.
    fn agree(&self, peer_public_key: &[u8]) -> Result<SharedSecret, KeyError>;
    /// The key's reference, for messages (never secret).
    fn key_ref(&self) -> &str;

    /// DER SubjectPublicKeyInfo of the key.
    fn spki_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        RawPublicKey::new(self.algorithm().rcgen_public_key(), self.public_key().to_vec())
            .subject_public_key_info()
    }
}

/// A public key with its algorithm, usable as the subject key of a certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct RawPublicKey {
    alg: &'static rcgen::SignatureAlgorithm,
    raw: Vec<u8>,
}

impl RawPublicKey {
    /// Wraps raw public-key bytes (the SPKI BIT STRING contents).
    pub fn new(alg: &'static rcgen::SignatureAlgorithm, raw: Vec<u8>) -> Self {
        RawPublicKey { alg, raw }
    }
}

impl fmt::Debug for RawPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawPublicKey({})", hex::encode(&self.raw))
    }
}

impl rcgen::PublicKeyData for RawPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

/// Adapts a [`Signer`] to rcgen's signing interface.
pub(crate) struct RcgenSigner<'a>(pub &'a dyn Signer);

impl rcgen::PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm().rcgen()
    }
}

impl rcgen::SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // rcgen would label an RSA signature PKCS#1 v1.5; stamp's RSA keys sign PSS, firmware only.
        if self.0.algorithm() == SignatureAlgorithm::Rsa3072PssSha256 {
            return Err(rcgen::Error::RemoteKeyError);
        }
        self.0.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// [`RcgenSigner`] for a shared signer, for rcgen values that outlive a borrow (a prepared issuer).
pub(crate) struct SharedRcgenSigner(pub std::sync::Arc<dyn Signer>);

impl rcgen::PublicKeyData for SharedRcgenSigner {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm().rcgen()
    }
}

impl rcgen::SigningKey for SharedRcgenSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        rcgen::SigningKey::sign(&RcgenSigner(self.0.as_ref()), msg)
    }
}

/// Verifies `signature` over `message` with a raw public key (for RSA, only a 3072-bit key).
pub fn verify_signature(
    alg: SignatureAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    if alg == SignatureAlgorithm::Rsa3072PssSha256
        && aws_lc_rs::signature::RsaParameters::public_modulus_len(public_key).ok() != Some(3072)
    {
        return false;
    }
    aws_lc_rs::signature::UnparsedPublicKey::new(alg.verification(), public_key)
        .verify(message, signature)
        .is_ok()
}
