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
    /// Every algorithm, in declaration order (for tests and tables).
    pub const ALL: [SignatureAlgorithm; 4] = [
        SignatureAlgorithm::EcdsaP256Sha256,
        SignatureAlgorithm::EcdsaP384Sha384,
        SignatureAlgorithm::Ed25519,
        SignatureAlgorithm::Rsa3072PssSha256,
    ];

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

    /// The aws-lc-rs verification algorithm for signatures in the form [`Signer::sign`] returns
    /// (ECDSA: DER `Ecdsa-Sig-Value`, as X.509 carries it).
    pub fn verification(self) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            SignatureAlgorithm::EcdsaP384Sha384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
            SignatureAlgorithm::Ed25519 => &aws_lc_rs::signature::ED25519,
            SignatureAlgorithm::Rsa3072PssSha256 => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        }
    }

    /// The aws-lc-rs verification algorithm for signatures in the form [`Signer::sign_fixed`]
    /// returns (ECDSA: fixed-length `r || s`, as COSE and ESP32 carry it).
    pub fn fixed_verification(self) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            SignatureAlgorithm::EcdsaP384Sha384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
            SignatureAlgorithm::Ed25519 => &aws_lc_rs::signature::ED25519,
            SignatureAlgorithm::Rsa3072PssSha256 => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        }
    }

    /// The length of a signature in the form [`Signer::sign_fixed`] returns (ECDSA: `r || s`;
    /// RSA-PSS: the modulus length of a 3072-bit key).
    pub fn fixed_signature_len(self) -> usize {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => 64,
            SignatureAlgorithm::EcdsaP384Sha384 => 96,
            SignatureAlgorithm::Ed25519 => 64,
            SignatureAlgorithm::Rsa3072PssSha256 => 384,
        }
    }

    /// For ECDSA, the size in bytes of the curve's scalars (each of `r` and `s`); `None` for the
    /// other algorithms.
    pub fn ecdsa_scalar_len(self) -> Option<usize> {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => Some(32),
            SignatureAlgorithm::EcdsaP384Sha384 => Some(48),
            SignatureAlgorithm::Ed25519 | SignatureAlgorithm::Rsa3072PssSha256 => None,
        }
    }

    /// For ECDSA, the hash the message is digested with before signing (what a backend that signs
    /// a pre-hashed digest, such as PKCS#11's `CKM_ECDSA`, must apply); `None` for the others.
    pub fn ecdsa_digest(self) -> Option<&'static aws_lc_rs::digest::Algorithm> {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => Some(&aws_lc_rs::digest::SHA256),
            SignatureAlgorithm::EcdsaP384Sha384 => Some(&aws_lc_rs::digest::SHA384),
            SignatureAlgorithm::Ed25519 | SignatureAlgorithm::Rsa3072PssSha256 => None,
        }
    }

    /// The length of the raw public key [`Signer::public_key`] returns (an uncompressed point, or
    /// 32 bytes for Ed25519); `None` for RSA, whose DER `RSAPublicKey` varies.
    pub fn public_key_len(self) -> Option<usize> {
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => Some(65),
            SignatureAlgorithm::EcdsaP384Sha384 => Some(97),
            SignatureAlgorithm::Ed25519 => Some(32),
            SignatureAlgorithm::Rsa3072PssSha256 => None,
        }
    }

    /// The COSE algorithm (RFC 9053) of signatures made with this algorithm.
    pub(crate) fn cose(self) -> coset::iana::Algorithm {
        use coset::iana::Algorithm;
        match self {
            SignatureAlgorithm::EcdsaP256Sha256 => Algorithm::ES256,
            SignatureAlgorithm::EcdsaP384Sha384 => Algorithm::ES384,
            SignatureAlgorithm::Ed25519 => Algorithm::EdDSA,
            SignatureAlgorithm::Rsa3072PssSha256 => Algorithm::PS256,
        }
    }

    /// The signature algorithm of a COSE algorithm, where stamp signs COSE structures with it
    /// (never RSA).
    pub(crate) fn from_cose(alg: &coset::Algorithm) -> Option<SignatureAlgorithm> {
        SignatureAlgorithm::ALL
            .into_iter()
            .filter(|a| *a != SignatureAlgorithm::Rsa3072PssSha256)
            .find(|a| *alg == coset::RegisteredLabelWithPrivate::Assigned(a.cose()))
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
    /// Every algorithm, in declaration order.
    pub const ALL: [KeyAgreementAlgorithm; 2] =
        [KeyAgreementAlgorithm::EcdhP256, KeyAgreementAlgorithm::EcdhP384];

    /// The SubjectPublicKeyInfo of a key-agreement key is that of an EC key on the same curve, so the
    /// rcgen algorithm of the matching ECDSA curve describes its public key.
    pub fn rcgen_public_key(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAgreementAlgorithm::EcdhP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAgreementAlgorithm::EcdhP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    /// The aws-lc-rs key-agreement algorithm.
    pub fn agreement(self) -> &'static aws_lc_rs::agreement::Algorithm {
        match self {
            KeyAgreementAlgorithm::EcdhP256 => &aws_lc_rs::agreement::ECDH_P256,
            KeyAgreementAlgorithm::EcdhP384 => &aws_lc_rs::agreement::ECDH_P384,
        }
    }

    /// The size in bytes of a field element (and of a scalar, and of the shared secret) of the
    /// curve.
    pub fn field_len(self) -> usize {
        match self {
            KeyAgreementAlgorithm::EcdhP256 => 32,
            KeyAgreementAlgorithm::EcdhP384 => 48,
        }
    }

    /// The length of the raw public key [`KeyAgreement::public_key`] returns (an uncompressed
    /// point: `0x04 || x || y`).
    pub fn public_key_len(self) -> usize {
        1 + 2 * self.field_len()
    }

    /// The COSE curve (RFC 9053) of the key.
    pub(crate) fn cose_curve(self) -> coset::iana::EllipticCurve {
        match self {
            KeyAgreementAlgorithm::EcdhP256 => coset::iana::EllipticCurve::P_256,
            KeyAgreementAlgorithm::EcdhP384 => coset::iana::EllipticCurve::P_384,
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
    /// The backend returned a signature that is not of its algorithm's form (an ECDSA signature
    /// that is not minimal DER, or of the wrong length).
    #[error("{backend} key {key}: the signature is malformed")]
    MalformedSignature {
        /// Backend name (`file`, `pkcs11`; `signer` when the trait's default method found it).
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
///
/// `Debug` is required so that values holding a signer can derive it; an implementation prints at
/// most the algorithm, the key reference and the public key (or its fingerprint), never private
/// key material.
pub trait Signer: Send + Sync + fmt::Debug {
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

    /// Signs `message` and returns the signature in its fixed-size form, as COSE (RFC 9053
    /// section 2.1) and ESP32 signature blocks carry it: ECDSA as `r || s`, each left-padded to
    /// the curve's scalar size; Ed25519 and RSA-PSS as [`Signer::sign`] returns them.
    ///
    /// The default converts the DER of [`Signer::sign`]; a backend whose signatures are already
    /// `r || s` (a PKCS#11 token) overrides it to skip the round trip. Callers still check the
    /// length ([`SignatureAlgorithm::fixed_signature_len`]) and verify the result.
    fn sign_fixed(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let signature = self.sign(message)?;
        match self.algorithm().ecdsa_scalar_len() {
            Some(n) => crate::cose::der_to_fixed(&signature, n).ok_or_else(|| KeyError::MalformedSignature {
                backend: "signer",
                key: self.key_ref().to_owned(),
            }),
            None => Ok(signature),
        }
    }

    /// DER SubjectPublicKeyInfo of the key.
    fn spki_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        RawPublicKey::new(self.algorithm().rcgen(), self.public_key().to_vec()).subject_public_key_info()
    }
}

/// A shared secret from key agreement, wiped when dropped.
pub type SharedSecret = Zeroizing<Vec<u8>>;

/// A private key-agreement key that stays inside its backend.
///
/// As for [`Signer`], the required `Debug` prints at most the algorithm, the key reference and
/// the public key, never private key material.
pub trait KeyAgreement: Send + Sync + fmt::Debug {
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

/// Adapts a [`Signer`] to rcgen's signing interface: anything that dereferences to a signer, a
/// borrow (`&dyn Signer`, `&S`) for a certificate made at once, or an `Arc<dyn Signer>` for rcgen
/// values that outlive a borrow (a prepared issuer). As rcgen's own blanket `impl SigningKey for
/// &S`, one type serves both.
#[derive(Debug)]
pub(crate) struct RcgenSigner<K>(pub K);

impl<K> rcgen::PublicKeyData for RcgenSigner<K>
where
    K: std::ops::Deref,
    K::Target: Signer,
{
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm().rcgen()
    }
}

impl<K> rcgen::SigningKey for RcgenSigner<K>
where
    K: std::ops::Deref,
    K::Target: Signer,
{
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // rcgen would label an RSA signature PKCS#1 v1.5; stamp's RSA keys sign PSS, firmware only.
        if self.0.algorithm() == SignatureAlgorithm::Rsa3072PssSha256 {
            return Err(rcgen::Error::RemoteKeyError);
        }
        self.0.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// Verifies `signature` over `message` with a raw public key (for RSA, only a 3072-bit key); the
/// signature is in the form [`Signer::sign`] returns (ECDSA: DER).
pub fn verify_signature(
    alg: SignatureAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    verify_with(alg, alg.verification(), public_key, message, signature)
}

/// [`verify_signature`] for a signature in the form [`Signer::sign_fixed`] returns (ECDSA:
/// `r || s`).
pub fn verify_fixed_signature(
    alg: SignatureAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    verify_with(alg, alg.fixed_verification(), public_key, message, signature)
}

fn verify_with(
    alg: SignatureAlgorithm,
    verification: &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    if alg == SignatureAlgorithm::Rsa3072PssSha256
        && aws_lc_rs::signature::RsaParameters::public_modulus_len(public_key).ok() != Some(3072)
    {
        return false;
    }
    aws_lc_rs::signature::UnparsedPublicKey::new(verification, public_key)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::profile::tests::TestSigner;

    #[test]
    fn sign_fixed_verifies_with_the_fixed_algorithms() {
        let msg = b"stamp sign_fixed";
        for alg in SignatureAlgorithm::ALL {
            let key = TestSigner::new(alg);
            let fixed = key.sign_fixed(msg).unwrap();
            assert_eq!(fixed.len(), alg.fixed_signature_len(), "{alg:?}");
            assert!(
                verify_fixed_signature(alg, key.public_key(), msg, &fixed),
                "{alg:?}"
            );
            assert!(
                !verify_fixed_signature(alg, key.public_key(), b"other", &fixed),
                "{alg:?}"
            );
            let der = key.sign(msg).unwrap();
            assert!(verify_signature(alg, key.public_key(), msg, &der), "{alg:?}");
            if let Some(n) = alg.ecdsa_scalar_len() {
                // The two forms differ for ECDSA, and each verifies only with its own algorithm.
                assert_eq!(2 * n, alg.fixed_signature_len());
                assert!(!verify_signature(alg, key.public_key(), msg, &fixed), "{alg:?}");
                assert!(
                    !verify_fixed_signature(alg, key.public_key(), msg, &der),
                    "{alg:?}"
                );
            }
        }
    }

    /// A signer whose backend returns bytes that are not a DER signature.
    #[derive(Debug)]
    struct Garbled(TestSigner);

    impl Signer for Garbled {
        fn algorithm(&self) -> SignatureAlgorithm {
            self.0.algorithm()
        }
        fn public_key(&self) -> &[u8] {
            self.0.public_key()
        }
        fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, KeyError> {
            Ok(vec![0x30, 0x00])
        }
        fn key_ref(&self) -> &str {
            "garbled"
        }
    }

    #[test]
    fn sign_fixed_refuses_a_malformed_der_signature() {
        let g = Garbled(TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256));
        assert!(matches!(
            g.sign_fixed(b"m"),
            Err(KeyError::MalformedSignature { key, .. }) if key == "garbled"
        ));
    }

    #[test]
    fn algorithm_facts_agree() {
        for alg in SignatureAlgorithm::ALL {
            let cose = coset::Algorithm::Assigned(alg.cose());
            let back = SignatureAlgorithm::from_cose(&cose);
            if alg == SignatureAlgorithm::Rsa3072PssSha256 {
                // stamp never signs COSE structures with RSA, so it never reads PS256 either.
                assert_eq!(back, None);
            } else {
                assert_eq!(back, Some(alg));
            }
            assert_eq!(
                alg.ecdsa_scalar_len().is_some(),
                alg.ecdsa_digest().is_some(),
                "{alg:?}"
            );
            let key = TestSigner::new(alg);
            if let Some(len) = alg.public_key_len() {
                assert_eq!(key.public_key().len(), len, "{alg:?}");
            }
        }
        assert_eq!(
            SignatureAlgorithm::from_cose(&coset::Algorithm::Assigned(coset::iana::Algorithm::ES512)),
            None
        );
        for alg in KeyAgreementAlgorithm::ALL {
            let key = aws_lc_rs::agreement::PrivateKey::generate(alg.agreement()).unwrap();
            let public = key.compute_public_key().unwrap();
            assert_eq!(public.as_ref().len(), alg.public_key_len(), "{alg:?}");
            assert_eq!(alg.field_len(), (alg.public_key_len() - 1) / 2);
        }
        let [a, b] = KeyAgreementAlgorithm::ALL;
        assert_ne!(a.cose_curve(), b.cose_curve());
    }

    #[test]
    fn debug_names_the_key_and_its_algorithm_only() {
        for alg in SignatureAlgorithm::ALL {
            let key = TestSigner::new(alg);
            let want = format!("TestSigner(test:key, {})", alg.name());
            assert_eq!(format!("{key:?}"), want);
            // The adapter shows what the signer shows, nothing more.
            assert_eq!(format!("{:?}", RcgenSigner(&key)), format!("RcgenSigner({want})"));
        }
    }

    #[test]
    fn one_rcgen_adapter_serves_borrowed_and_shared_signers() {
        use rcgen::{PublicKeyData, SigningKey};
        let key: std::sync::Arc<dyn Signer> =
            std::sync::Arc::new(TestSigner::new(SignatureAlgorithm::Ed25519));
        let borrowed = RcgenSigner(key.as_ref());
        let shared = RcgenSigner(key.clone());
        assert_eq!(borrowed.der_bytes(), shared.der_bytes());
        let sig = shared.sign(b"m").unwrap();
        assert!(verify_signature(
            SignatureAlgorithm::Ed25519,
            borrowed.der_bytes(),
            b"m",
            &sig
        ));
        let rsa = TestSigner::new(SignatureAlgorithm::Rsa3072PssSha256);
        assert!(RcgenSigner(&rsa).sign(b"m").is_err());
    }
}
