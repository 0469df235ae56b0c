//! The genuine-device decision, over a verified registry.

use std::collections::{BTreeMap, HashMap};

use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use super::{
    Registry, RegistryEntitlement, RegistryError, RegistrySite, MAX_DEVICE_CHAIN, MAX_ENTITLEMENTS,
    MAX_RANGES, MAX_REVOCATIONS, MAX_SITES,
};
use crate::cert;
use crate::entitlement::{Grant, Status};
use crate::profile::Profile;

/// A registry whose signature verified: the only value that judges devices.
#[derive(Debug)]
pub struct VerifiedRegistry {
    reg: Registry,
    root_sha256: [u8; 32],
    /// Devices sorted by serial.
    devices: Vec<(u64, [u8; 32])>,
    /// Superseded certificates (SHA-256), with their serials.
    superseded: HashMap<[u8; 32], u64>,
    revoked_serials: HashMap<u64, String>,
    revoked_certs: HashMap<[u8; 32], String>,
    revoked_entitlements: HashMap<String, String>,
    revoked_sites: HashMap<String, String>,
    /// Per site index: its entitlements' indexes.
    site_entitlements: Vec<Vec<usize>>,
}

/// How the registry judges a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// HQ reconciled this very certificate: genuine.
    Registered,
    /// Issued by an enrolled site under an active entitlement, its serial in range above the
    /// entitlement's reconciled serial frontier, and contradicted by nothing: admitted until the
    /// next registry says otherwise (a gateway holds one public key per such serial).
    Provisional,
    /// Refused; see the reason.
    Refused,
}

impl Standing {
    /// Its name, as serialized: `registered`, `provisional`, `refused`.
    pub fn name(self) -> &'static str {
        match self {
            Standing::Registered => "registered",
            Standing::Provisional => "provisional",
            Standing::Refused => "refused",
        }
    }
}

/// Why a device was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Reason {
    /// The chain is not PEM/DER certificates, is empty or too long.
    MalformedChain,
    /// The device certificate was not issued by any site issuing CA in the registry.
    UnknownIssuer,
    /// Path validation to the OEM root through the site issuing CA failed.
    ChainInvalid,
    /// The device certificate (or its CA) has expired.
    Expired,
    /// The device certificate (or its CA) is not valid yet.
    NotYetValid,
    /// The certificate is not a client-authentication end entity (an EKU without clientAuth, or
    /// a CA). A certificate with no EKU at all fails the profile check instead.
    WrongUsage,
    /// The certificate does not match its entitlement's device profile.
    ProfileMismatch,
    /// The device serial is in no range HQ allocated to the issuing site.
    SerialOutOfRange,
    /// HQ revoked the site.
    SiteRevoked,
    /// HQ revoked the entitlement.
    EntitlementRevoked,
    /// HQ suspended the entitlement: its devices HQ has not reconciled are not admitted
    /// provisionally (registered ones still are).
    EntitlementSuspended,
    /// HQ registered a renewal of this device: this certificate was replaced (one live
    /// certificate per serial).
    Superseded,
    /// HQ revoked the device (by serial or certificate).
    Revoked,
    /// HQ registered this serial with a different certificate: a clone.
    Clone,
    /// Its serial is at or below its entitlement's reconciled serial frontier (so the site had
    /// handed it out before the last entry HQ reconciled), yet it is not among HQ's genuine
    /// devices: the site left it out of its log, or HQ found it broke a rule.
    NotInLog,
    /// Not reconciled by HQ within the registry's provisional period after it was issued: the
    /// site stopped exporting its log, or the device is not in it.
    NotReconciled,
}

impl Reason {
    /// The reason's code, as it appears in JSON.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MalformedChain => "malformed-chain",
            Reason::UnknownIssuer => "unknown-issuer",
            Reason::ChainInvalid => "chain-invalid",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not-yet-valid",
            Reason::WrongUsage => "wrong-usage",
            Reason::ProfileMismatch => "profile-mismatch",
            Reason::SerialOutOfRange => "serial-out-of-range",
            Reason::SiteRevoked => "site-revoked",
            Reason::EntitlementRevoked => "entitlement-revoked",
            Reason::EntitlementSuspended => "entitlement-suspended",
            Reason::Superseded => "superseded",
            Reason::Revoked => "revoked",
            Reason::Clone => "clone",
            Reason::NotInLog => "not-in-log",
            Reason::NotReconciled => "not-reconciled",
        }
    }
}

/// The decision on one device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    /// Genuine (registered or provisional).
    pub genuine: bool,
    /// Registered, provisional or refused.
    pub standing: Standing,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Details for people.
    pub detail: String,
    /// The issuing site, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    /// The entitlement whose range holds the serial, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entitlement_id: Option<String>,
    /// The device serial, once read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_serial: Option<u64>,
    /// SHA-256 of the device certificate (hex), once read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
    /// SHA-256 of the device certificate's SubjectPublicKeyInfo (hex), once read: what a
    /// gateway binds a provisional serial to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_sha256: Option<String>,
}

impl Verdict {
    fn refused(reason: Reason, detail: impl Into<String>) -> Self {
        Verdict {
            genuine: false,
            standing: Standing::Refused,
            reason: Some(reason),
            detail: detail.into(),
            site_id: None,
            entitlement_id: None,
            device_serial: None,
            certificate_sha256: None,
            public_key_sha256: None,
        }
    }
}

fn hash32(b: &[u8]) -> Result<[u8; 32], RegistryError> {
    b.try_into()
        .map_err(|_| RegistryError::Malformed("a SHA-256 is not 32 bytes"))
}

impl VerifiedRegistry {
    pub(super) fn new(reg: Registry, root_sha256: [u8; 32]) -> Result<Self, RegistryError> {
        use RegistryError::Malformed;
        if reg.sites.len() > MAX_SITES
            || reg.entitlements.len() > MAX_ENTITLEMENTS
            || reg.revocations.len() > MAX_REVOCATIONS
            || reg
                .entitlements
                .iter()
                .any(|e| e.serial_ranges.len() > MAX_RANGES)
        {
            return Err(Malformed(
                "more sites, entitlements, ranges or revocations than allowed",
            ));
        }
        let root = cert::parse(&reg.root)?;
        let mut site_index = BTreeMap::new();
        for (i, s) in reg.sites.iter().enumerate() {
            let ca = cert::parse(&s.issuing_ca)?;
            Profile::SiteIssuingCa.check(&ca).map_err(cert::CertError::from)?;
            if ca.issuer().as_raw() != root.subject().as_raw()
                || ca.verify_signature(Some(root.public_key())).is_err()
            {
                return Err(Malformed("a site issuing CA is not issued by the OEM root"));
            }
            if site_index.insert(s.site_id.clone(), i).is_some() {
                return Err(Malformed("a site appears twice"));
            }
        }
        let mut site_entitlements = vec![Vec::new(); reg.sites.len()];
        for (i, e) in reg.entitlements.iter().enumerate() {
            let s = site_index
                .get(&e.site_id)
                .ok_or(Malformed("an entitlement names a site not in the registry"))?;
            if e.serial_ranges.iter().any(|r| r.last < r.first) {
                return Err(Malformed("a serial range ends before it starts"));
            }
            if let Some(f) = e.serial_frontier {
                if !e.serial_ranges.iter().any(|r| (r.first..=r.last).contains(&f)) {
                    return Err(Malformed(
                        "a serial frontier is in none of its entitlement's ranges",
                    ));
                }
            }
            site_entitlements[*s].push(i);
        }
        let mut devices = Vec::with_capacity(reg.devices.len());
        for d in &reg.devices {
            devices.push((d.0, hash32(&d.1)?));
        }
        devices.sort_unstable();
        let mut superseded = HashMap::with_capacity(reg.superseded.len());
        for d in &reg.superseded {
            superseded.insert(hash32(&d.1)?, d.0);
        }
        let mut rs = HashMap::new();
        let mut rc = HashMap::new();
        let mut re = HashMap::new();
        let mut rsite = HashMap::new();
        for r in &reg.revocations {
            let reason = r.reason.chars().take(256).collect::<String>();
            match (
                r.device_serial,
                &r.certificate_sha256,
                &r.entitlement_id,
                &r.site_id,
            ) {
                (Some(n), None, None, None) => {
                    rs.insert(n, reason);
                }
                (None, Some(h), None, None) => {
                    rc.insert(hash32(h)?, reason);
                }
                (None, None, Some(e), None) => {
                    re.insert(e.clone(), reason);
                }
                (None, None, None, Some(s)) => {
                    rsite.insert(s.clone(), reason);
                }
                _ => return Err(Malformed("a revocation must name exactly one thing")),
            }
        }
        let mut reg = reg;
        reg.devices = Vec::new(); // kept once, in `devices`
        reg.superseded = Vec::new(); // and in `superseded`
        Ok(VerifiedRegistry {
            reg,
            root_sha256,
            devices,
            superseded,
            revoked_serials: rs,
            revoked_certs: rc,
            revoked_entitlements: re,
            revoked_sites: rsite,
            site_entitlements,
        })
    }

    /// SHA-256 of the OEM root the registry is signed under.
    pub fn root_sha256(&self) -> &[u8; 32] {
        &self.root_sha256
    }

    /// The OEM root (DER).
    pub fn root_der(&self) -> &[u8] {
        &self.reg.root
    }

    /// HQ's export sequence.
    pub fn sequence(&self) -> u64 {
        self.reg.sequence
    }

    /// When HQ made it (Unix seconds).
    pub fn issued_at(&self) -> i64 {
        self.reg.issued_at
    }

    /// The OEM's name.
    pub fn org(&self) -> &str {
        &self.reg.org
    }

    /// The sites.
    pub fn sites(&self) -> &[RegistrySite] {
        &self.reg.sites
    }

    /// The entitlements.
    pub fn entitlements(&self) -> &[RegistryEntitlement] {
        &self.reg.entitlements
    }

    /// Number of registered devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Number of revocations.
    pub fn revocation_count(&self) -> usize {
        self.reg.revocations.len()
    }

    /// Whether HQ registered a device with this serial (any certificate).
    pub fn is_registered(&self, serial: u64) -> bool {
        !self.registered(serial).is_empty()
    }

    fn registered(&self, serial: u64) -> &[(u64, [u8; 32])] {
        let lo = self.devices.partition_point(|d| d.0 < serial);
        let hi = self.devices.partition_point(|d| d.0 <= serial);
        &self.devices[lo..hi]
    }

    /// Decides whether the device presenting `chain` (DER, leaf first; the rest is ignored: the
    /// verifier uses the registry's site issuing CAs) is genuine at `now`.
    pub fn check_device(&self, chain: &[Vec<u8>], now: OffsetDateTime) -> Verdict {
        let Some(leaf_der) = chain.first().filter(|_| chain.len() <= MAX_DEVICE_CHAIN) else {
            return Verdict::refused(
                Reason::MalformedChain,
                "expected 1 to 4 certificates, the device's first",
            );
        };
        let Ok(leaf) = cert::parse(leaf_der) else {
            return Verdict::refused(
                Reason::MalformedChain,
                "the device certificate is not valid DER X.509",
            );
        };
        let cert_sha = crate::fingerprint::sha256(leaf_der);
        let mut v = self.judge(leaf_der, &leaf, &cert_sha, now);
        v.certificate_sha256 = Some(hex::encode(cert_sha));
        v.public_key_sha256 = Some(hex::encode(crate::fingerprint::sha256(leaf.public_key().raw)));
        v
    }

    fn judge(
        &self,
        leaf_der: &[u8],
        leaf: &X509Certificate<'_>,
        cert_sha: &[u8; 32],
        now: OffsetDateTime,
    ) -> Verdict {
        // 1. The issuing site: a registry site CA whose subject is the leaf's issuer.
        let candidates: Vec<usize> = self
            .reg
            .sites
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                cert::parse(&s.issuing_ca).is_ok_and(|ca| ca.subject().as_raw() == leaf.issuer().as_raw())
            })
            .map(|(i, _)| i)
            .collect();
        if candidates.is_empty() {
            return Verdict::refused(
                Reason::UnknownIssuer,
                format!("issuer {} is no site issuing CA HQ enrolled", leaf.issuer()),
            );
        }
        // 2. Path validation through that CA to the root, for client authentication.
        let mut last_err = None;
        let mut site = None;
        for i in candidates {
            match self.validate_path(leaf_der, &self.reg.sites[i].issuing_ca, now) {
                Ok(()) => {
                    site = Some(i);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some(si) = site else {
            let (reason, detail) = last_err.unwrap_or((Reason::ChainInvalid, String::new()));
            return Verdict::refused(reason, detail);
        };
        let s = &self.reg.sites[si];
        let with_site = |mut v: Verdict| {
            v.site_id = Some(s.site_id.clone());
            v
        };
        if let Some(r) = self.revoked_sites.get(&s.site_id) {
            return with_site(Verdict::refused(
                Reason::SiteRevoked,
                format!("site {} revoked: {r}", s.site_id),
            ));
        }
        // 3. The serial, and the entitlement whose range holds it.
        let Some(serial) = subject_serial(leaf) else {
            return with_site(Verdict::refused(
                Reason::ProfileMismatch,
                "the subject has no single serialNumber in canonical decimal (digits only, no sign, spaces or leading zeros)",
            ));
        };
        let with_serial = |mut v: Verdict| {
            v.site_id = Some(s.site_id.clone());
            v.device_serial = Some(serial);
            v
        };
        let Some(ei) = self.site_entitlements[si].iter().copied().find(|&ei| {
            self.reg.entitlements[ei]
                .serial_ranges
                .iter()
                .any(|r| (r.first..=r.last).contains(&serial))
        }) else {
            return with_serial(Verdict::refused(
                Reason::SerialOutOfRange,
                format!(
                    "serial {serial} is in no range HQ allocated to site {}",
                    s.site_id
                ),
            ));
        };
        let e = &self.reg.entitlements[ei];
        let with_ent = |mut v: Verdict| {
            v = with_serial(v);
            v.entitlement_id = Some(e.entitlement_id.clone());
            v
        };
        // 4. The device profile of that entitlement.
        let Ok(ca) = cert::parse(&s.issuing_ca) else {
            return with_ent(Verdict::refused(Reason::ChainInvalid, "unreadable issuing CA"));
        };
        if let Err(err) = crate::device::check(leaf_der, &grant_of(e), &ca) {
            return with_ent(Verdict::refused(Reason::ProfileMismatch, err.to_string()));
        }
        // 5. Revocations.
        if let Some(r) = self.revoked_entitlements.get(&e.entitlement_id) {
            return with_ent(Verdict::refused(
                Reason::EntitlementRevoked,
                format!("entitlement {} revoked: {r}", e.entitlement_id),
            ));
        }
        if let Some(r) = self
            .revoked_serials
            .get(&serial)
            .or_else(|| self.revoked_certs.get(cert_sha))
        {
            return with_ent(Verdict::refused(Reason::Revoked, format!("device revoked: {r}")));
        }
        // 6. Registered, a clone, skipped the log, or provisional (only for an active
        // entitlement, above its reconciled serial frontier, within the provisional period).
        let known = self.registered(serial);
        if known.iter().any(|d| &d.1 == cert_sha) {
            return with_ent(Verdict {
                genuine: true,
                standing: Standing::Registered,
                reason: None,
                detail: "HQ reconciled this device".into(),
                ..Verdict::refused(Reason::Clone, "")
            });
        }
        if !known.is_empty() {
            if self.superseded.get(cert_sha) == Some(&serial) {
                return with_ent(Verdict::refused(
                    Reason::Superseded,
                    format!("a renewal HQ reconciled replaced this certificate of serial {serial}"),
                ));
            }
            return with_ent(Verdict::refused(
                Reason::Clone,
                format!("HQ registered serial {serial} with another certificate"),
            ));
        }
        if let Some(frontier) = e.serial_frontier.filter(|f| serial <= *f) {
            return with_ent(Verdict::refused(
                Reason::NotInLog,
                format!(
                    "serial {serial} is at or below {frontier}, the highest serial HQ reconciled as issued under {} \
                     (serials are handed out in order), but it is not among HQ's genuine devices: \
                     the site left it out of its log or HQ found it broke a rule",
                    e.entitlement_id
                ),
            ));
        }
        match e.status {
            Status::Active => {}
            Status::Suspended => {
                return with_ent(Verdict::refused(
                    Reason::EntitlementSuspended,
                    format!(
                        "entitlement {} is suspended: only devices HQ reconciled are admitted",
                        e.entitlement_id
                    ),
                ))
            }
            Status::Revoked => {
                return with_ent(Verdict::refused(
                    Reason::EntitlementRevoked,
                    format!(
                        "entitlement {} is revoked: no device HQ has not reconciled is admitted",
                        e.entitlement_id
                    ),
                ))
            }
        }
        let days = self.reg.provisional_days;
        if days > 0 && now > leaf.validity().not_before.to_datetime() + time::Duration::days(i64::from(days))
        {
            return with_ent(Verdict::refused(
                Reason::NotReconciled,
                format!(
                    "issued more than {days} days ago and still not reconciled by HQ (the registry's provisional period)"
                ),
            ));
        }
        with_ent(Verdict {
            genuine: true,
            standing: Standing::Provisional,
            reason: None,
            detail: match e.serial_frontier {
                Some(f) => format!(
                    "in range above {f}, the highest serial HQ reconciled under {}; not yet reconciled",
                    e.entitlement_id
                ),
                None => format!(
                    "in range of {}, under which HQ has reconciled no device yet; not yet reconciled",
                    e.entitlement_id
                ),
            },
            ..Verdict::refused(Reason::Clone, "")
        })
    }

    fn validate_path(
        &self,
        leaf_der: &[u8],
        ca_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), (Reason, String)> {
        validate_path(
            leaf_der,
            &[ca_der],
            &[self.reg.root.as_slice()],
            PathUsage::ClientAuth,
            now,
        )
        .map_err(|e| match e {
            PathError::Anchor(e) => (Reason::ChainInvalid, format!("OEM root unusable: {e}")),
            PathError::Leaf(e) => (Reason::MalformedChain, format!("device certificate: {e}")),
            PathError::Path(e) => {
                let reason = match &e {
                    webpki::Error::CertExpired { .. } => Reason::Expired,
                    webpki::Error::CertNotValidYet { .. } => Reason::NotYetValid,
                    webpki::Error::RequiredEkuNotFoundContext(_) | webpki::Error::CaUsedAsEndEntity => {
                        Reason::WrongUsage
                    }
                    #[allow(deprecated)]
                    webpki::Error::RequiredEkuNotFound => Reason::WrongUsage,
                    _ => Reason::ChainInvalid,
                };
                (reason, format!("path validation: {e}"))
            }
        })
    }
}

/// The extended key usage a path is validated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathUsage {
    /// id-kp-clientAuth: what the verifier requires of a device certificate.
    ClientAuth,
    /// id-kp-serverAuth.
    ServerAuth,
}

/// Why [`validate_path`] refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// A trust anchor is not a usable certificate.
    #[error("trust anchor: {0}")]
    Anchor(webpki::Error),
    /// The leaf is not a usable end-entity certificate.
    #[error("end-entity certificate: {0}")]
    Leaf(webpki::Error),
    /// No valid path from the leaf to an anchor.
    #[error("path validation: {0}")]
    Path(webpki::Error),
}

/// The verifier's path validation (rustls-webpki): `leaf_der` must chain through some of
/// `intermediates` to one of `anchors_der` at `now`, for `usage`. No revocation checking and no
/// name checking here; stamp's device profile checks come on top of it in the verifier.
pub fn validate_path(
    leaf_der: &[u8],
    intermediates: &[&[u8]],
    anchors_der: &[&[u8]],
    usage: PathUsage,
    now: OffsetDateTime,
) -> Result<(), PathError> {
    let roots: Vec<CertificateDer<'_>> = anchors_der.iter().map(|d| CertificateDer::from(*d)).collect();
    let anchors = roots
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PathError::Anchor)?;
    let leaf = CertificateDer::from(leaf_der);
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(PathError::Leaf)?;
    let inter: Vec<CertificateDer<'_>> = intermediates.iter().map(|d| CertificateDer::from(*d)).collect();
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    let usage = match usage {
        PathUsage::ClientAuth => webpki::KeyUsage::client_auth(),
        PathUsage::ServerAuth => webpki::KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        time,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(PathError::Path)
}

/// The device serial in the subject: its single `serialNumber`, in canonical decimal
/// ([`crate::device::canonical_serial`]); anything else is no serial (`profile-mismatch`).
fn subject_serial(c: &X509Certificate<'_>) -> Option<u64> {
    crate::device::serial_in_subject(c.subject().as_raw())
}

/// The grant fields `device::check` reads, from a registry entitlement.
fn grant_of(e: &RegistryEntitlement) -> Grant {
    Grant {
        entitlement_id: e.entitlement_id.clone(),
        product: e.product.clone(),
        quota: 0,
        rate_limits: BTreeMap::new(),
        not_before: 0,
        not_after: 0,
        serial_ranges: e.serial_ranges.clone(),
        device_profile: e.device_profile.clone(),
        stations: Vec::new(),
        device_data: BTreeMap::new(),
        device_keys: Vec::new(),
        firmware: Vec::new(),
        renewal_limit: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::entitlement::SerialRange;
    use crate::fingerprint::sha256;
    use crate::key::{SignatureAlgorithm, Signer};
    use crate::profile::tests::TestSigner;
    use crate::profile::{Holder, ServiceName, Validity};
    use crate::registry::tests::{days, grant, serial, site, Ca, Pki, NOW, P256};
    use crate::registry::Revocation;
    use crate::registry::{RegisteredDevice, RegistryEntitlement, MAX_DEVICE_CHAIN};
    use crate::SiteId;
    use serde_bytes::ByteBuf;

    #[test]
    fn standing_names_are_their_serialized_names() {
        for st in [Standing::Registered, Standing::Provisional, Standing::Refused] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.name());
        }
    }

    /// A device certificate for serial `n` under `g`, issued by `ca` at `not_before`.
    fn device(ca: &Ca, g: &Grant, n: u64, not_before: OffsetDateTime) -> Vec<u8> {
        device_with_key(ca, g, n, not_before, &TestSigner::new(P256))
    }

    fn device_with_key(ca: &Ca, g: &Grant, n: u64, not_before: OffsetDateTime, key: &TestSigner) -> Vec<u8> {
        crate::device::issue(g, n, &key.spki_der(), not_before, serial(), &ca.issuer()).unwrap()
    }

    /// A certificate shaped like a device's (subject, key usage, basic constraints, key
    /// identifiers) for serial `n`, issued by `ca` at NOW - 5 days, with the given extended key
    /// usages (none: no extension), built with rcgen.
    fn device_shaped(ca: &Ca, n: u64, ekus: Vec<rcgen::ExtendedKeyUsagePurpose>) -> Vec<u8> {
        device_shaped_serial(ca, &n.to_string(), ekus)
    }

    /// [`device_shaped`] with the subject serialNumber written as `serial_text`.
    fn device_shaped_serial(
        ca: &Ca,
        serial_text: &str,
        ekus: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> Vec<u8> {
        use rcgen::{
            CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyIdMethod, KeyUsagePurpose,
        };
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Acme");
        dn.push(DnType::OrganizationalUnitName, "acme");
        dn.push(DnType::CommonName, "thermo-2");
        dn.push(
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            DnValue::PrintableString(serial_text.try_into().unwrap()),
        );
        let mut p = CertificateParams::default();
        p.distinguished_name = dn;
        p.not_before = NOW - days(5);
        p.not_after = NOW + days(300);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(serial().as_bytes()));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = ekus;
        p.is_ca = IsCa::ExplicitNoCa;
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&ca.der.clone().into(), crate::key::RcgenSigner(&ca.key))
                .unwrap();
        let key = TestSigner::new(P256);
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&key.spki_der()).unwrap();
        p.signed_by(&spki, &issuer).unwrap().der().to_vec()
    }

    fn registered(der: &[u8], n: u64) -> RegisteredDevice {
        RegisteredDevice(n, ByteBuf::from(sha256(der).to_vec()))
    }

    fn revocation(f: impl FnOnce(&mut Revocation)) -> Revocation {
        let mut r = Revocation {
            reason: "test".into(),
            revoked_at: NOW.unix_timestamp(),
            ..Revocation::default()
        };
        f(&mut r);
        r
    }

    /// Position of a reason in a table of all of them; the match is exhaustive, so a new reason
    /// does not compile until the coverage check below knows it.
    fn index(r: Reason) -> usize {
        match r {
            Reason::MalformedChain => 0,
            Reason::UnknownIssuer => 1,
            Reason::ChainInvalid => 2,
            Reason::Expired => 3,
            Reason::NotYetValid => 4,
            Reason::WrongUsage => 5,
            Reason::ProfileMismatch => 6,
            Reason::SerialOutOfRange => 7,
            Reason::SiteRevoked => 8,
            Reason::EntitlementRevoked => 9,
            Reason::Revoked => 10,
            Reason::Clone => 11,
            Reason::NotInLog => 12,
            Reason::NotReconciled => 13,
            Reason::EntitlementSuspended => 14,
            Reason::Superseded => 15,
        }
    }
    const REASONS: usize = 16;

    type Expect = Result<Standing, Reason>;
    /// A name, the registry, the chain the device presents, when, and the verdict expected.
    type Case<'a> = (
        &'static str,
        &'a VerifiedRegistry,
        Vec<Vec<u8>>,
        OffsetDateTime,
        Expect,
    );

    #[track_caller]
    fn assert_verdict(name: &str, v: &Verdict, want: Expect) {
        match want {
            Ok(standing) => {
                assert!(v.genuine, "{name}: {v:?}");
                assert_eq!(v.standing, standing, "{name}: {v:?}");
                assert_eq!(v.reason, None, "{name}: {v:?}");
            }
            Err(reason) => {
                assert!(!v.genuine, "{name}: {v:?}");
                assert_eq!(v.standing, Standing::Refused, "{name}: {v:?}");
                assert_eq!(v.reason, Some(reason), "{name}: {v:?}");
                assert_eq!(serde_json::to_value(reason).unwrap(), reason.code(), "{name}");
            }
        }
    }

    #[test]
    fn registry_check_device_gives_every_reason_and_standing() {
        let pki = Pki::new();
        let g11 = grant("s1.1", 1, 100);
        let g12 = grant("s1.2", 200, 299);
        let g21 = grant("s2.1", 1000, 1100);
        // HQ reconciled s1.1's first issues up to serial 3 (1 is registered).
        let old = NOW - days(20);
        let new = NOW - days(5);

        let reg_dev = device(&pki.s1, &g11, 1, old);
        let prov_dev = device(&pki.s1, &g11, 6, new);
        // Serial 3 at the frontier; serial 2 below it, with a fresh notBefore (a site's clock
        // says nothing about coverage).
        let skipped = device(&pki.s1, &g11, 3, old);
        let skipped_new = device(&pki.s1, &g11, 2, NOW);
        let clone = device(&pki.s1, &g11, 1, new);
        let last_in_range = device(&pki.s1, &g11, 100, new);
        let past_range = device(&pki.s1, &g11, 101, new);
        // s1's key signing a serial HQ allocated to s2.
        let s2_range = device(&pki.s1, &g21, 1000, new);
        let mut one_day = g11.clone();
        one_day.device_profile.validity_days = 1;
        let expired = device(&pki.s1, &one_day, 4, new);
        let future = device(&pki.s1, &g11, 5, NOW + days(1));
        let revoked_serial = device(&pki.s1, &g11, 7, old);
        let revoked_cert = device(&pki.s1, &g11, 8, new);
        let same_serial = device(&pki.s1, &g11, 8, new);
        let ent_dev = device(&pki.s1, &g12, 200, new);
        let s2_dev = device(&pki.s2, &g21, 1000, new);

        // A rogue root with the genuine root's name, and under it a CA with s1's exact subject,
        // and one with an unenrolled site's name.
        let rogue_root = Ca::root();
        let lookalike_ca = rogue_root.issue(Profile::SiteIssuingCa, &site("s1"));
        let lookalike = device(&lookalike_ca, &g11, 9, new);
        let rogue_ca = rogue_root.issue(Profile::SiteIssuingCa, &site("s9"));
        let rogue = device(&rogue_ca, &g11, 9, new);

        // Not client-authentication end entities.
        let ca_leaf = pki.s1.issue(Profile::SiteIssuingCa, &site("s9"));
        let server = {
            let key = TestSigner::new(P256);
            crate::profile::issue_site_service(
                "Acme",
                &SiteId::new("s1").unwrap(),
                &[ServiceName::Dns("site.example".into())],
                &cert::subject_key(key.algorithm().rcgen(), key.public_key()),
                Validity::starting(new, days(365)),
                serial(),
                &pki.s1.issuer(),
            )
            .unwrap()
        };
        let server_eku = device_shaped(&pki.s1, 11, vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]);
        let client_eku = device_shaped(&pki.s1, 12, vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]);
        let no_eku = device_shaped(&pki.s1, 10, vec![]);

        // Valid client certificates of s1 that are not devices of the entitlement's profile.
        let station = pki.s1.issue(
            Profile::Station,
            &Holder::Station {
                site: SiteId::new("s1").unwrap(),
                name: "line-1".into(),
            },
        );
        let mut other_product = g11.clone();
        other_product.product.product_id = "other".into();
        let other_product = device(&pki.s1, &other_product, 13, new);
        let ed25519 = device_with_key(
            &pki.s1,
            &g11,
            14,
            new,
            &TestSigner::new(SignatureAlgorithm::Ed25519),
        );
        let mut long = g11.clone();
        long.device_profile.validity_days = 4000;
        let long = device(&pki.s1, &long, 15, new);
        let verification = crate::cloud_ca::verification_cert(
            "CODE-123",
            &TestSigner::new(P256).spki_der(),
            NOW - Duration::hours(1),
            serial(),
            &pki.s1.issuer(),
        )
        .unwrap();

        let mut reg = pki.registry();
        reg.devices = vec![registered(&reg_dev, 1), registered(&revoked_serial, 7)];
        // `clone` has serial 1 too: listed as superseded, it is refused as such.
        let mut renewed = reg.clone();
        renewed.superseded = vec![registered(&clone, 1)];
        let renewed = pki.verified(&renewed);
        let clean = pki.verified(&reg);
        reg.revocations = vec![
            revocation(|r| r.site_id = Some("s2".into())),
            revocation(|r| r.entitlement_id = Some("s1.2".into())),
            revocation(|r| r.device_serial = Some(7)),
            revocation(|r| r.certificate_sha256 = Some(ByteBuf::from(sha256(&revoked_cert).to_vec()))),
        ];
        let revoked = pki.verified(&reg);
        reg.revocations = Vec::new();
        reg.entitlements[1].status = crate::entitlement::Status::Suspended;
        let suspended = pki.verified(&reg);

        let one = |d: &Vec<u8>| vec![d.clone()];
        let cases: Vec<Case<'_>> = vec![
            ("registered", &clean, one(&reg_dev), NOW, Ok(Standing::Registered)),
            (
                "registered, with a full chain",
                &clean,
                vec![reg_dev.clone(), pki.s1.der.clone(), pki.root.der.clone()],
                NOW,
                Ok(Standing::Registered),
            ),
            (
                "registered, the rest of the chain is ignored",
                &clean,
                vec![reg_dev.clone(), b"junk".to_vec()],
                NOW,
                Ok(Standing::Registered),
            ),
            (
                "registered, 4 certificates",
                &clean,
                vec![reg_dev.clone(); MAX_DEVICE_CHAIN],
                NOW,
                Ok(Standing::Registered),
            ),
            (
                "provisional",
                &clean,
                one(&prov_dev),
                NOW,
                Ok(Standing::Provisional),
            ),
            (
                "provisional until provisional_days",
                &clean,
                one(&prov_dev),
                new + days(30),
                Ok(Standing::Provisional),
            ),
            (
                "not reconciled after provisional_days",
                &clean,
                one(&prov_dev),
                new + days(30) + Duration::seconds(1),
                Err(Reason::NotReconciled),
            ),
            (
                "registered is not subject to provisional_days",
                &clean,
                one(&reg_dev),
                NOW + days(365),
                Ok(Standing::Registered),
            ),
            (
                "at the reconciled serial frontier, not registered",
                &clean,
                one(&skipped),
                NOW,
                Err(Reason::NotInLog),
            ),
            (
                "below the frontier, whatever its notBefore",
                &clean,
                one(&skipped_new),
                NOW,
                Err(Reason::NotInLog),
            ),
            (
                "clone of a registered serial",
                &clean,
                one(&clone),
                NOW,
                Err(Reason::Clone),
            ),
            (
                "a certificate a renewal replaced",
                &renewed,
                one(&clone),
                NOW,
                Err(Reason::Superseded),
            ),
            (
                "last serial in range",
                &clean,
                one(&last_in_range),
                NOW,
                Ok(Standing::Provisional),
            ),
            (
                "past the range",
                &clean,
                one(&past_range),
                NOW,
                Err(Reason::SerialOutOfRange),
            ),
            (
                "another site's range",
                &clean,
                one(&s2_range),
                NOW,
                Err(Reason::SerialOutOfRange),
            ),
            ("expired", &clean, one(&expired), NOW, Err(Reason::Expired)),
            (
                "short-lived, while valid",
                &clean,
                one(&expired),
                new + Duration::hours(12),
                Ok(Standing::Provisional),
            ),
            (
                "registered, long after",
                &clean,
                one(&reg_dev),
                NOW + days(3650),
                Err(Reason::Expired),
            ),
            (
                "not yet valid",
                &clean,
                one(&future),
                NOW,
                Err(Reason::NotYetValid),
            ),
            (
                "valid later",
                &clean,
                one(&future),
                NOW + days(2),
                Ok(Standing::Provisional),
            ),
            (
                "look-alike site CA",
                &clean,
                one(&lookalike),
                NOW,
                Err(Reason::ChainInvalid),
            ),
            (
                "look-alike site CA, with its chain",
                &clean,
                vec![
                    lookalike.clone(),
                    lookalike_ca.der.clone(),
                    rogue_root.der.clone(),
                ],
                NOW,
                Err(Reason::ChainInvalid),
            ),
            ("rogue CA", &clean, one(&rogue), NOW, Err(Reason::UnknownIssuer)),
            (
                "the OEM root as a device",
                &clean,
                one(&pki.root.der),
                NOW,
                Err(Reason::UnknownIssuer),
            ),
            (
                "a CA certificate as the leaf",
                &clean,
                one(&ca_leaf.der),
                NOW,
                Err(Reason::WrongUsage),
            ),
            (
                "serverAuth profile",
                &clean,
                one(&server),
                NOW,
                Err(Reason::WrongUsage),
            ),
            (
                "device-shaped, serverAuth",
                &clean,
                one(&server_eku),
                NOW,
                Err(Reason::WrongUsage),
            ),
            (
                "device-shaped, clientAuth (control)",
                &clean,
                one(&client_eku),
                NOW,
                Ok(Standing::Provisional),
            ),
            // RFC 5280 (and webpki): no EKU extension means any purpose; the device profile
            // check refuses it (a device certificate carries clientAuth).
            (
                "device-shaped, no EKU",
                &clean,
                one(&no_eku),
                NOW,
                Err(Reason::ProfileMismatch),
            ),
            (
                "station certificate",
                &clean,
                one(&station.der),
                NOW,
                Err(Reason::ProfileMismatch),
            ),
            (
                "another product",
                &clean,
                one(&other_product),
                NOW,
                Err(Reason::ProfileMismatch),
            ),
            (
                "key type not allowed",
                &clean,
                one(&ed25519),
                NOW,
                Err(Reason::ProfileMismatch),
            ),
            (
                "validity too long",
                &clean,
                one(&long),
                NOW,
                Err(Reason::ProfileMismatch),
            ),
            (
                "cloud verification certificate",
                &clean,
                one(&verification),
                NOW,
                Err(Reason::ProfileMismatch),
            ),
            (
                "s2 device before revocation",
                &clean,
                one(&s2_dev),
                NOW,
                Ok(Standing::Provisional),
            ),
            (
                "s2 device, site revoked",
                &revoked,
                one(&s2_dev),
                NOW,
                Err(Reason::SiteRevoked),
            ),
            (
                "s1.2 device before revocation",
                &clean,
                one(&ent_dev),
                NOW,
                Ok(Standing::Provisional),
            ),
            (
                "s1.2 device, entitlement revoked",
                &revoked,
                one(&ent_dev),
                NOW,
                Err(Reason::EntitlementRevoked),
            ),
            (
                "s1.2 device, entitlement suspended",
                &suspended,
                one(&ent_dev),
                NOW,
                Err(Reason::EntitlementSuspended),
            ),
            (
                "serial 7 before revocation",
                &clean,
                one(&revoked_serial),
                NOW,
                Ok(Standing::Registered),
            ),
            (
                "serial 7 revoked",
                &revoked,
                one(&revoked_serial),
                NOW,
                Err(Reason::Revoked),
            ),
            (
                "certificate before revocation",
                &clean,
                one(&revoked_cert),
                NOW,
                Ok(Standing::Provisional),
            ),
            (
                "certificate revoked",
                &revoked,
                one(&revoked_cert),
                NOW,
                Err(Reason::Revoked),
            ),
            (
                "another certificate of the revoked certificate's serial",
                &revoked,
                one(&same_serial),
                NOW,
                Ok(Standing::Provisional),
            ),
            (
                "registered, other revocations",
                &revoked,
                one(&reg_dev),
                NOW,
                Ok(Standing::Registered),
            ),
            ("empty chain", &clean, vec![], NOW, Err(Reason::MalformedChain)),
            (
                "5 certificates",
                &clean,
                vec![reg_dev.clone(); MAX_DEVICE_CHAIN + 1],
                NOW,
                Err(Reason::MalformedChain),
            ),
            (
                "garbage",
                &clean,
                vec![b"garbage".to_vec()],
                NOW,
                Err(Reason::MalformedChain),
            ),
            (
                "empty certificate",
                &clean,
                vec![Vec::new()],
                NOW,
                Err(Reason::MalformedChain),
            ),
            (
                "a byte after the certificate",
                &clean,
                vec![[reg_dev.as_slice(), &[0]].concat()],
                NOW,
                Err(Reason::MalformedChain),
            ),
            (
                "truncated certificate",
                &clean,
                vec![reg_dev[..reg_dev.len() - 1].to_vec()],
                NOW,
                Err(Reason::MalformedChain),
            ),
        ];
        let mut seen = [false; REASONS];
        let mut standings = (false, false);
        for (name, registry, chain, now, want) in &cases {
            let v = registry.check_device(chain, *now);
            assert_verdict(name, &v, *want);
            match want {
                Ok(Standing::Registered) => standings.0 = true,
                Ok(_) => standings.1 = true,
                Err(r) => seen[index(*r)] = true,
            }
        }
        assert!(seen.iter().all(|s| *s), "reasons not covered: {seen:?}");
        assert_eq!(standings, (true, true));
    }

    #[test]
    fn registry_refuses_non_canonical_subject_serials() {
        let pki = Pki::new();
        let reg = pki.verified(&pki.registry());
        let client = || vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        // The control: serial 4 written canonically is a provisional device of s1.1.
        let good = device_shaped_serial(&pki.s1, "4", client());
        let v = reg.check_device(&[good], NOW);
        assert_verdict("4", &v, Ok(Standing::Provisional));
        assert_eq!(v.device_serial, Some(4));
        for bad in ["+4", "04", " 4", "4 ", "", "18446744073709551616", "-4", "4.0"] {
            let der = device_shaped_serial(&pki.s1, bad, client());
            let v = reg.check_device(&[der], NOW);
            assert_verdict(&format!("serialNumber {bad:?}"), &v, Err(Reason::ProfileMismatch));
            assert_eq!(v.device_serial, None, "{bad:?}");
            assert!(v.detail.contains("canonical decimal"), "{bad:?}: {}", v.detail);
        }
    }

    #[test]
    fn registry_verdict_names_what_it_found() {
        let pki = Pki::new();
        let g11 = grant("s1.1", 1, 100);
        let g21 = grant("s2.1", 1000, 1100);
        let dev = device(&pki.s1, &g11, 1, NOW - days(20));
        let mut reg = pki.registry();
        reg.devices = vec![registered(&dev, 1)];
        let r = pki.verified(&reg);
        let v = r.check_device(std::slice::from_ref(&dev), NOW);
        assert_eq!(v.standing, Standing::Registered);
        assert_eq!(v.site_id.as_deref(), Some("s1"));
        assert_eq!(v.entitlement_id.as_deref(), Some("s1.1"));
        assert_eq!(v.device_serial, Some(1));
        assert_eq!(v.certificate_sha256, Some(hex::encode(sha256(&dev))));
        // Out of range: site and serial known, no entitlement.
        let v = r.check_device(&[device(&pki.s1, &g21, 1000, NOW)], NOW);
        assert_eq!(v.reason, Some(Reason::SerialOutOfRange));
        assert_eq!(v.site_id.as_deref(), Some("s1"));
        assert_eq!(v.device_serial, Some(1000));
        assert_eq!(v.entitlement_id, None);
        // The range of s2 admits it from s2.
        let v = r.check_device(&[device(&pki.s2, &g21, 1000, NOW)], NOW);
        assert_eq!(v.standing, Standing::Provisional, "{v:?}");
        assert_eq!(v.site_id.as_deref(), Some("s2"));
        assert_eq!(v.entitlement_id.as_deref(), Some("s2.1"));
        // Unknown issuer: nothing known but the certificate's hash.
        let rogue = Ca::root().issue(Profile::SiteIssuingCa, &site("s9"));
        let d = device(&rogue, &g11, 1, NOW);
        let v = r.check_device(std::slice::from_ref(&d), NOW);
        assert_eq!(v.reason, Some(Reason::UnknownIssuer));
        assert_eq!((v.site_id, v.device_serial), (None, None));
        assert_eq!(v.certificate_sha256, Some(hex::encode(sha256(&d))));
        // Malformed: not even a hash.
        let v = r.check_device(&[], NOW);
        assert_eq!(v.certificate_sha256, None);
    }

    #[test]
    fn registry_serial_frontier_decides_not_in_log() {
        let pki = Pki::new();
        // s1.1 has two ranges, 1-100 and 500-600; serials go in order through them.
        let mut g11 = grant("s1.1", 1, 100);
        g11.serial_ranges.push(SerialRange {
            first: 500,
            last: 600,
        });
        let at = |n| device(&pki.s1, &g11, n, NOW - days(1));
        let (d42, d43, d100, d500, d501) = (at(42), at(43), at(100), at(500), at(501));
        for (frontier, dev, n, want) in [
            (None, &d42, 42, Ok(Standing::Provisional)),
            (Some(41), &d42, 42, Ok(Standing::Provisional)),
            (Some(42), &d42, 42, Err(Reason::NotInLog)),
            (Some(42), &d43, 43, Ok(Standing::Provisional)),
            (Some(100), &d100, 100, Err(Reason::NotInLog)),
            (Some(100), &d500, 500, Ok(Standing::Provisional)),
            (Some(500), &d42, 42, Err(Reason::NotInLog)),
            (Some(500), &d500, 500, Err(Reason::NotInLog)),
            (Some(500), &d501, 501, Ok(Standing::Provisional)),
        ] {
            let mut reg = pki.registry();
            reg.entitlements[0] = RegistryEntitlement {
                serial_frontier: frontier,
                ..crate::registry::tests::entitlement(&g11, "s1")
            };
            let v = pki.verified(&reg).check_device(std::slice::from_ref(dev), NOW);
            assert_verdict(&format!("serial {n}, frontier {frontier:?}"), &v, want);
            if want.is_err() {
                assert!(v.detail.contains("at or below"), "{}", v.detail);
            }
            // Once registered, it is genuine wherever the frontier is.
            reg.devices = vec![registered(dev, n)];
            let v = pki.verified(&reg).check_device(std::slice::from_ref(dev), NOW);
            assert_verdict("registered", &v, Ok(Standing::Registered));
        }
    }

    #[test]
    fn registry_provisional_only_for_active_entitlements() {
        use crate::entitlement::Status;
        let pki = Pki::new();
        let g11 = grant("s1.1", 1, 100);
        let reg_dev = device(&pki.s1, &g11, 1, NOW - days(3));
        let new_dev = device(&pki.s1, &g11, 50, NOW - days(1));
        for (status, want_new) in [
            (Status::Active, Ok(Standing::Provisional)),
            (Status::Suspended, Err(Reason::EntitlementSuspended)),
            (Status::Revoked, Err(Reason::EntitlementRevoked)),
        ] {
            let mut reg = pki.registry();
            reg.entitlements[0].status = status;
            reg.devices = vec![registered(&reg_dev, 1)];
            let r = pki.verified(&reg);
            let v = r.check_device(std::slice::from_ref(&new_dev), NOW);
            assert_verdict(&format!("{status:?}, unreconciled"), &v, want_new);
            // A device HQ reconciled stays genuine (revoking its devices is a revocation).
            let v = r.check_device(std::slice::from_ref(&reg_dev), NOW);
            assert_verdict(&format!("{status:?}, registered"), &v, Ok(Standing::Registered));
            assert!(r.is_registered(1) && !r.is_registered(50));
        }
    }

    #[test]
    fn registry_verdict_names_the_public_key() {
        let pki = Pki::new();
        let g11 = grant("s1.1", 1, 100);
        let key = TestSigner::new(P256);
        let dev = device_with_key(&pki.s1, &g11, 50, NOW - days(1), &key);
        let v = pki.verified(&pki.registry()).check_device(&[dev], NOW);
        assert_eq!(v.public_key_sha256, Some(hex::encode(sha256(&key.spki_der()))));
    }

    #[test]
    fn registry_provisional_days_bound_unreconciled_devices() {
        let pki = Pki::new();
        let g11 = grant("s1.1", 1, 100);
        let nb = NOW - days(5);
        let dev = device(&pki.s1, &g11, 42, nb);
        let second = Duration::seconds(1);
        for (provisional_days, now, want) in [
            (30, nb + days(30), Ok(Standing::Provisional)),
            (30, nb + days(30) + second, Err(Reason::NotReconciled)),
            (1, nb + days(1), Ok(Standing::Provisional)),
            (1, nb + days(1) + second, Err(Reason::NotReconciled)),
            // No limit.
            (0, nb + days(3000), Ok(Standing::Provisional)),
            (3650, nb + days(3000), Ok(Standing::Provisional)),
        ] {
            let mut reg = pki.registry();
            reg.provisional_days = provisional_days;
            let v = pki.verified(&reg).check_device(std::slice::from_ref(&dev), now);
            assert_verdict(&format!("{provisional_days} days, at {now}"), &v, want);
        }
    }
}
