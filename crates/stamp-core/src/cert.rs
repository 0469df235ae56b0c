//! Reading and checking certificates.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::key::RawPublicKey;
use crate::profile::{Profile, ProfileError};
use crate::MAX_CERT_DER;

/// Why a certificate was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Larger than [`MAX_CERT_DER`].
    #[error("certificate is larger than {MAX_CERT_DER} bytes")]
    TooLarge,
    /// Not DER X.509, or bytes after the certificate.
    #[error("not a valid DER X.509 certificate")]
    Malformed,
    /// Not PEM, or the wrong PEM label.
    #[error("expected a PEM {0} block")]
    NotPem(&'static str),
    /// The issuer's signature does not verify.
    #[error("the {0} certificate's signature does not verify with its issuer's key")]
    BadSignature(&'static str),
    /// The issuer name is not the issuer's subject.
    #[error("the {0} certificate names a different issuer")]
    IssuerMismatch(&'static str),
    /// Not valid at the given time.
    #[error("the {0} certificate is not valid now (expired or not yet valid)")]
    NotValidNow(&'static str),
    /// Wrong profile.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// Path validation (rustls-webpki) refused the chain.
    #[error("the {0} certificate does not chain to the OEM root for its role: {1}")]
    Chain(&'static str, String),
    /// The public key is of a type stamp does not handle here.
    #[error("the {0} certificate has an unsupported public key")]
    UnsupportedKey(&'static str),
}

/// Parses DER, refusing oversized input and trailing bytes.
pub fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    if der.len() > MAX_CERT_DER {
        return Err(CertError::TooLarge);
    }
    // x509-parser is lenient about some tags; the RustCrypto decoder enforces strict DER.
    if <x509_cert::Certificate as x509_cert::der::Decode>::from_der(der).is_err() {
        return Err(CertError::Malformed);
    }
    match X509Certificate::from_der(der) {
        // Signatures and keys are whole octets: a non-zero unused-bits count is malleability.
        Ok(([], cert))
            if cert.signature_value.unused_bits == 0
                && cert.public_key().subject_public_key.unused_bits == 0 =>
        {
            Ok(cert)
        }
        _ => Err(CertError::Malformed),
    }
}

/// Checks that `cert` (whose role is named `what` in errors) was issued by `issuer`: names chain,
/// the signature verifies with the issuer's key, and `cert` is valid at `now`.
pub fn check_issued_by(
    what: &'static str,
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> Result<(), CertError> {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(CertError::IssuerMismatch(what));
    }
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|_| CertError::BadSignature(what))?;
    check_valid_at(what, cert, now)
}

/// Checks that `cert` is valid at `now`.
pub fn check_valid_at(
    what: &'static str,
    cert: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> Result<(), CertError> {
    let v = cert.validity();
    if now < v.not_before.to_datetime() || now > v.not_after.to_datetime() {
        return Err(CertError::NotValidNow(what));
    }
    Ok(())
}

/// Checks a certificate directly under the root: profile, issued by the root, valid now; and the
/// root itself: OEM root profile, self-signed, valid now.
pub fn check_under_root(
    what: &'static str,
    cert_der: &[u8],
    profile: Profile,
    root_der: &[u8],
    now: OffsetDateTime,
) -> Result<(), CertError> {
    let root = parse(root_der)?;
    check_root(&root, now)?;
    let cert = parse(cert_der)?;
    profile.check(&cert)?;
    check_issued_by(what, &cert, &root, now)
}

/// Validates an end-entity certificate's chain to the OEM root with rustls-webpki (signatures,
/// names, validity at `now`, basic constraints, the required extended key usage), then checks the
/// end entity against its stamp profile.
pub fn validate_end_entity(
    what: &'static str,
    leaf_der: &[u8],
    intermediates: &[Vec<u8>],
    root_der: &[u8],
    profile: Profile,
    eku: crate::oid::RoleEku,
    now: OffsetDateTime,
) -> Result<(), CertError> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let leaf = parse(leaf_der)?;
    profile.check(&leaf)?;
    let root_cert = CertificateDer::from(root_der);
    let anchor = webpki::anchor_from_trusted_cert(&root_cert).map_err(|_| CertError::Malformed)?;
    let leaf_cert = CertificateDer::from(leaf_der);
    let ee = webpki::EndEntityCert::try_from(&leaf_cert).map_err(|_| CertError::Malformed)?;
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &inter,
        time,
        webpki::KeyUsage::required(eku.der_static()),
        None,
        None,
    )
    .map_err(|e| CertError::Chain(what, e.to_string()))?;
    Ok(())
}

/// Checks the OEM root: its profile, its self-signature and its validity at `now`.
pub fn check_root(root: &X509Certificate<'_>, now: OffsetDateTime) -> Result<(), CertError> {
    Profile::OemRoot.check(root)?;
    check_issued_by("OEM root", root, root, now)
}

/// The raw public key of a certificate (the SPKI BIT STRING), if it is a key type stamp's CA
/// roles use (ECDSA P-256/P-384, Ed25519).
pub fn raw_public_key(what: &'static str, cert: &X509Certificate<'_>) -> Result<Vec<u8>, CertError> {
    let spki = cert.public_key();
    crate::csr::classify_spki(spki.raw).map_err(|_| CertError::UnsupportedKey(what))?;
    Ok(spki.subject_public_key.data.to_vec())
}

/// PEM-encodes a DER certificate.
pub fn to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Decodes exactly one PEM block with the given label.
pub fn from_pem(text: &str, label: &'static str) -> Result<Vec<u8>, CertError> {
    let block = pem::parse(text).map_err(|_| CertError::NotPem(label))?;
    if block.tag() != label {
        return Err(CertError::NotPem(label));
    }
    Ok(block.into_contents())
}

/// Wraps a public key for use as a certificate's subject key.
pub fn subject_key(alg: &'static rcgen::SignatureAlgorithm, raw: &[u8]) -> RawPublicKey {
    RawPublicKey::new(alg, raw.to_vec())
}
