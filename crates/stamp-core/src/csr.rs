//! PKCS#10 certificate signing requests: checked before anything is built from them.
//!
//! Only the subject public key of a request is ever used; its names, extensions and attributes are
//! read by nobody. The signature is verified to prove the requester holds the private key.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Largest CSR accepted (DER bytes).
pub const MAX_CSR_DER: usize = 8 * 1024;

/// A subject public key's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA / ECDH on P-256.
    P256,
    /// ECDSA / ECDH on P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA with the given modulus size in bits.
    Rsa(u32),
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrError {
    /// Larger than [`MAX_CSR_DER`].
    #[error("CSR is larger than {MAX_CSR_DER} bytes")]
    TooLarge,
    /// Not a DER PKCS#10 request, or trailing bytes.
    #[error("not a valid DER PKCS#10 certificate signing request")]
    Malformed,
    /// The self-signature does not verify (no proof of possession).
    #[error("the CSR's signature does not verify with its own public key")]
    BadSignature,
    /// A key type stamp does not accept.
    #[error("unsupported public key type in CSR")]
    UnsupportedKey,
    /// An EC key with explicit curve parameters or a malformed point.
    #[error("malformed EC public key (explicit curve parameters or bad point)")]
    BadEcKey,
    /// An RSA key that is too small or has a bad public exponent.
    #[error("weak RSA key (modulus under 2048 bits or bad exponent)")]
    WeakRsaKey,
}

/// A request whose signature has been checked; only [`verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    key_type: KeyType,
    spki_der: Vec<u8>,
    raw_public_key: Vec<u8>,
    subject_der: Vec<u8>,
    requests_subject_alt_name: bool,
}

impl VerifiedCsr {
    /// The subject key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }
    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
    /// The SPKI BIT STRING contents.
    pub fn raw_public_key(&self) -> &[u8] {
        &self.raw_public_key
    }
    /// The requested subject name (DER). Never copied into a certificate; a renewal compares it
    /// with the certificate being renewed.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }
    /// Whether the request asks for a subject alternative name.
    pub fn requests_subject_alt_name(&self) -> bool {
        self.requests_subject_alt_name
    }
}

/// Builds a PKCS#10 request for `signer`'s key with subject `CN=<common_name>` and no extensions.
pub fn create(signer: &dyn crate::key::Signer, common_name: &str) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&crate::key::RcgenSigner(signer))?;
    Ok(csr.der().to_vec())
}

/// Parses a CSR, bounds its size, checks its key and verifies its self-signature.
pub fn verify(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    if der.len() > MAX_CSR_DER {
        return Err(CsrError::TooLarge);
    }
    // x509-parser is lenient about some tags; the RustCrypto decoder enforces strict DER.
    if <x509_cert::request::CertReq as x509_cert::der::Decode>::from_der(der).is_err() {
        return Err(CsrError::Malformed);
    }
    let csr = match X509CertificationRequest::from_der(der) {
        // Signatures and keys are whole octets: a non-zero unused-bits count is malleability.
        Ok(([], csr))
            if csr.signature_value.unused_bits == 0
                && csr
                    .certification_request_info
                    .subject_pki
                    .subject_public_key
                    .unused_bits
                    == 0 =>
        {
            csr
        }
        _ => return Err(CsrError::Malformed),
    };
    let spki = &csr.certification_request_info.subject_pki;
    let key_type = classify(spki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let requests_subject_alt_name = csr.requested_extensions().is_some_and(|mut exts| {
        exts.any(|e| {
            matches!(
                e,
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(_)
            )
        })
    });
    Ok(VerifiedCsr {
        key_type,
        spki_der: spki.raw.to_vec(),
        raw_public_key: spki.subject_public_key.data.to_vec(),
        subject_der: csr.certification_request_info.subject.as_raw().to_vec(),
        requests_subject_alt_name,
    })
}

/// Classifies a DER SubjectPublicKeyInfo.
pub fn classify_spki(spki_der: &[u8]) -> Result<KeyType, CsrError> {
    match SubjectPublicKeyInfo::from_der(spki_der) {
        Ok(([], spki)) => classify(&spki),
        _ => Err(CsrError::Malformed),
    }
}

fn classify(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyType, CsrError> {
    let alg = &spki.algorithm.algorithm;
    let key = spki.subject_public_key.data.as_ref();
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or(CsrError::BadEcKey)?;
        let (kt, len) = if curve == OID_EC_P256 {
            (KeyType::P256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (KeyType::P384, 97)
        } else {
            return Err(CsrError::UnsupportedKey);
        };
        if key.len() != len || key[0] != 0x04 {
            return Err(CsrError::BadEcKey);
        }
        Ok(kt)
    } else if *alg == OID_SIG_ED25519 {
        if spki.algorithm.parameters.is_some() || key.len() != 32 {
            return Err(CsrError::Malformed);
        }
        Ok(KeyType::Ed25519)
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let modulus = strip_zeros(rsa.modulus);
                let exponent = strip_zeros(rsa.exponent);
                let bits = modulus.len() * 8 - modulus.first().map_or(8, |b| b.leading_zeros() as usize);
                let e_ok = exponent.len() <= 4
                    && exponent.last().is_some_and(|b| b & 1 == 1)
                    && exponent.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)) >= 65537;
                if !(2048..=8192).contains(&bits) || !e_ok {
                    return Err(CsrError::WeakRsaKey);
                }
                u32::try_from(bits)
                    .map(KeyType::Rsa)
                    .map_err(|_| CsrError::WeakRsaKey)
            }
            _ => Err(CsrError::Malformed),
        }
    } else {
        Err(CsrError::UnsupportedKey)
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|x| **x == 0).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SignatureAlgorithm;
    use crate::profile::tests::TestSigner;

    #[test]
    fn verifies_good_requests_of_every_signing_key_type() {
        for (alg, kt) in [
            (SignatureAlgorithm::EcdsaP256Sha256, KeyType::P256),
            (SignatureAlgorithm::EcdsaP384Sha384, KeyType::P384),
            (SignatureAlgorithm::Ed25519, KeyType::Ed25519),
        ] {
            let key = TestSigner::new(alg);
            let der = create(&key, "device").unwrap();
            let v = verify(&der).unwrap();
            assert_eq!(v.key_type(), kt);
            assert_eq!(v.raw_public_key(), crate::key::Signer::public_key(&key));
        }
    }

    #[test]
    fn refuses_bad_signature_trailing_bytes_truncation_and_size() {
        let key = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
        let der = create(&key, "device").unwrap();
        let mut bad = der.clone();
        let n = bad.len();
        bad[n - 2] ^= 1;
        assert_eq!(verify(&bad).unwrap_err(), CsrError::BadSignature);
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(verify(&trailing).unwrap_err(), CsrError::Malformed);
        assert_eq!(verify(&der[..der.len() - 1]).unwrap_err(), CsrError::Malformed);
        assert_eq!(
            verify(&vec![0x30; MAX_CSR_DER + 1]).unwrap_err(),
            CsrError::TooLarge
        );
        // Every single-bit flip is refused, and none panics; several signatures, so that signature
        // bytes of every parity are covered (a set unused-bits count hides behind an even last byte).
        for _ in 0..8 {
            let der = create(&key, "device").unwrap();
            for i in 0..der.len() {
                for bit in [0x01, 0x40] {
                    let mut m = der.clone();
                    m[i] ^= bit;
                    assert!(verify(&m).is_err(), "flip {bit:#x} at byte {i} accepted");
                }
            }
        }
    }
}
