//! Certificate profiles: one per kind of certificate stamp issues.
//!
//! A profile fixes everything about a certificate except its subject key, the holder's names, its
//! validity and its serial number: key usage, basic constraints, extended key usage, key
//! identifiers. Call sites pick a [`Profile`]; they never add extensions themselves, and nothing a
//! request asks for is copied into a certificate.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, KeyIdMethod,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::key::{RawPublicKey, RcgenSigner, Signer};
use crate::oid::{self, RoleEku};
use crate::SiteId;

/// The kinds of certificate stamp issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// The OEM root CA: self-signed, anchors everything.
    OemRoot,
    /// The HQ authority's signing key (entitlements, firmware, registry exports).
    HqAuthoritySigning,
    /// The HQ authority's key-agreement key (audit bundles are encrypted to it).
    HqAuthorityKeyAgreement,
    /// A site's identity signing key (audit bundles, log checkpoints).
    SiteIdentitySigning,
    /// A site's identity key-agreement key (entitlements are encrypted to it).
    SiteIdentityKeyAgreement,
    /// A site's issuing CA, which signs device (and station) certificates; pathLenConstraint 0.
    SiteIssuingCa,
    /// A line station's TLS client certificate for the site service.
    Station,
    /// An HQ firmware-signing key (MCUboot images, ESP32 Secure Boot V2 signature blocks).
    FirmwareSigning,
    /// The site service's TLS server certificate (issued by the site issuing CA when it starts).
    SiteService,
}

/// Every profile, for tests and listings.
pub const ALL_PROFILES: [Profile; 9] = [
    Profile::OemRoot,
    Profile::HqAuthoritySigning,
    Profile::HqAuthorityKeyAgreement,
    Profile::SiteIdentitySigning,
    Profile::SiteIdentityKeyAgreement,
    Profile::SiteIssuingCa,
    Profile::Station,
    Profile::FirmwareSigning,
    Profile::SiteService,
];

/// Errors building or checking a certificate against a profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The organization name is empty, too long or has control characters.
    #[error("invalid organization name: use 1-64 printable characters")]
    BadOrganization,
    /// A station name is empty, too long or has characters outside a-z, 0-9, '-' and '.'.
    #[error("invalid station name {0:?}: use 1-64 characters of a-z, 0-9, '-' and '.'")]
    BadStationName(String),
    /// A firmware key name is empty, too long or has characters outside a-z, 0-9, '-' and '.'.
    #[error("invalid firmware key name {0:?}: use 1-64 characters of a-z, 0-9, '-' and '.'")]
    BadKeyName(String),
    /// A service name is neither an IP address nor a DNS name.
    #[error("invalid service name {0:?}: use an IP address or a DNS name")]
    BadServiceName(String),
    /// The requested validity is empty or ends before it starts.
    #[error("empty validity period")]
    EmptyValidity,
    /// The issuer certificate could not be parsed.
    #[error("issuer certificate is not a valid X.509 certificate")]
    BadIssuer,
    /// The issuer certificate's key is not the signer's key.
    #[error("the issuer certificate does not belong to the signing key {0}")]
    IssuerKeyMismatch(String),
    /// rcgen refused to build the certificate (or the key backend failed to sign).
    #[error("building the certificate failed")]
    Build(#[from] rcgen::Error),
    /// A certificate does not conform to the profile it should have.
    #[error("certificate does not match the {profile} profile: {what}")]
    Mismatch {
        /// The expected profile's name.
        profile: &'static str,
        /// What differs.
        what: &'static str,
    },
}

/// Whose certificate it is.
#[derive(Clone, Debug)]
pub enum Holder {
    /// The OEM's headquarters.
    Hq,
    /// A factory site.
    Site(SiteId),
    /// A line station of a site.
    Station {
        /// The site the station belongs to.
        site: SiteId,
        /// The station's name.
        name: String,
    },
    /// One of HQ's named firmware-signing keys.
    FirmwareKey(String),
}

/// A certificate serial number: 16 octets, positive, the first octet non-zero, so at least 120
/// random bits survive (RFC 5280 allows up to 20 octets; CA/B asks for 64 random bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serial([u8; 16]);

impl Serial {
    /// Makes a serial from 16 random bytes supplied by the caller.
    pub fn from_random(mut bytes: [u8; 16]) -> Self {
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 0x01;
        }
        Serial(bytes)
    }

    /// The serial's octets (big-endian, positive).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// The period a certificate is valid for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First instant of validity.
    pub not_before: OffsetDateTime,
    /// Last instant of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// `lifetime` starting at `now`, truncated to whole seconds (X.509 has no fractions).
    pub fn starting(now: OffsetDateTime, lifetime: Duration) -> Self {
        let now = now.replace_nanosecond(0).unwrap_or(now);
        Validity {
            not_before: now,
            not_after: now + lifetime,
        }
    }
}

impl Profile {
    /// The profile's name, as used in docs, files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Profile::OemRoot => "oem-root",
            Profile::HqAuthoritySigning => "hq-authority-signing",
            Profile::HqAuthorityKeyAgreement => "hq-authority-key-agreement",
            Profile::SiteIdentitySigning => "site-identity-signing",
            Profile::SiteIdentityKeyAgreement => "site-identity-key-agreement",
            Profile::SiteIssuingCa => "site-issuing-ca",
            Profile::Station => "station",
            Profile::FirmwareSigning => "firmware-signing",
            Profile::SiteService => "site-service",
        }
    }

    /// Default lifetime of a certificate of this profile.
    pub fn default_lifetime(self) -> Duration {
        let year = Duration::days(365);
        match self {
            Profile::OemRoot => year * 25,
            Profile::SiteIssuingCa => year * 15,
            // A firmware key lives as long as the devices that trust it (its digest is in eFuse).
            Profile::FirmwareSigning => year * 10,
            Profile::HqAuthoritySigning
            | Profile::HqAuthorityKeyAgreement
            | Profile::SiteIdentitySigning
            | Profile::SiteIdentityKeyAgreement => year * 5,
            Profile::Station => year * 2,
            Profile::SiteService => year,
        }
    }

    fn key_usages(self) -> Vec<KeyUsagePurpose> {
        match self {
            Profile::OemRoot | Profile::SiteIssuingCa => {
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
            }
            Profile::HqAuthoritySigning
            | Profile::SiteIdentitySigning
            | Profile::Station
            | Profile::FirmwareSigning
            | Profile::SiteService => vec![KeyUsagePurpose::DigitalSignature],
            Profile::HqAuthorityKeyAgreement | Profile::SiteIdentityKeyAgreement => {
                vec![KeyUsagePurpose::KeyAgreement]
            }
        }
    }

    /// `None` for end-entity certificates, `Some(path length)` for CAs (`Some(None)`: unlimited).
    fn ca_path_len(self) -> Option<Option<u8>> {
        match self {
            Profile::OemRoot => Some(Some(1)),
            Profile::SiteIssuingCa => Some(Some(0)),
            _ => None,
        }
    }

    fn ekus(self) -> Vec<Vec<u8>> {
        match self {
            Profile::OemRoot | Profile::SiteIssuingCa => vec![],
            Profile::HqAuthoritySigning | Profile::HqAuthorityKeyAgreement => {
                vec![RoleEku::HqAuthority.der_value()]
            }
            Profile::SiteIdentitySigning | Profile::SiteIdentityKeyAgreement => {
                vec![RoleEku::SiteIdentity.der_value()]
            }
            Profile::Station => vec![oid::CLIENT_AUTH.to_vec(), RoleEku::Station.der_value()],
            Profile::FirmwareSigning => vec![oid::CODE_SIGNING.to_vec()],
            Profile::SiteService => vec![oid::SERVER_AUTH.to_vec()],
        }
    }

    fn common_name(self, holder: &Holder, org: &str) -> String {
        match (self, holder) {
            (Profile::OemRoot, _) => format!("{org} OEM Root CA"),
            (Profile::HqAuthoritySigning, _) => "HQ authority (signing)".to_owned(),
            (Profile::HqAuthorityKeyAgreement, _) => "HQ authority (key agreement)".to_owned(),
            (Profile::Station, Holder::Station { name, .. }) => name.clone(),
            (Profile::SiteIdentitySigning, _) => "site identity (signing)".to_owned(),
            (Profile::SiteIdentityKeyAgreement, _) => "site identity (key agreement)".to_owned(),
            (Profile::SiteIssuingCa, _) => "site issuing CA".to_owned(),
            (Profile::SiteService, _) => "site service".to_owned(),
            (Profile::Station, _) => "station".to_owned(),
            (Profile::FirmwareSigning, Holder::FirmwareKey(name)) => format!("firmware signing {name}"),
            (Profile::FirmwareSigning, _) => "firmware signing".to_owned(),
        }
    }

    /// The subject name: `O=<org>`, `OU=<HQ | site ID>` (none for the root), `CN=<role>`.
    pub fn subject(self, org: &str, holder: &Holder) -> Result<DistinguishedName, ProfileError> {
        check_org(org)?;
        if let Holder::Station { name, .. } = holder {
            check_station_name(name)?;
        }
        if let Holder::FirmwareKey(name) = holder {
            check_firmware_key_name(name)?;
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, org);
        if self != Profile::OemRoot {
            let unit = match holder {
                Holder::Hq | Holder::FirmwareKey(_) => "HQ".to_owned(),
                Holder::Site(site) | Holder::Station { site, .. } => format!("site {site}"),
            };
            dn.push(DnType::OrganizationalUnitName, unit);
        }
        dn.push(DnType::CommonName, self.common_name(holder, org));
        Ok(dn)
    }

    fn params(
        self,
        subject: DistinguishedName,
        validity: Validity,
        serial: Serial,
    ) -> Result<CertificateParams, ProfileError> {
        if validity.not_after <= validity.not_before {
            return Err(ProfileError::EmptyValidity);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = subject;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial.as_bytes()));
        params.key_usages = self.key_usages();
        params.is_ca = match self.ca_path_len() {
            Some(Some(n)) => IsCa::Ca(BasicConstraints::Constrained(n)),
            Some(None) => IsCa::Ca(BasicConstraints::Unconstrained),
            None => IsCa::ExplicitNoCa,
        };
        params.use_authority_key_identifier_extension = self != Profile::OemRoot;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let ekus = self.ekus();
        if !ekus.is_empty() {
            let refs: Vec<&[u8]> = ekus.iter().map(Vec::as_slice).collect();
            params.custom_extensions.push(CustomExtension::from_oid_content(
                &[2, 5, 29, 37],
                oid::eku_extension_value(&refs),
            ));
        }
        Ok(params)
    }

    /// Checks that a parsed certificate has exactly this profile's key usage, basic constraints,
    /// extended key usage and key identifiers.
    pub fn check(self, cert: &X509Certificate<'_>) -> Result<(), ProfileError> {
        let fail = |what| {
            Err(ProfileError::Mismatch {
                profile: self.name(),
                what,
            })
        };
        if cert.version() != x509_parser::x509::X509Version::V3 {
            return fail("not an X.509 v3 certificate");
        }
        let mut seen_ku = false;
        let mut seen_bc = false;
        let mut seen_eku = false;
        let mut seen_ski = false;
        let mut seen_aki = false;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::KeyUsage(ku) => {
                    seen_ku = true;
                    if !ext.critical {
                        return fail("key usage is not critical");
                    }
                    let want = self.key_usages();
                    let has = |p: KeyUsagePurpose| want.contains(&p);
                    let ok = ku.digital_signature() == has(KeyUsagePurpose::DigitalSignature)
                        && ku.key_agreement() == has(KeyUsagePurpose::KeyAgreement)
                        && ku.key_cert_sign() == has(KeyUsagePurpose::KeyCertSign)
                        && ku.crl_sign() == has(KeyUsagePurpose::CrlSign)
                        && !ku.key_encipherment()
                        && !ku.data_encipherment()
                        && !ku.non_repudiation()
                        && !ku.encipher_only()
                        && !ku.decipher_only();
                    if !ok {
                        return fail("key usage differs");
                    }
                }
                ParsedExtension::BasicConstraints(bc) => {
                    seen_bc = true;
                    if !ext.critical {
                        return fail("basic constraints are not critical");
                    }
                    let want = self.ca_path_len();
                    let ok = match want {
                        None => !bc.ca,
                        Some(path_len) => bc.ca && bc.path_len_constraint == path_len.map(u32::from),
                    };
                    if !ok {
                        return fail("basic constraints differ");
                    }
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    seen_eku = true;
                    let mut got: Vec<Vec<u8>> = eku.other.iter().map(|o| o.as_bytes().to_vec()).collect();
                    if eku.client_auth {
                        got.push(oid::CLIENT_AUTH.to_vec());
                    }
                    if eku.code_signing {
                        got.push(oid::CODE_SIGNING.to_vec());
                    }
                    if eku.server_auth {
                        got.push(oid::SERVER_AUTH.to_vec());
                    }
                    let bad_std = eku.any || eku.email_protection || eku.time_stamping || eku.ocsp_signing;
                    let mut want = self.ekus();
                    want.sort();
                    got.sort();
                    if bad_std || got != want {
                        return fail("extended key usage differs");
                    }
                }
                ParsedExtension::SubjectKeyIdentifier(_) => seen_ski = true,
                ParsedExtension::AuthorityKeyIdentifier(_) => seen_aki = true,
                _ => {
                    if ext.critical {
                        return fail("unexpected critical extension");
                    }
                }
            }
        }
        if !seen_ku {
            return fail("no key usage");
        }
        if !seen_bc {
            return fail("no basic constraints");
        }
        if seen_eku == self.ekus().is_empty() {
            return fail("extended key usage present/absent against the profile");
        }
        if !seen_ski {
            return fail("no subject key identifier");
        }
        if !seen_aki && self != Profile::OemRoot {
            return fail("no authority key identifier");
        }
        Ok(())
    }
}

fn check_org(org: &str) -> Result<(), ProfileError> {
    if org.trim().is_empty() || org.chars().count() > 64 || org.chars().any(char::is_control) {
        return Err(ProfileError::BadOrganization);
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Checks a station name: 1-64 characters of a-z, 0-9, '-' and '.'.
pub fn check_station_name(name: &str) -> Result<(), ProfileError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ProfileError::BadStationName(name.chars().take(64).collect()))
    }
}

/// Checks a firmware key name: 1-64 characters of a-z, 0-9, '-' and '.', not starting with '.'
/// (it becomes part of a file name).
pub fn check_firmware_key_name(name: &str) -> Result<(), ProfileError> {
    if valid_name(name) && !name.starts_with('.') {
        Ok(())
    } else {
        Err(ProfileError::BadKeyName(name.chars().take(64).collect()))
    }
}

/// Creates the self-signed OEM root certificate (DER).
pub fn self_signed_root(
    signer: &dyn Signer,
    org: &str,
    validity: Validity,
    serial: Serial,
) -> Result<Vec<u8>, ProfileError> {
    let params = Profile::OemRoot.params(Profile::OemRoot.subject(org, &Holder::Hq)?, validity, serial)?;
    let cert = params.self_signed(&RcgenSigner(signer))?;
    Ok(cert.der().to_vec())
}

/// The CA that signs a certificate: its certificate and its key.
pub struct Issuer<'a> {
    /// The issuer's certificate (DER).
    pub cert_der: &'a [u8],
    /// The issuer's private key.
    pub signer: &'a dyn Signer,
}

/// Issues a certificate of `profile` for `subject_key`, signed by `issuer`.
///
/// The validity is cut to end no later than the issuer's, so every certificate lies inside its
/// issuer's validity.
pub fn issue(
    profile: Profile,
    org: &str,
    holder: &Holder,
    subject_key: &RawPublicKey,
    validity: Validity,
    serial: Serial,
    issuer: &Issuer<'_>,
) -> Result<Vec<u8>, ProfileError> {
    issue_inner(profile, org, holder, &[], subject_key, validity, serial, issuer)
}

/// A name a service certificate is valid for: a DNS name or an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceName {
    /// A DNS name (`localhost`, `site.factory.example`).
    Dns(String),
    /// An IP address (`127.0.0.1`, `::1`).
    Ip(std::net::IpAddr),
}

impl ServiceName {
    /// Parses an IP address, or else a DNS name in the preferred name syntax that RFC 5280
    /// (4.2.1.6) requires of a dNSName: at least two labels of 1-63 characters of a-z, 0-9 and
    /// '-' (not first or last), 253 characters at most, the last label not all digits.
    /// Single-label names (`localhost`, `stampsite`) are refused: certificate linters (pkilint)
    /// report them as an invalid dNSName, and public CAs may not certify them. `localhost` itself
    /// is written with [`ServiceName::parse_list`], for which it stands for the loopback
    /// addresses.
    pub fn parse(s: &str) -> Result<Self, ProfileError> {
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(ServiceName::Ip(ip));
        }
        let d = s.to_ascii_lowercase();
        if is_dns_name(&d) {
            return Ok(ServiceName::Dns(d));
        }
        let what: String = s.chars().take(64).collect();
        if !d.is_empty() && !d.contains('.') && is_label(&d) {
            return Err(ProfileError::BadServiceName(format!(
                "{what} (a single-label name is not a valid dNSName in a certificate: use a fully qualified name or an IP address; `localhost` stands for 127.0.0.1 and ::1)"
            )));
        }
        Err(ProfileError::BadServiceName(what))
    }

    /// Parses a list of names: each as [`ServiceName::parse`], except `localhost`, which stands
    /// for the loopback addresses 127.0.0.1 and ::1 (RFC 6761 6.3: it always resolves to them,
    /// and clients that connect to `localhost` check the certificate for the loopback address
    /// they reached). Duplicates are dropped, the order kept.
    pub fn parse_list(names: &[impl AsRef<str>]) -> Result<Vec<Self>, ProfileError> {
        let mut out: Vec<ServiceName> = Vec::with_capacity(names.len() + 1);
        for n in names {
            let n = n.as_ref();
            let parsed = if n.eq_ignore_ascii_case("localhost") || n.eq_ignore_ascii_case("localhost.") {
                vec![
                    ServiceName::Ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                    ServiceName::Ip(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
                ]
            } else {
                vec![ServiceName::parse(n)?]
            };
            for p in parsed {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }
}

/// One DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'.
fn is_label(l: &str) -> bool {
    (1..=63).contains(&l.len())
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A lower-case DNS name in preferred name syntax with at least two labels (the last not all
/// digits, so that it cannot be read as an IPv4 address).
fn is_dns_name(d: &str) -> bool {
    let labels: Vec<&str> = d.split('.').collect();
    d.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| is_label(l))
        && labels
            .last()
            .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()))
}

/// Issues a site service (TLS server) certificate for `names` (subject alternative names), signed by
/// the site issuing CA. Only [`Profile::SiteService`] certificates carry names.
#[allow(clippy::too_many_arguments)]
pub fn issue_site_service(
    org: &str,
    site: &SiteId,
    names: &[ServiceName],
    subject_key: &RawPublicKey,
    validity: Validity,
    serial: Serial,
    issuer: &Issuer<'_>,
) -> Result<Vec<u8>, ProfileError> {
    if names.is_empty() || names.len() > 32 {
        return Err(ProfileError::BadServiceName("give 1 to 32 names".into()));
    }
    let mut sans = Vec::with_capacity(names.len());
    for n in names {
        sans.push(match n {
            ServiceName::Ip(ip) => rcgen::SanType::IpAddress(*ip),
            ServiceName::Dns(d) if !is_dns_name(d) => {
                return Err(ProfileError::BadServiceName(d.chars().take(64).collect()))
            }
            ServiceName::Dns(d) => rcgen::SanType::DnsName(
                d.clone()
                    .try_into()
                    .map_err(|_| ProfileError::BadServiceName(d.chars().take(64).collect()))?,
            ),
        });
    }
    issue_inner(
        Profile::SiteService,
        org,
        &Holder::Site(site.clone()),
        &sans,
        subject_key,
        validity,
        serial,
        issuer,
    )
}

#[allow(clippy::too_many_arguments)]
fn issue_inner(
    profile: Profile,
    org: &str,
    holder: &Holder,
    sans: &[rcgen::SanType],
    subject_key: &RawPublicKey,
    validity: Validity,
    serial: Serial,
    issuer: &Issuer<'_>,
) -> Result<Vec<u8>, ProfileError> {
    let (_, issuer_cert) =
        x509_parser::parse_x509_certificate(issuer.cert_der).map_err(|_| ProfileError::BadIssuer)?;
    if issuer_cert.public_key().subject_public_key.data.as_ref() != issuer.signer.public_key() {
        return Err(ProfileError::IssuerKeyMismatch(
            issuer.signer.key_ref().to_owned(),
        ));
    }
    let issuer_not_after = issuer_cert.validity().not_after.to_datetime();
    let validity = Validity {
        not_before: validity.not_before,
        not_after: validity.not_after.min(issuer_not_after),
    };
    let mut params = profile.params(profile.subject(org, holder)?, validity, serial)?;
    params.subject_alt_names = sans.to_vec();
    let rcgen_issuer =
        rcgen::Issuer::from_ca_cert_der(&issuer.cert_der.to_vec().into(), RcgenSigner(issuer.signer))?;
    let cert = params.signed_by(subject_key, &rcgen_issuer)?;
    Ok(cert.der().to_vec())
}

#[cfg(test)]
pub(crate) mod tests;
