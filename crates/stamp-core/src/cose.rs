//! What the COSE formats (sealed envelopes, registries) share: making a `COSE_Sign1` with a
//! [`Signer`] ([`sign1`]), and the conversion of a DER ECDSA signature (what X.509 signers return)
//! into the fixed-length `r || s` of COSE (RFC 9053 section 2.1) and ESP32 signature blocks, behind
//! the default [`Signer::sign_fixed`].
//!
//! The per-algorithm facts COSE needs (algorithm identifiers, signature lengths, verification
//! algorithms) are methods of [`SignatureAlgorithm`](crate::key::SignatureAlgorithm), with the
//! rest of each algorithm's facts.

use aws_lc_rs::signature;
use ciborium::Value;
use coset::{CborSerializable, CoseSign1, Header, HeaderBuilder, ProtectedHeader, TaggedCborSerializable};

use crate::key::{KeyError, SignatureAlgorithm, Signer};

/// The `x5chain` header parameter (RFC 9360): the signer's certificate, then its issuers.
pub(crate) const LABEL_X5CHAIN: i64 = coset::iana::HeaderParameter::X5Chain as i64;

/// Why [`sign1`] made no signature.
#[derive(Debug)]
pub(crate) enum SignError {
    /// The signer's algorithm has no COSE form stamp uses (RSA).
    Unsupported,
    /// CBOR encoding failed.
    Encoding,
    /// The signer returned a signature of the wrong form or length.
    Malformed,
    /// The signature does not verify with the signer's public key (a backend that signs with
    /// another key than it reports, or a faulty signature), caught here rather than by the reader.
    Mismatch,
    /// The key backend failed.
    Key(KeyError),
}

/// A protected header whose serialized bytes are fixed now, so that every later use (the
/// signature, the AAD, the KDF context and the output) sees the same bytes.
pub(crate) fn protected_with_bytes(header: Header) -> Option<ProtectedHeader> {
    let bytes = header.clone().to_vec().ok()?;
    Some(ProtectedHeader {
        original_data: Some(bytes),
        header,
    })
}

/// Signs `payload` as a tagged `COSE_Sign1` (RFC 9052) with `signer` (ECDSA or Ed25519): the
/// protected header carries the algorithm, `content_type` and `x5chain` (one certificate as a
/// byte string, several as an array), the external AAD is `external_aad`, and the signature is
/// checked against the signer's public key before the bytes are returned.
pub(crate) fn sign1(
    signer: &dyn Signer,
    content_type: &str,
    x5chain: &[Vec<u8>],
    payload: Vec<u8>,
    external_aad: &[u8],
) -> Result<Vec<u8>, SignError> {
    let alg = signer.algorithm();
    if alg == SignatureAlgorithm::Rsa3072PssSha256 {
        return Err(SignError::Unsupported);
    }
    let x5chain = match x5chain {
        [one] => Value::Bytes(one.clone()),
        many => Value::Array(many.iter().map(|c| Value::Bytes(c.clone())).collect()),
    };
    let protected = HeaderBuilder::new()
        .algorithm(alg.cose())
        .content_type(content_type.to_owned())
        .value(LABEL_X5CHAIN, x5chain)
        .build();
    let mut sign1 = CoseSign1 {
        protected: protected_with_bytes(protected).ok_or(SignError::Encoding)?,
        unprotected: Header::default(),
        payload: Some(payload),
        signature: Vec::new(),
    };
    let tbs = sign1.tbs_data(external_aad);
    sign1.signature = match signer.sign_fixed(&tbs) {
        Ok(s) if s.len() == alg.fixed_signature_len() => s,
        Ok(_) | Err(KeyError::MalformedSignature { .. }) => return Err(SignError::Malformed),
        Err(e) => return Err(SignError::Key(e)),
    };
    signature::UnparsedPublicKey::new(alg.fixed_verification(), signer.public_key())
        .verify(&tbs, &sign1.signature)
        .map_err(|_| SignError::Mismatch)?;
    sign1.to_tagged_vec().map_err(|_| SignError::Encoding)
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
