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
mod tests;
