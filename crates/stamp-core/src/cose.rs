//! What COSE (RFC 9052/9053) says about stamp's signature algorithms, shared by every COSE
//! structure stamp writes or reads (sealed envelopes, the registry, ESP32 signature blocks' key
//! handling): the algorithm identifiers, signature lengths and verification algorithms, and the
//! conversion of a DER ECDSA signature (what X.509 signers return) into COSE's fixed-length
//! `r || s` (RFC 9053 section 2.1).

use aws_lc_rs::signature;
use coset::iana;
use coset::RegisteredLabelWithPrivate;

use crate::key::SignatureAlgorithm;

/// The COSE algorithm of a signature algorithm.
pub(crate) fn cose_sig_alg(alg: SignatureAlgorithm) -> iana::Algorithm {
    match alg {
        SignatureAlgorithm::EcdsaP256Sha256 => iana::Algorithm::ES256,
        SignatureAlgorithm::EcdsaP384Sha384 => iana::Algorithm::ES384,
        SignatureAlgorithm::Ed25519 => iana::Algorithm::EdDSA,
        SignatureAlgorithm::Rsa3072PssSha256 => iana::Algorithm::PS256,
    }
}

/// The signature algorithm of a COSE algorithm, where stamp signs with it (never RSA).
pub(crate) fn sig_alg_of(alg: &coset::Algorithm) -> Option<SignatureAlgorithm> {
    match alg {
        RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256) => {
            Some(SignatureAlgorithm::EcdsaP256Sha256)
        }
        RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384) => {
            Some(SignatureAlgorithm::EcdsaP384Sha384)
        }
        RegisteredLabelWithPrivate::Assigned(iana::Algorithm::EdDSA) => Some(SignatureAlgorithm::Ed25519),
        _ => None,
    }
}

/// Length of a COSE signature (ECDSA: fixed-length r || s).
pub(crate) fn sig_len(alg: SignatureAlgorithm) -> usize {
    match alg {
        SignatureAlgorithm::EcdsaP256Sha256 => 64,
        SignatureAlgorithm::EcdsaP384Sha384 => 96,
        SignatureAlgorithm::Ed25519 => 64,
        SignatureAlgorithm::Rsa3072PssSha256 => 384,
    }
}

/// How to verify a COSE signature (ECDSA in its fixed-length form).
pub(crate) fn sig_verification(alg: SignatureAlgorithm) -> &'static dyn signature::VerificationAlgorithm {
    match alg {
        SignatureAlgorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_FIXED,
        SignatureAlgorithm::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_FIXED,
        SignatureAlgorithm::Ed25519 => &signature::ED25519,
        SignatureAlgorithm::Rsa3072PssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
    }
}

/// Converts a DER `Ecdsa-Sig-Value` to the fixed-length `r || s` of COSE (RFC 9053 section 2.1),
/// each integer left-padded to `n` bytes. Refuses anything but minimal DER.
pub(crate) fn der_to_fixed(der: &[u8], n: usize) -> Option<Vec<u8>> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (body, rest) = der_content(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let (r, body) = der_uint(body, n)?;
    let (s, body) = der_uint(body, n)?;
    if !body.is_empty() {
        return None;
    }
    let mut out = vec![0u8; 2 * n];
    out[n - r.len()..n].copy_from_slice(r);
    out[2 * n - s.len()..].copy_from_slice(s);
    Some(out)
}

/// Reads a DER length and returns (content, rest).
fn der_content(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = b.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&len, rest) = rest.split_first()?;
            if len < 0x80 {
                return None; // not minimal
            }
            (usize::from(len), rest)
        }
        _ => return None, // no ECDSA signature of these curves needs more
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// Reads a DER INTEGER that must be positive and fit in `n` bytes; returns its magnitude without
/// leading zeros, and the rest.
fn der_uint(b: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    if tag != 0x02 {
        return None;
    }
    let (int, rest) = der_content(rest)?;
    let (&first, tail) = int.split_first()?;
    if first & 0x80 != 0 {
        return None; // negative
    }
    let magnitude = if first == 0 {
        match tail.first() {
            Some(next) if next & 0x80 != 0 => tail,
            _ => return None, // zero, or a non-minimal leading zero
        }
    } else {
        int
    };
    if magnitude.len() > n {
        return None;
    }
    Some((magnitude, rest))
}
