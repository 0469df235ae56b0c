//! Proof-of-possession ("verification") certificates for registering a CA with a cloud.
//!
//! AWS IoT (`register-ca-certificate --verification-cert`) and Azure IoT DPS (verified
//! certificates) both ask for a certificate whose subject CN is a code the cloud chose, signed by
//! the CA being registered: only the holder of the CA key can make it. The subject key is a
//! throwaway key the caller generates and forgets; nobody holds its private key afterwards, so
//! the certificate cannot authenticate anything.
//!
//! Profile: subject `CN=<code>` only; basic constraints CA:FALSE (critical); key usage
//! digitalSignature (critical); no extended key usage; subject and authority key identifiers;
//! valid for one day from `now`, cut to the CA's validity.

use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyIdMethod, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};

use crate::key::RcgenSigner;
use crate::profile::{Issuer, ProfileError, Serial};

/// Longest code accepted (an X.520 CN is at most 64 characters).
pub const MAX_CODE_LEN: usize = 64;

/// Why a verification certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerificationCertError {
    /// The code is not 1 to 64 letters, digits or hyphens.
    #[error("the registration code must be 1 to 64 letters, digits or hyphens")]
    BadCode,
    /// Building or signing failed.
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

/// Builds the verification certificate for `code` with subject key `spki_der`, signed by `ca`.
pub fn verification_cert(
    code: &str,
    spki_der: &[u8],
    now: OffsetDateTime,
    serial: Serial,
    ca: &Issuer<'_>,
) -> Result<Vec<u8>, VerificationCertError> {
    if code.is_empty()
        || code.len() > MAX_CODE_LEN
        || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(VerificationCertError::BadCode);
    }
    let (_, ca_cert) =
        x509_parser::parse_x509_certificate(ca.cert_der).map_err(|_| ProfileError::BadIssuer)?;
    if ca_cert.public_key().subject_public_key.data.as_ref() != ca.signer.public_key() {
        return Err(ProfileError::IssuerKeyMismatch(ca.signer.key_ref().to_owned()).into());
    }
    let not_before = now.replace_nanosecond(0).unwrap_or(now);
    let not_after = (not_before + Duration::days(1)).min(ca_cert.validity().not_after.to_datetime());
    if not_after <= not_before {
        return Err(ProfileError::EmptyValidity.into());
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, code);
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial.as_bytes()));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    let subject_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(ProfileError::from)?;
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca.cert_der.to_vec().into(), RcgenSigner(ca.signer))
        .map_err(ProfileError::from)?;
    Ok(params
        .signed_by(&subject_key, &issuer)
        .map_err(ProfileError::from)?
        .der()
        .to_vec())
}
