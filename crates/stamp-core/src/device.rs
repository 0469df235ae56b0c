//! Device certificates: built only from an entitlement's device profile, and checked against it.
//!
//! Subject `O=<organization>, OU=<oem_id>, CN=<product_id>, serialNumber=<device serial>`; key usage
//! digitalSignature (critical); basic constraints CA:FALSE (critical); extended key usage clientAuth;
//! subject and authority key identifiers; validity from issuance for the profile's days, cut to the
//! issuing CA's. From a CSR only the public key is used.

use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::cert::{self, CertError};
use crate::csr::KeyType;
use crate::entitlement::{DeviceKeyType, Grant};
use crate::key::{RcgenSigner, Signer};
use crate::profile::{Issuer, ProfileError, Serial};

/// The device key type of a checked subject key, if the profile names it.
pub fn device_key_type(kt: KeyType) -> Option<DeviceKeyType> {
    match kt {
        KeyType::P256 => Some(DeviceKeyType::P256),
        KeyType::P384 => Some(DeviceKeyType::P384),
        KeyType::Ed25519 => Some(DeviceKeyType::Ed25519),
        KeyType::Rsa(2048) => Some(DeviceKeyType::Rsa2048),
        KeyType::Rsa(3072) => Some(DeviceKeyType::Rsa3072),
        KeyType::Rsa(4096) => Some(DeviceKeyType::Rsa4096),
        KeyType::Rsa(_) => None,
    }
}

fn subject(grant: &Grant, device_serial: u64) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::OrganizationName,
        grant.device_profile.organization.as_str(),
    );
    dn.push(DnType::OrganizationalUnitName, grant.product.oem_id.as_str());
    dn.push(DnType::CommonName, grant.product.product_id.as_str());
    // id-at-serialNumber (2.5.4.5): a PrintableString (decimal digits always are one).
    let decimal = device_serial.to_string();
    let value = match rcgen::string::PrintableString::try_from(decimal.clone()) {
        Ok(p) => DnValue::PrintableString(p),
        Err(_) => DnValue::Utf8String(decimal),
    };
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), value);
    dn
}

/// Builds and signs a device certificate for `spki_der` (a checked CSR's key) under `grant`.
///
/// Parses the issuer's certificate on every call; to issue many certificates with one CA, make a
/// [`DeviceIssuer`] once (same certificates, without the parsing).
pub fn issue(
    grant: &Grant,
    device_serial: u64,
    spki_der: &[u8],
    now: OffsetDateTime,
    serial: Serial,
    issuer: &Issuer<'_>,
) -> Result<Vec<u8>, ProfileError> {
    let (_, ca) =
        x509_parser::parse_x509_certificate(issuer.cert_der).map_err(|_| ProfileError::BadIssuer)?;
    let rcgen_issuer =
        rcgen::Issuer::from_ca_cert_der(&issuer.cert_der.to_vec().into(), RcgenSigner(issuer.signer))?;
    build(
        grant,
        device_serial,
        spki_der,
        now,
        serial,
        ca.validity().not_after.to_datetime(),
        &rcgen_issuer,
    )
}

/// A site issuing CA prepared for issuing device certificates: its certificate is parsed once,
/// here, instead of twice per certificate as [`issue`] does. [`DeviceIssuer::issue`] makes exactly
/// the certificate [`issue`] makes.
pub struct DeviceIssuer {
    ca_not_after: OffsetDateTime,
    issuer: rcgen::Issuer<'static, RcgenSigner<std::sync::Arc<dyn Signer>>>,
}

impl DeviceIssuer {
    /// Parses the issuing CA's certificate (DER); `signer` is its key.
    pub fn new(ca_cert_der: &[u8], signer: Arc<dyn Signer>) -> Result<Self, ProfileError> {
        let (_, ca) =
            x509_parser::parse_x509_certificate(ca_cert_der).map_err(|_| ProfileError::BadIssuer)?;
        let ca_not_after = ca.validity().not_after.to_datetime();
        let issuer = rcgen::Issuer::from_ca_cert_der(&ca_cert_der.to_vec().into(), RcgenSigner(signer))?;
        Ok(DeviceIssuer { ca_not_after, issuer })
    }

    /// [`issue`] with this CA.
    pub fn issue(
        &self,
        grant: &Grant,
        device_serial: u64,
        spki_der: &[u8],
        now: OffsetDateTime,
        serial: Serial,
    ) -> Result<Vec<u8>, ProfileError> {
        build(
            grant,
            device_serial,
            spki_der,
            now,
            serial,
            self.ca_not_after,
            &self.issuer,
        )
    }
}

fn build<S: rcgen::SigningKey>(
    grant: &Grant,
    device_serial: u64,
    spki_der: &[u8],
    now: OffsetDateTime,
    serial: Serial,
    ca_not_after: OffsetDateTime,
    rcgen_issuer: &rcgen::Issuer<'_, S>,
) -> Result<Vec<u8>, ProfileError> {
    let not_before = now.replace_nanosecond(0).unwrap_or(now);
    let not_after =
        (not_before + Duration::days(i64::from(grant.device_profile.validity_days))).min(ca_not_after);
    if not_after <= not_before {
        return Err(ProfileError::EmptyValidity);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(grant, device_serial);
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial.as_bytes()));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    let subject_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)?;
    Ok(params.signed_by(&subject_key, rcgen_issuer)?.der().to_vec())
}

/// The device serial a renewal request names: the single `serialNumber` attribute of its subject
/// (`subject_der`, a DER Name), in canonical decimal.
pub fn serial_in_subject(subject_der: &[u8]) -> Option<u64> {
    use x509_parser::prelude::FromDer;
    let (rest, name) = x509_parser::x509::X509Name::from_der(subject_der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let serials: Vec<&str> = name
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
        .filter_map(|a| a.as_str().ok())
        .collect();
    match serials.as_slice() {
        [s] => canonical_serial(s),
        _ => None,
    }
}

/// A device serial written in canonical decimal, the only way stamp writes one: ASCII digits
/// only (no sign, no spaces), at least one, no leading zero (except "0" itself), at most
/// `u64::MAX`. Every reader of a device serial in a subject uses this, so one serial has
/// exactly one spelling ("+4", "04" or " 4" are not serial 4).
pub fn canonical_serial(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (!s.starts_with('0') || s == "0");
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// Whether a DER Name equals a certificate's subject: the same attributes, in the same order, with
/// the same values (string types may differ: a client may encode `O` as PrintableString or
/// UTF8String).
pub fn subject_matches(cert_der: &[u8], subject_der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let Ok(cert) = cert::parse(cert_der) else {
        return false;
    };
    let Ok(([], name)) = x509_parser::x509::X509Name::from_der(subject_der) else {
        return false;
    };
    let attrs = |n: &x509_parser::x509::X509Name<'_>| -> Option<Vec<(String, String)>> {
        n.iter()
            .map(|rdn| {
                let mut v = rdn.iter();
                match (v.next(), v.next()) {
                    (Some(a), None) => Some((a.attr_type().to_id_string(), a.as_str().ok()?.to_owned())),
                    _ => None,
                }
            })
            .collect()
    };
    match (attrs(cert.subject()), attrs(&name)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Domain separator of a renewal's proof of possession.
pub const RENEWAL_PROOF_CONTEXT: &[u8] = b"stamp renewal proof v1\0";

/// Longest proof of possession accepted (an RSA-8192 signature).
pub const MAX_RENEWAL_PROOF: usize = 1024;

/// What a device signs with its **current** key to ask for a certificate for a new key:
/// [`RENEWAL_PROOF_CONTEXT`] ‖ SHA-256(current certificate DER) ‖ SHA-256(new SubjectPublicKeyInfo
/// DER). Naming the current certificate makes a proof good for one renewal only (the next one
/// has another current certificate); naming the new key binds it to that key alone.
pub fn renewal_message(current_cert_sha256: &[u8; 32], new_spki_sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(RENEWAL_PROOF_CONTEXT.len() + 64);
    m.extend_from_slice(RENEWAL_PROOF_CONTEXT);
    m.extend_from_slice(current_cert_sha256);
    m.extend_from_slice(new_spki_sha256);
    m
}

/// Why a proof of possession was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    /// The renewal asks for a new key and carries no proof.
    #[error("a renewal for a new key needs a proof of possession signed with the device's current key")]
    Missing,
    /// Longer than [`MAX_RENEWAL_PROOF`].
    #[error("the proof of possession is longer than {MAX_RENEWAL_PROOF} bytes")]
    TooLarge,
    /// The current certificate's key is of no type stamp verifies.
    #[error("the current certificate's key cannot verify a proof")]
    UnsupportedKey,
    /// The signature does not verify with the current certificate's key.
    #[error("the proof of possession does not verify with the device's current key")]
    BadSignature,
}

/// Verifies a renewal's proof of possession: `proof` must be a signature over
/// [`renewal_message`] with the key `current_cert_der` certifies: ECDSA (DER-encoded, SHA-256 for
/// P-256, SHA-384 for P-384), Ed25519, or RSASSA-PKCS1-v1_5 with SHA-256.
pub fn verify_renewal_proof(
    current_cert_der: &[u8],
    new_spki_sha256: &[u8; 32],
    proof: &[u8],
) -> Result<(), ProofError> {
    use aws_lc_rs::signature::{self, VerificationAlgorithm};
    if proof.len() > MAX_RENEWAL_PROOF {
        return Err(ProofError::TooLarge);
    }
    let c = cert::parse(current_cert_der).map_err(|_| ProofError::UnsupportedKey)?;
    let spki = c.public_key();
    let alg: &'static dyn VerificationAlgorithm =
        match crate::csr::classify_spki(spki.raw).map_err(|_| ProofError::UnsupportedKey)? {
            KeyType::P256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyType::P384 => &signature::ECDSA_P384_SHA384_ASN1,
            KeyType::Ed25519 => &signature::ED25519,
            KeyType::Rsa(_) => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
    let message = renewal_message(&crate::fingerprint::sha256(current_cert_der), new_spki_sha256);
    signature::UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(&message, proof)
        .map_err(|_| ProofError::BadSignature)
}

/// What a checked device certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCertInfo {
    /// The device serial from the subject.
    pub device_serial: u64,
    /// The subject key's type.
    pub key_type: KeyType,
    /// SHA-256 of the SubjectPublicKeyInfo.
    pub public_key_sha256: [u8; 32],
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
}

/// Why a device certificate does not match its grant's profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceCertError {
    /// Not a certificate, or not issued by the issuing CA.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A field differs from the profile.
    #[error("device certificate does not match its profile: {0}")]
    Profile(&'static str),
}

/// Checks a device certificate: issued by `issuing_ca` (name and signature), subject, extensions and
/// key type exactly as `grant`'s device profile says. Validity is not compared with any clock.
pub fn check(
    der: &[u8],
    grant: &Grant,
    issuing_ca: &X509Certificate<'_>,
) -> Result<DeviceCertInfo, DeviceCertError> {
    let c = cert::parse(der)?;
    issued_by(&c, issuing_ca)?;
    check_profile(&Facts::of(&c), grant)
}

/// Proof that [`verify_issued`] accepted one certificate's issuer and signature under one
/// issuing CA, with what the rest of the check reads from it; [`check_issued`] takes it, for that
/// same certificate and CA, to finish [`check`].
#[derive(Clone, Debug)]
pub struct Issued {
    cert_sha256: [u8; 32],
    ca_key_sha256: [u8; 32],
    facts: Facts,
}

/// The first half of [`check`], which needs no grant: `der` is a certificate (strict DER),
/// names `issuing_ca` as its issuer and carries that CA's valid signature. A caller checking
/// many certificates (reconciliation) runs this, the expensive half, in parallel, then
/// [`check_issued`] in order.
pub fn verify_issued(der: &[u8], issuing_ca: &X509Certificate<'_>) -> Result<Issued, DeviceCertError> {
    let c = cert::parse(der)?;
    issued_by(&c, issuing_ca)?;
    Ok(Issued {
        cert_sha256: crate::fingerprint::sha256(der),
        ca_key_sha256: crate::fingerprint::sha256(issuing_ca.public_key().raw),
        facts: Facts::of(&c),
    })
}

/// The second half of [`check`]: the same result as `check(der, grant, issuing_ca)`, given what
/// [`verify_issued`] returned for this `der` and `issuing_ca` (its error is returned as is). An
/// [`Issued`] made for another certificate or CA is refused as a bad signature.
pub fn check_issued(
    der: &[u8],
    grant: &Grant,
    issuing_ca: &X509Certificate<'_>,
    issued: Result<Issued, DeviceCertError>,
) -> Result<DeviceCertInfo, DeviceCertError> {
    let issued = issued?;
    if issued.cert_sha256 != crate::fingerprint::sha256(der)
        || issued.ca_key_sha256 != crate::fingerprint::sha256(issuing_ca.public_key().raw)
    {
        return Err(CertError::BadSignature("device").into());
    }
    check_profile(&issued.facts, grant)
}

fn issued_by(c: &X509Certificate<'_>, issuing_ca: &X509Certificate<'_>) -> Result<(), DeviceCertError> {
    if c.issuer().as_raw() != issuing_ca.subject().as_raw() {
        return Err(CertError::IssuerMismatch("device").into());
    }
    c.verify_signature(Some(issuing_ca.public_key()))
        .map_err(|_| CertError::BadSignature("device"))?;
    Ok(())
}

/// A subject attribute as the profile check reads it: its first value as text (`None` if absent
/// or not a string) and whether another value follows.
#[derive(Clone, Debug)]
struct Named {
    first: Option<String>,
    more: bool,
}

impl Named {
    fn of<'a>(mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>) -> Named {
        let first = values.next().and_then(|v| v.as_str().ok().map(str::to_owned));
        Named {
            first,
            more: values.next().is_some(),
        }
    }

    /// Exactly one value, equal to `want`.
    fn is(&self, want: &str) -> bool {
        self.first.as_deref() == Some(want) && !self.more
    }
}

/// Everything the profile check reads from a certificate, taken before any grant is known.
#[derive(Clone, Debug)]
struct Facts {
    organization: Named,
    oem_id: Named,
    product_id: Named,
    /// The serialNumber attribute as a device serial (`None`: missing, repeated or not canonical).
    device_serial: Option<u64>,
    /// Subject attributes in all.
    attributes: usize,
    /// `None` if an unexpected extension is present; else whether key usage, basic
    /// constraints, extended key usage and both key identifiers are all as the profile says.
    extensions: Option<bool>,
    key_type: Option<KeyType>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    public_key_sha256: [u8; 32],
}

impl Facts {
    fn of(c: &X509Certificate<'_>) -> Facts {
        let serials: Vec<_> = c
            .subject()
            .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
            .filter_map(|a| a.as_str().ok())
            .collect();
        let device_serial = match serials.as_slice() {
            [s] => canonical_serial(s),
            _ => None,
        };
        let spki = c.public_key().raw;
        Facts {
            organization: Named::of(c.subject().iter_organization()),
            oem_id: Named::of(c.subject().iter_organizational_unit()),
            product_id: Named::of(c.subject().iter_common_name()),
            device_serial,
            attributes: c.subject().iter().map(|rdn| rdn.iter().count()).sum(),
            extensions: extensions(c),
            key_type: crate::csr::classify_spki(spki).ok(),
            not_before: c.validity().not_before.to_datetime(),
            not_after: c.validity().not_after.to_datetime(),
            public_key_sha256: crate::fingerprint::sha256(spki),
        }
    }
}

/// See [`Facts::extensions`].
fn extensions(c: &X509Certificate<'_>) -> Option<bool> {
    let (mut ku, mut bc, mut eku, mut ski, mut aki) = (false, false, false, false, false);
    for ext in c.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::KeyUsage(k) => {
                ku = ext.critical && k.flags == 1; // digitalSignature only
            }
            ParsedExtension::BasicConstraints(b) => bc = ext.critical && !b.ca,
            ParsedExtension::ExtendedKeyUsage(e) => {
                eku = e.client_auth
                    && !e.any
                    && !e.server_auth
                    && !e.code_signing
                    && !e.email_protection
                    && !e.time_stamping
                    && !e.ocsp_signing
                    && e.other.is_empty()
            }
            ParsedExtension::SubjectKeyIdentifier(_) => ski = true,
            ParsedExtension::AuthorityKeyIdentifier(_) => aki = true,
            _ => return None,
        }
    }
    Some(ku && bc && eku && ski && aki)
}

/// Subject, extensions, key type and validity length against the grant's device profile, in
/// this order (the first mismatch is the one reported).
fn check_profile(f: &Facts, grant: &Grant) -> Result<DeviceCertInfo, DeviceCertError> {
    use DeviceCertError::Profile as P;
    if !f.organization.is(&grant.device_profile.organization) {
        return Err(P("organization"));
    }
    if !f.oem_id.is(&grant.product.oem_id) {
        return Err(P("OEM ID"));
    }
    if !f.product_id.is(&grant.product.product_id) {
        return Err(P("product ID"));
    }
    let device_serial = f.device_serial.ok_or(P("serialNumber"))?;
    if f.attributes != 4 {
        return Err(P("extra subject attributes"));
    }
    match f.extensions {
        None => return Err(P("unexpected extension")),
        Some(false) => {
            return Err(P(
                "key usage, basic constraints, extended key usage or key identifiers",
            ))
        }
        Some(true) => {}
    }
    let key_type = f.key_type.ok_or(P("public key"))?;
    match device_key_type(key_type) {
        Some(t) if grant.device_profile.key_types.contains(&t) => {}
        _ => return Err(P("key type not allowed")),
    }
    if f.not_after - f.not_before > Duration::days(i64::from(grant.device_profile.validity_days)) {
        return Err(P("validity longer than the profile allows"));
    }
    Ok(DeviceCertInfo {
        device_serial,
        key_type,
        public_key_sha256: f.public_key_sha256,
        not_before: f.not_before,
        not_after: f.not_after,
    })
}

#[cfg(test)]
mod tests;
