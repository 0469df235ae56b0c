//! Entitlements: what HQ allows a site to produce.
//!
//! An entitlement package's plaintext is one [`Entitlement`], CBOR-encoded. It either grants a new
//! production run ([`Grant`]) or amends an earlier one ([`Amend`]: top up the quota, move the window,
//! suspend, resume or revoke). Each package for a site carries a sequence number one higher than any
//! applied before. The format is specified in docs/formats/entitlement.md.
//!
//! This module holds the payload, its bounds and the pure rules for applying it; sealing is in
//! [`crate::envelope`], storage at the roles.

use std::collections::BTreeMap;

use crate::SiteId;

/// Payload version this build writes and reads.
pub const VERSION: u32 = 1;
/// Largest encoded payload accepted.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// Most serial ranges in one entitlement.
pub const MAX_RANGES: usize = 64;
/// Most device-data entries.
pub const MAX_DEVICE_DATA: usize = 64;
/// Most stations an entitlement may name.
pub const MAX_STATIONS: usize = 256;
/// Device serials one amendment may revoke.
pub const MAX_REVOKE_DEVICES: usize = 10_000;
/// Longest short text field (IDs, names, keys).
pub const MAX_SHORT_TEXT: usize = 64;
/// Longest device-data value.
pub const MAX_VALUE: usize = 1024;
/// Most firmware releases one grant may name.
pub const MAX_FIRMWARE: usize = 32;
/// Most HQ-generated device keys in one grant.
pub const MAX_DEVICE_KEYS: usize = 10_000;
/// Most per-device secrets per key.
pub const MAX_SECRETS: usize = 16;
/// Longest per-device secret.
pub const MAX_SECRET_LEN: usize = 256;

/// A production rate limit period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RatePeriod {
    /// 60 seconds.
    Minute,
    /// 3600 seconds.
    Hour,
    /// 86400 seconds.
    Day,
}

impl RatePeriod {
    /// Length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            RatePeriod::Minute => 60,
            RatePeriod::Hour => 3600,
            RatePeriod::Day => 86_400,
        }
    }

    /// Name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            RatePeriod::Minute => "minute",
            RatePeriod::Hour => "hour",
            RatePeriod::Day => "day",
        }
    }
}

/// Device key types a profile may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKeyType {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048.
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096.
    Rsa4096,
}

impl DeviceKeyType {
    /// Every type, in order.
    pub const ALL: [DeviceKeyType; 6] = [
        DeviceKeyType::P256,
        DeviceKeyType::P384,
        DeviceKeyType::Ed25519,
        DeviceKeyType::Rsa2048,
        DeviceKeyType::Rsa3072,
        DeviceKeyType::Rsa4096,
    ];

    /// Name as used on the command line and in the payload.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKeyType::P256 => "p256",
            DeviceKeyType::P384 => "p384",
            DeviceKeyType::Ed25519 => "ed25519",
            DeviceKeyType::Rsa2048 => "rsa2048",
            DeviceKeyType::Rsa3072 => "rsa3072",
            DeviceKeyType::Rsa4096 => "rsa4096",
        }
    }
}

/// The product a grant is for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// The OEM's identifier (appears in device certificates).
    pub oem_id: String,
    /// The product's identifier (appears in device certificates).
    pub product_id: String,
    /// Human-readable product name.
    pub name: String,
}

/// An inclusive range of device serial numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialRange {
    /// First serial in the range.
    pub first: u64,
    /// Last serial in the range (inclusive).
    pub last: u64,
}

impl SerialRange {
    /// Number of serials in the range.
    pub fn len(&self) -> u64 {
        self.last.saturating_sub(self.first).saturating_add(1)
    }

    /// Whether the range is empty (never, for a well-formed range).
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// Whether two ranges share a serial.
    pub fn overlaps(&self, other: &SerialRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// How device certificates under this grant are built.
///
/// Subject: `O=<organization>, OU=<oem_id>, CN=<product_id>, serialNumber=<device serial>`;
/// extended key usage clientAuth only; never anything a CSR asks for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// Device certificate lifetime in days.
    pub validity_days: u32,
    /// Key types a device may present.
    pub key_types: Vec<DeviceKeyType>,
    /// `O=` of device certificates (the OEM's name).
    pub organization: String,
}

/// A firmware release the site may program into devices under a grant (recorded at HQ by
/// `stamp hq sign-firmware`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareRef {
    /// The release's version.
    pub version: String,
    /// Its image format (`mcuboot` or `esp32-sbv2`).
    pub format: String,
    /// The name of the HQ firmware key that signed it.
    pub key: String,
    /// SHA-256 of the signed image file.
    pub sha256: serde_bytes::ByteBuf,
}

/// A device key HQ generated for a device that cannot make its own, with its per-device secrets.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HqDeviceKey {
    /// SHA-256 of the key's SubjectPublicKeyInfo (kept when the key material is redacted).
    pub spki_sha256: serde_bytes::ByteBuf,
    /// The private key, PKCS#8 DER (empty once redacted).
    pub private_key: serde_bytes::ByteBuf,
    /// Per-device secrets by name, e.g. a flash-encryption key (empty once redacted).
    pub secrets: BTreeMap<String, serde_bytes::ByteBuf>,
}

impl std::fmt::Debug for HqDeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HqDeviceKey(spki_sha256 {}, {} secrets)",
            hex::encode(&self.spki_sha256),
            self.secrets.len()
        )
    }
}

impl Drop for HqDeviceKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.private_key.as_mut_slice().zeroize();
        for v in self.secrets.values_mut() {
            v.as_mut_slice().zeroize();
        }
    }
}

/// A new production run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Unique ID of this entitlement (`<site-id>.<sequence>`).
    pub entitlement_id: String,
    /// The product.
    pub product: Product,
    /// Most devices the site may provision under this grant.
    pub quota: u64,
    /// Most devices per period; absent periods are unlimited.
    pub rate_limits: BTreeMap<RatePeriod, u64>,
    /// Start of the production window (Unix seconds).
    pub not_before: i64,
    /// End of the production window (Unix seconds).
    pub not_after: i64,
    /// Device serials HQ allocated (never overlapping anything HQ allocated before).
    pub serial_ranges: Vec<SerialRange>,
    /// The device certificate profile.
    pub device_profile: DeviceProfile,
    /// Stations allowed to use this grant; empty means every station of the site.
    pub stations: Vec<String>,
    /// Data the station writes to every device (e.g. the cloud endpoint).
    pub device_data: BTreeMap<String, String>,
    /// Keys HQ generated for devices that cannot make their own (then `quota` equals their number
    /// and the site hands each out at most once); empty otherwise.
    pub device_keys: Vec<HqDeviceKey>,
    /// Firmware releases the site may program under this grant (empty: none named).
    pub firmware: Vec<FirmwareRef>,
    /// How often one device may be renewed (absent from older packages: the default).
    #[serde(default)]
    pub renewal_limit: RenewalLimit,
}

/// At most `count` renewals of one device in any interval of `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalLimit {
    /// Renewals per device per period (0: devices of this grant cannot be renewed).
    pub count: u32,
    /// The period.
    pub period: RatePeriod,
}

/// Most renewals per device per period a grant may allow.
pub const MAX_RENEWALS_PER_PERIOD: u32 = 1000;

impl Default for RenewalLimit {
    /// Two renewals per device per day: enough to retry a renewal whose answer was lost, too few
    /// to matter as a way around the quota (a renewal supersedes; it never adds a device).
    fn default() -> Self {
        RenewalLimit {
            count: 2,
            period: RatePeriod::Day,
        }
    }
}

impl Grant {
    /// The grant without private keys or secrets (what HQ and the site keep in their databases).
    pub fn redacted(&self) -> Grant {
        let mut g = self.clone();
        for k in &mut g.device_keys {
            k.private_key = serde_bytes::ByteBuf::new();
            k.secrets.clear();
        }
        g
    }
}

/// A grant's state as amendments leave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Devices may be provisioned.
    Active,
    /// Temporarily stopped; a later amendment may resume it.
    Suspended,
    /// Permanently stopped.
    Revoked,
}

impl Status {
    /// Name as shown to people.
    pub fn name(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Revoked => "revoked",
        }
    }
}

/// A change to an earlier grant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amend {
    /// The grant amended.
    pub entitlement_id: String,
    /// Devices added to the quota (with `add_serial_ranges` covering exactly as many serials).
    pub add_quota: u64,
    /// Serials allocated for the added quota.
    pub add_serial_ranges: Vec<SerialRange>,
    /// New window start, if changed.
    pub not_before: Option<i64>,
    /// New window end, if changed.
    pub not_after: Option<i64>,
    /// New status, if changed.
    pub status: Option<Status>,
    /// Devices of this grant whose certificates HQ revoked; the site refuses to renew them and
    /// lists their certificates in its CRL (`stamp site crl`). Absent from older packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<DeviceRevocation>,
}

/// Devices revoked by an amendment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRevocation {
    /// When HQ revoked them (Unix seconds): the revocation date in the site's CRL.
    pub revoked_at: i64,
    /// Device serials of this grant, strictly increasing (at most [`MAX_REVOKE_DEVICES`]).
    pub device_serials: Vec<u64>,
    /// Every device of the grant, issued now or before; the amendment must also revoke the
    /// grant (status `revoked`), so no device is issued after it.
    pub all: bool,
}

/// What a package does.
// One value per package, decoded once: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A new production run.
    Grant(Grant),
    /// A change to an earlier run.
    Amend(Amend),
}

/// The plaintext of an entitlement package.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entitlement {
    /// Always [`VERSION`].
    pub version: u32,
    /// The site it is for.
    pub site_id: SiteId,
    /// Per-site sequence number, strictly increasing.
    pub sequence: u64,
    /// When HQ made it (Unix seconds).
    pub issued_at: i64,
    /// What it does.
    pub action: Action,
}

/// Why a payload or an update was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntitlementError {
    /// Larger than [`MAX_PAYLOAD`].
    #[error("entitlement payload is larger than {MAX_PAYLOAD} bytes")]
    TooLarge,
    /// Not the CBOR layout of an entitlement.
    #[error("malformed entitlement payload: {0}")]
    Malformed(String),
    /// A version this build does not read.
    #[error("unsupported entitlement version {0} (this stamp reads version {VERSION})")]
    UnsupportedVersion(u32),
    /// A field breaks a rule.
    #[error("invalid entitlement: {0}")]
    Invalid(&'static str),
    /// The package is for another site.
    #[error("entitlement is for site {found}, this is site {expected}")]
    WrongSite {
        /// Its site.
        found: String,
        /// This site.
        expected: String,
    },
    /// Sequence not above the last applied: a replay or a rollback.
    #[error("entitlement sequence {found} is not above the last applied ({last}): replayed or out of order")]
    StaleSequence {
        /// Its sequence.
        found: u64,
        /// The last applied.
        last: u64,
    },
    /// Sequence above the next one: packages in between were not applied. A site applies its
    /// packages strictly in sequence, so that none (a suspension, a revocation) can be skipped.
    #[error("{}", missing_message(*found, *last))]
    MissingSequence {
        /// Its sequence.
        found: u64,
        /// The last applied.
        last: u64,
    },
    /// The production window is already over.
    #[error("entitlement window ended at {0} (Unix time); it is expired")]
    Expired(i64),
    /// An amendment to a grant the site does not have.
    #[error("amendment for unknown entitlement {0}")]
    UnknownTarget(String),
    /// A grant whose ID the site already has.
    #[error("entitlement {0} already exists at this site")]
    DuplicateId(String),
    /// An amendment to a revoked grant.
    #[error("entitlement {0} is revoked; it cannot be changed")]
    Revoked(String),
}

/// "package 3 is missing: import it first" (or "packages 3 to 5 are missing: ...").
fn missing_message(found: u64, last: u64) -> String {
    let first = last.saturating_add(1);
    let to = found.saturating_sub(1);
    if first >= to {
        format!(
            "package {first} is missing: import it first (this is package {found}; packages apply strictly in sequence, the last applied is {last})"
        )
    } else {
        format!(
            "packages {first} to {to} are missing: import them first, in order (this is package {found}; packages apply strictly in sequence, the last applied is {last})"
        )
    }
}

fn short(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SHORT_TEXT && !s.chars().any(char::is_control)
}

fn check_ranges(ranges: &[SerialRange], count: u64) -> Result<(), EntitlementError> {
    if ranges.len() > MAX_RANGES {
        return Err(EntitlementError::Invalid("too many serial ranges"));
    }
    let mut total: u64 = 0;
    for (i, r) in ranges.iter().enumerate() {
        if r.is_empty() {
            return Err(EntitlementError::Invalid("empty serial range"));
        }
        if ranges[..i].iter().any(|o| o.overlaps(r)) {
            return Err(EntitlementError::Invalid("overlapping serial ranges"));
        }
        total = total
            .checked_add(r.len())
            .ok_or(EntitlementError::Invalid("serial ranges overflow"))?;
    }
    if total != count {
        return Err(EntitlementError::Invalid(
            "serial ranges do not cover exactly the quota",
        ));
    }
    Ok(())
}

impl Entitlement {
    /// Encodes as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail for these types.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// Decodes CBOR (bounded), then checks [`Entitlement::validate`].
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, EntitlementError> {
        if bytes.len() > MAX_PAYLOAD {
            return Err(EntitlementError::TooLarge);
        }
        // Read the version first, so a future version gets a clear error rather than a field error.
        #[derive(serde::Deserialize)]
        struct Head {
            version: u32,
        }
        let head: Head = ciborium::de::from_reader_with_recursion_limit(bytes, 16)
            .map_err(|e| EntitlementError::Malformed(e.to_string()))?;
        if head.version != VERSION {
            return Err(EntitlementError::UnsupportedVersion(head.version));
        }
        let mut reader = bytes;
        let e: Entitlement = ciborium::de::from_reader_with_recursion_limit(&mut reader, 16)
            .map_err(|e| EntitlementError::Malformed(e.to_string()))?;
        if !reader.is_empty() {
            return Err(EntitlementError::Malformed(
                "trailing bytes after the payload".to_owned(),
            ));
        }
        e.validate()?;
        Ok(e)
    }

    /// Checks every field's bounds and internal consistency.
    pub fn validate(&self) -> Result<(), EntitlementError> {
        use EntitlementError::Invalid;
        if self.version != VERSION {
            return Err(EntitlementError::UnsupportedVersion(self.version));
        }
        if self.sequence == 0 {
            return Err(Invalid("sequence numbers start at 1"));
        }
        match &self.action {
            Action::Grant(g) => {
                if !short(&g.entitlement_id) {
                    return Err(Invalid("bad entitlement ID"));
                }
                if !short(&g.product.oem_id) || !short(&g.product.product_id) || !short(&g.product.name) {
                    return Err(Invalid(
                        "product OEM ID, product ID and name must be 1-64 characters",
                    ));
                }
                if g.quota == 0 {
                    return Err(Invalid("quota must be at least 1"));
                }
                if g.rate_limits.values().any(|n| *n == 0) {
                    return Err(Invalid("a rate limit must allow at least 1 device"));
                }
                if g.renewal_limit.count > MAX_RENEWALS_PER_PERIOD {
                    return Err(Invalid(
                        "a renewal limit allows at most 1000 renewals per device per period",
                    ));
                }
                if g.not_after <= g.not_before {
                    return Err(Invalid("window ends before it starts"));
                }
                check_ranges(&g.serial_ranges, g.quota)?;
                let p = &g.device_profile;
                if p.validity_days == 0 || p.validity_days > 365 * 50 {
                    return Err(Invalid("device certificate validity must be 1 day to 50 years"));
                }
                if p.key_types.is_empty() || p.key_types.len() > DeviceKeyType::ALL.len() {
                    return Err(Invalid("the device profile must allow at least one key type"));
                }
                if !short(&p.organization) {
                    return Err(Invalid("device certificate organization must be 1-64 characters"));
                }
                if g.stations.len() > MAX_STATIONS || !g.stations.iter().all(|s| short(s)) {
                    return Err(Invalid("bad station list"));
                }
                if g.device_data.len() > MAX_DEVICE_DATA
                    || !g
                        .device_data
                        .iter()
                        .all(|(k, v)| short(k) && v.len() <= MAX_VALUE)
                {
                    return Err(Invalid(
                        "bad device data (at most 64 entries; keys 1-64, values up to 1024 bytes)",
                    ));
                }
                check_device_keys(g)?;
                if g.firmware.len() > MAX_FIRMWARE
                    || !g.firmware.iter().all(|f| {
                        short(&f.version) && short(&f.format) && short(&f.key) && f.sha256.len() == 32
                    })
                {
                    return Err(Invalid("bad firmware list (at most 32 releases)"));
                }
            }
            Action::Amend(a) => {
                if !short(&a.entitlement_id) {
                    return Err(Invalid("bad entitlement ID"));
                }
                check_ranges(&a.add_serial_ranges, a.add_quota)?;
                if let (Some(nb), Some(na)) = (a.not_before, a.not_after) {
                    if na <= nb {
                        return Err(Invalid("window ends before it starts"));
                    }
                }
                if let Some(r) = &a.revoke {
                    if r.device_serials.len() > MAX_REVOKE_DEVICES
                        || !r.device_serials.windows(2).all(|w| w[0] < w[1])
                    {
                        return Err(Invalid(
                            "revoked device serials must be strictly increasing (at most 10000)",
                        ));
                    }
                    if r.device_serials.is_empty() != r.all {
                        return Err(Invalid(
                            "a revocation names device serials or all devices, not both or neither",
                        ));
                    }
                    if r.all && a.status != Some(Status::Revoked) {
                        return Err(Invalid("revoking every device also revokes the grant"));
                    }
                    if r.revoked_at <= 0 {
                        return Err(Invalid("bad revocation time"));
                    }
                }
                if a.add_quota == 0
                    && a.not_before.is_none()
                    && a.not_after.is_none()
                    && a.status.is_none()
                    && a.revoke.is_none()
                {
                    return Err(Invalid("an amendment must change something"));
                }
            }
        }
        Ok(())
    }
}

fn check_device_keys(g: &Grant) -> Result<(), EntitlementError> {
    use EntitlementError::Invalid;
    if g.device_keys.is_empty() {
        return Ok(());
    }
    if g.device_keys.len() > MAX_DEVICE_KEYS || g.device_keys.len() as u64 != g.quota {
        return Err(Invalid(
            "a grant with HQ-generated keys has exactly one key per device of its quota (at most 10000)",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for k in &g.device_keys {
        let ok = k.spki_sha256.len() == 32
            && !k.private_key.is_empty()
            && k.private_key.len() <= 8192
            && k.secrets.len() <= MAX_SECRETS
            && k.secrets
                .iter()
                .all(|(n, v)| short(n) && !v.is_empty() && v.len() <= MAX_SECRET_LEN)
            && seen.insert(k.spki_sha256.to_vec());
        if !ok {
            return Err(Invalid("bad HQ-generated device key"));
        }
    }
    Ok(())
}

/// A grant as held at a site: the grant with every amendment applied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GrantState {
    /// The grant, with quota, window and ranges as amended.
    pub grant: Grant,
    /// Current status.
    pub status: Status,
    /// Sequence of the last package that touched it.
    pub last_sequence: u64,
    /// Revoked device serials with when HQ revoked them (Unix seconds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked_devices: BTreeMap<u64, i64>,
    /// When every device of the grant was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_devices_revoked_at: Option<i64>,
}

impl GrantState {
    /// A grant as a new package makes it: active, nothing revoked.
    pub fn new(grant: Grant, last_sequence: u64) -> GrantState {
        GrantState {
            grant,
            status: Status::Active,
            last_sequence,
            revoked_devices: BTreeMap::new(),
            all_devices_revoked_at: None,
        }
    }

    /// When the device with this serial was revoked (Unix seconds), if it was.
    pub fn device_revoked_at(&self, device_serial: u64) -> Option<i64> {
        self.all_devices_revoked_at
            .or_else(|| self.revoked_devices.get(&device_serial).copied())
    }
}

/// Checks that a decrypted, well-formed entitlement is for `site` and is the next package:
/// sequence exactly `last_sequence + 1` (`last_sequence` is the highest applied, 0 if none). A
/// lower one is a replay or a rollback ([`EntitlementError::StaleSequence`]); a higher one skips
/// packages ([`EntitlementError::MissingSequence`]). This is what a site checks: it applies a
/// grant whose window is already over (it admits nothing), since refusing it would leave a gap
/// that no later package could ever close.
pub fn check_next(e: &Entitlement, site: &SiteId, last_sequence: u64) -> Result<(), EntitlementError> {
    if &e.site_id != site {
        return Err(EntitlementError::WrongSite {
            found: e.site_id.to_string(),
            expected: site.to_string(),
        });
    }
    if e.sequence <= last_sequence {
        return Err(EntitlementError::StaleSequence {
            found: e.sequence,
            last: last_sequence,
        });
    }
    if e.sequence != last_sequence.saturating_add(1) {
        return Err(EntitlementError::MissingSequence {
            found: e.sequence,
            last: last_sequence,
        });
    }
    Ok(())
}

/// [`check_next`], and that a grant's window is not over at `now` (Unix seconds): what HQ checks
/// before it seals a package.
pub fn check_applicable(
    e: &Entitlement,
    site: &SiteId,
    last_sequence: u64,
    now: i64,
) -> Result<(), EntitlementError> {
    check_next(e, site, last_sequence)?;
    if let Action::Grant(g) = &e.action {
        if g.not_after <= now {
            return Err(EntitlementError::Expired(g.not_after));
        }
    }
    Ok(())
}

/// Applies an amendment to a grant's state, returning the new state.
/// Shortening a window into the past is allowed: it stops production.
/// A revoked grant takes only amendments that revoke devices (and nothing else).
pub fn amend(state: &GrantState, a: &Amend, sequence: u64) -> Result<GrantState, EntitlementError> {
    let revocation_only = a.add_quota == 0
        && a.not_before.is_none()
        && a.not_after.is_none()
        && matches!(a.status, None | Some(Status::Revoked))
        && a.revoke.is_some();
    if state.status == Status::Revoked && !revocation_only {
        return Err(EntitlementError::Revoked(a.entitlement_id.clone()));
    }
    if a.add_quota > 0 && !state.grant.device_keys.is_empty() {
        return Err(EntitlementError::Invalid(
            "a grant of HQ-generated keys cannot be topped up; make a new grant with new keys",
        ));
    }
    let mut next = state.clone();
    let g = &mut next.grant;
    g.quota = g
        .quota
        .checked_add(a.add_quota)
        .ok_or(EntitlementError::Invalid("quota overflow"))?;
    for r in &a.add_serial_ranges {
        if g.serial_ranges.iter().any(|o| o.overlaps(r)) {
            return Err(EntitlementError::Invalid(
                "added serial range overlaps the grant's",
            ));
        }
        g.serial_ranges.push(*r);
    }
    if g.serial_ranges.len() > MAX_RANGES {
        return Err(EntitlementError::Invalid("too many serial ranges"));
    }
    if let Some(nb) = a.not_before {
        g.not_before = nb;
    }
    if let Some(na) = a.not_after {
        g.not_after = na;
    }
    if g.not_after <= g.not_before {
        return Err(EntitlementError::Invalid("amended window ends before it starts"));
    }
    if let Some(r) = &a.revoke {
        if next.all_devices_revoked_at.is_some() {
            return Err(EntitlementError::Invalid(
                "every device of the grant is revoked already",
            ));
        }
        if r.all {
            next.all_devices_revoked_at = Some(r.revoked_at);
        }
        for s in &r.device_serials {
            if !next
                .grant
                .serial_ranges
                .iter()
                .any(|g| g.first <= *s && *s <= g.last)
            {
                return Err(EntitlementError::Invalid(
                    "a revoked device serial is not the grant's",
                ));
            }
            if next.revoked_devices.insert(*s, r.revoked_at).is_some() {
                return Err(EntitlementError::Invalid("a device serial is revoked already"));
            }
        }
    }
    if let Some(s) = a.status {
        next.status = s;
    }
    next.last_sequence = sequence;
    Ok(next)
}

#[cfg(test)]
pub(crate) mod tests;
