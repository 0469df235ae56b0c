//! The stamp registry: what a cloud verifier needs to decide whether a device is genuine.
//!
//! HQ signs it; anyone can check it offline with the OEM root. It holds the OEM root, each site's
//! issuing CA, each entitlement's product, device profile, serial ranges, status and reconciled
//! serial frontier, the SHA-256 of every genuine device certificate HQ reconciled, and
//! revocations. The registry is public: it is signed, not encrypted.
//!
//! A registry file is a tagged `COSE_Sign1` (RFC 9052) with ES256, ES384 or EdDSA; its protected
//! header holds the content type [`CONTENT_TYPE`] and `x5chain` = [HQ authority signing
//! certificate, OEM root]; its payload is the CBOR [`Registry`]. The layout is specified in
//! `docs/cloud.md`.
//!
//! Reading: [`verify`] checks size, structure, the root (optionally pinned by fingerprint), the
//! HQ authority certificate under it and the signature, and only then decodes the payload into
//! a [`VerifiedRegistry`], the only type that can judge a device ([`VerifiedRegistry::check_device`]).

mod verify;

use aws_lc_rs::signature;
use coset::{AsCborValue, ContentType, CoseSign1, Label};
use serde_bytes::ByteBuf;
use time::OffsetDateTime;

use crate::cert::{self, CertError};
use crate::cose::{self, SignError, LABEL_X5CHAIN};
use crate::entitlement::{DeviceProfile, Product, SerialRange, Status};
use crate::envelope;
use crate::key::{KeyError, SignatureAlgorithm, Signer};
use crate::profile::Profile;

pub use verify::{validate_path, PathError, PathUsage, Reason, Standing, Verdict, VerifiedRegistry};

/// Value of [`Registry::format`].
pub const FORMAT: &str = "stamp-registry";
/// The registry format version this code writes and reads.
pub const VERSION: u32 = 2;
/// Content type in the `COSE_Sign1` protected header.
pub const CONTENT_TYPE: &str = "application/vnd.stamp.registry+cbor";
/// Largest registry file accepted (bytes): about five million devices.
pub const MAX_REGISTRY_LEN: usize = 256 * 1024 * 1024;
/// Most sites in a registry.
pub const MAX_SITES: usize = 10_000;
/// Most entitlements in a registry.
pub const MAX_ENTITLEMENTS: usize = 1_000_000;
/// Most serial ranges of one entitlement.
pub const MAX_RANGES: usize = 10_000;
/// Most revocations in a registry.
pub const MAX_REVOCATIONS: usize = 10_000_000;
/// Most certificates accepted in a device's chain (leaf first).
pub const MAX_DEVICE_CHAIN: usize = 4;

/// Why a registry could not be written or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Larger than the limit.
    #[error("registry is {0} bytes, more than the {MAX_REGISTRY_LEN} allowed")]
    TooLarge(usize),
    /// Not a registry of the expected layout.
    #[error("malformed registry: {0}")]
    Malformed(&'static str),
    /// The embedded root is not the pinned one.
    #[error("the registry's OEM root {found} is not the pinned root {expected}")]
    RootNotPinned {
        /// The registry's root fingerprint.
        found: String,
        /// The pinned fingerprint.
        expected: String,
    },
    /// A certificate in the signature's chain is refused.
    #[error("the registry's signer chain is refused: {0}")]
    Chain(#[from] CertError),
    /// The signature does not verify.
    #[error("the registry's signature does not verify with the HQ authority signing key")]
    BadSignature,
    /// A format version this code does not read.
    #[error("registry format version {0} is not supported (this stamp reads version {VERSION})")]
    UnsupportedVersion(u32),
    /// Older than a registry the verifier already trusted.
    #[error("registry sequence {found} is older than the {minimum} this verifier already has (rollback)")]
    Rollback {
        /// The file's sequence.
        found: u64,
        /// The lowest acceptable.
        minimum: u64,
    },
    /// A signing key failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The signer cannot sign registries.
    #[error("cannot sign the registry: {0}")]
    Signing(&'static str),
}

/// The registry's payload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// HQ's export counter: every export has a higher sequence than the one before.
    pub sequence: u64,
    /// When HQ made it (Unix seconds).
    pub issued_at: i64,
    /// The OEM's name.
    pub org: String,
    /// The OEM root certificate (DER); equal to the root in the signature's `x5chain`.
    pub root: ByteBuf,
    /// Enrolled sites.
    pub sites: Vec<RegistrySite>,
    /// Every entitlement HQ granted.
    pub entitlements: Vec<RegistryEntitlement>,
    /// Genuine devices HQ reconciled, as `[device serial, SHA-256 of the certificate]`, by serial:
    /// each serial's one live certificate.
    pub devices: Vec<RegisteredDevice>,
    /// Certificates of those devices that a renewal HQ reconciled replaced, by serial: refused
    /// as `superseded`. Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<RegisteredDevice>,
    /// Revocations.
    pub revocations: Vec<Revocation>,
    /// Days a device HQ has not reconciled may count as provisional, from its certificate's
    /// notBefore (at most [`MAX_PROVISIONAL_DAYS`]); after that it is refused (`not-reconciled`).
    /// 0 or absent: no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub provisional_days: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Largest [`Registry::provisional_days`].
pub const MAX_PROVISIONAL_DAYS: u32 = 3650;

/// A site in the registry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySite {
    /// The site ID.
    pub site_id: String,
    /// The site issuing CA certificate (DER), issued by the OEM root.
    pub issuing_ca: ByteBuf,
    /// Entries of the site's audit log HQ has reconciled (information only: coverage comes
    /// from each entitlement's [`RegistryEntitlement::serial_frontier`], never from the site's
    /// clock).
    pub log_size: u64,
}

/// An entitlement in the registry: what its devices' certificates must look like.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntitlement {
    /// Its ID.
    pub entitlement_id: String,
    /// The site it was granted to.
    pub site_id: String,
    /// The product.
    pub product: Product,
    /// The device certificate profile.
    pub device_profile: DeviceProfile,
    /// Device serials HQ allocated to it.
    pub serial_ranges: Vec<SerialRange>,
    /// Its status at HQ: only an active entitlement's unreconciled devices may be provisional.
    pub status: Status,
    /// The reconciled serial frontier: the highest device serial HQ has seen first issued
    /// (device-issued or key-handed-out entries, not renewals) under this entitlement, within its
    /// ranges, in the site's reconciled log; absent if none. A site hands serials out in
    /// ascending order through its ranges, so every serial of the entitlement at or below it was
    /// handed out before HQ's last reconciled entry: one that is not a registered device is
    /// refused (`not-in-log`), whatever the site's clock said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_frontier: Option<u64>,
}

/// A genuine device: `[device serial, SHA-256 of its certificate]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct RegisteredDevice(pub u64, pub ByteBuf);

/// A revocation; exactly one of the four selectors is present.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// A device serial: every certificate with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_serial: Option<u64>,
    /// One device certificate, by SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<ByteBuf>,
    /// Every device of an entitlement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entitlement_id: Option<String>,
    /// Every device of a site (its issuing CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    /// Why (free text).
    pub reason: String,
    /// When (Unix seconds).
    pub revoked_at: i64,
}

/// Signs a registry with the HQ authority signing key; `signer_cert` is its certificate and must
/// carry the signer's key. Returns the file's bytes.
pub fn sign(reg: &Registry, signer: &dyn Signer, signer_cert: &[u8]) -> Result<Vec<u8>, RegistryError> {
    let leaf = cert::parse(signer_cert)?;
    if leaf.public_key().subject_public_key.data.as_ref() != signer.public_key() {
        return Err(RegistryError::Signing(
            "the certificate does not carry the signer's key",
        ));
    }
    let mut payload = Vec::new();
    ciborium::ser::into_writer(reg, &mut payload)
        .map_err(|_| RegistryError::Signing("CBOR encoding failed"))?;
    let chain = [signer_cert.to_vec(), reg.root.to_vec()];
    cose::sign1(signer, CONTENT_TYPE, &chain, payload, b"").map_err(|e| match e {
        SignError::Unsupported => RegistryError::Signing("RSA keys do not sign registries"),
        SignError::Encoding => RegistryError::Signing("CBOR encoding failed"),
        SignError::Malformed => RegistryError::Signing("the signer returned a malformed signature"),
        SignError::Mismatch => RegistryError::Signing("the signature does not verify with the signer's key"),
        SignError::Key(e) => e.into(),
    })
}

/// Verifies a registry file and decodes it.
///
/// In order, before anything in the payload is read: the size; the `COSE_Sign1` layout; the root
/// in `x5chain` (its SHA-256 must equal `pinned_root` if given; an OEM root, self-signed, valid at
/// `now`); the HQ authority signing certificate (issued by that root, its profile, valid at
/// `now`); the signature. Then the payload: format, version, `sequence >= min_sequence`, the
/// payload's root equal to the signer's, and every bound.
pub fn verify(
    bytes: &[u8],
    pinned_root: Option<&[u8; 32]>,
    min_sequence: u64,
    now: OffsetDateTime,
) -> Result<VerifiedRegistry, RegistryError> {
    use RegistryError::Malformed;
    if bytes.len() > MAX_REGISTRY_LEN {
        return Err(RegistryError::TooLarge(bytes.len()));
    }
    let (tag, body) = envelope::read_tagged(bytes, envelope::EnvelopeError::TrailingBytes)
        .map_err(|_| Malformed("not one tagged CBOR item"))?;
    if tag != coset::iana::CborTag::CoseSign1 as u64 {
        return Err(Malformed("not a COSE_Sign1 (tag 18)"));
    }
    let sign1 = CoseSign1::from_cbor_value(body).map_err(|_| Malformed("not a valid COSE_Sign1 array"))?;
    if !sign1.unprotected.is_empty() {
        return Err(Malformed("the unprotected header must be empty"));
    }
    let h = &sign1.protected.header;
    let alg = h
        .alg
        .as_ref()
        .and_then(SignatureAlgorithm::from_cose)
        .ok_or(Malformed("missing or unsupported signature algorithm"))?;
    if !matches!(&h.content_type, Some(ContentType::Text(t)) if t == CONTENT_TYPE) {
        return Err(Malformed("the content type is not a stamp registry's"));
    }
    if !h.crit.is_empty() || !h.key_id.is_empty() || !h.iv.is_empty() || !h.partial_iv.is_empty() {
        return Err(Malformed("unexpected parameter in the protected header"));
    }
    let chain = match h.rest.as_slice() {
        [(Label::Int(LABEL_X5CHAIN), v)] => envelope::parse_x5chain(v)
            .map_err(|_| Malformed("x5chain must be [HQ signing certificate, OEM root]"))?,
        _ => {
            return Err(Malformed(
                "the protected header must hold x5chain and nothing else",
            ))
        }
    };
    let [signer_der, root_der] = chain.as_slice() else {
        return Err(Malformed("x5chain must be [HQ signing certificate, OEM root]"));
    };
    let root_fp = crate::fingerprint::sha256(root_der);
    if let Some(pin) = pinned_root {
        if &root_fp != pin {
            return Err(RegistryError::RootNotPinned {
                found: crate::fingerprint::colon_hex(&root_fp),
                expected: crate::fingerprint::colon_hex(pin),
            });
        }
    }
    cert::check_under_root(
        "HQ authority signing",
        signer_der,
        Profile::HqAuthoritySigning,
        root_der,
        now,
    )?;
    let signer = cert::parse(signer_der)?;
    if sign1.signature.len() != alg.fixed_signature_len() {
        return Err(RegistryError::BadSignature);
    }
    let payload = sign1.payload.as_deref().ok_or(Malformed("detached payload"))?;
    let tbs = sign1.tbs_data(b"");
    signature::UnparsedPublicKey::new(
        alg.fixed_verification(),
        signer.public_key().subject_public_key.data.as_ref(),
    )
    .verify(&tbs, &sign1.signature)
    .map_err(|_| RegistryError::BadSignature)?;

    // Signed by HQ from here on; still bounded and checked.
    let mut rest = payload;
    let reg: Registry =
        ciborium::de::from_reader(&mut rest).map_err(|_| Malformed("the payload is not a registry"))?;
    if !rest.is_empty() {
        return Err(Malformed("bytes after the registry in the payload"));
    }
    if reg.format != FORMAT {
        return Err(Malformed("the payload's format is not stamp-registry"));
    }
    if reg.version != VERSION {
        return Err(RegistryError::UnsupportedVersion(reg.version));
    }
    if reg.sequence < min_sequence {
        return Err(RegistryError::Rollback {
            found: reg.sequence,
            minimum: min_sequence,
        });
    }
    if reg.root.as_slice() != root_der.as_slice() {
        return Err(Malformed("the payload's root differs from the signer's"));
    }
    if reg.provisional_days > MAX_PROVISIONAL_DAYS {
        return Err(Malformed("provisional_days is above 3650"));
    }
    VerifiedRegistry::new(reg, root_fp)
}

#[cfg(test)]
mod tests;
