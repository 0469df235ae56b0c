//! The site's audit log entries and the audit bundle a site exports to HQ.
//!
//! Every event at a site becomes one [`Entry`], CBOR-encoded; the encoded bytes are a leaf of the
//! site's Merkle tree ([`crate::merkle`], RFC 9162 hashing). An export is an **audit bundle**: a file
//! holding a CBOR sequence (RFC 8742) of byte strings, each one sealed envelope
//! ([`crate::envelope`], signed by the site identity, encrypted to the HQ authority): first a
//! [`BundleHeader`] (signed checkpoint, consistency proof, counts), then the entries in
//! [`BundleChunk`]s of at most [`MAX_ENTRIES_PER_CHUNK`], so HQ can verify and reconcile a bundle of
//! any size in bounded memory. docs/formats/audit.md specifies all of it.

use std::io::{Read, Write};

use serde_bytes::ByteBuf;

use crate::SiteId;

/// Version of entries and bundle parts this build writes and reads.
pub const VERSION: u32 = 1;
/// Content type of a bundle header envelope.
pub const HEADER_CONTENT_TYPE: &str = "application/vnd.stamp.audit-header+cbor";
/// Content type of a bundle chunk envelope.
pub const CHUNK_CONTENT_TYPE: &str = "application/vnd.stamp.audit-chunk+cbor";
/// Largest encoded entry.
pub const MAX_ENTRY: usize = 24 * 1024;
/// Most entries in one chunk.
pub const MAX_ENTRIES_PER_CHUNK: usize = 4096;
/// Largest chunk plaintext a site writes (entries are split earlier when they would exceed it).
pub const MAX_CHUNK_PLAINTEXT: usize = 4 * 1024 * 1024;
/// Largest envelope (frame) in a bundle.
pub const MAX_FRAME: usize = MAX_CHUNK_PLAINTEXT + 64 * 1024;
/// Largest consistency proof accepted.
pub const MAX_PROOF: usize = crate::merkle::MAX_CONSISTENCY_PROOF_LEN;

/// Why a request was refused, as a stable code (also the site service's error codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RefusalReason {
    /// The CSR is not valid DER PKCS#10.
    MalformedCsr,
    /// The CSR's signature does not verify.
    BadCsrSignature,
    /// The key type is not allowed by the entitlement's profile.
    KeyTypeNotAllowed,
    /// The key is weak or malformed (small RSA, bad exponent, explicit curve, bad point).
    WeakKey,
    /// The public key was certified before.
    DuplicateKey,
    /// The quota is used up.
    QuotaExhausted,
    /// A rate limit would be exceeded.
    RateExceeded,
    /// Outside the production window.
    OutsideWindow,
    /// The entitlement is suspended.
    Suspended,
    /// The entitlement is revoked.
    Revoked,
    /// No such entitlement at this site.
    UnknownEntitlement,
    /// The station may not use this entitlement.
    StationNotAllowed,
    /// No HQ-generated key is left to hand out (or the grant has none).
    NoKeysLeft,
    /// The grant's devices get HQ-generated keys (hand-out), not certificates for their own keys.
    HqKeysOnly,
    /// The site failed internally (signing or storage).
    Internal,
    /// The station's certificate was revoked at the site (`stamp site revoke-station`).
    StationRevoked,
    /// The client certificate is not a station certificate this site issued and recorded.
    NotAStation,
    /// A renewal names a device this site never issued a certificate for (subject mismatch).
    UnknownDevice,
    /// A renewal names a device HQ revoked (an entitlement update the site applied).
    DeviceRevoked,
    /// A renewal for a new key without a valid proof that the device holds its current key.
    PossessionNotProven,
    /// The device was renewed as often as its grant allows in the period.
    RenewalLimit,
}

impl RefusalReason {
    /// Every reason, in declaration order.
    pub const ALL: [RefusalReason; 21] = [
        RefusalReason::MalformedCsr,
        RefusalReason::BadCsrSignature,
        RefusalReason::KeyTypeNotAllowed,
        RefusalReason::WeakKey,
        RefusalReason::DuplicateKey,
        RefusalReason::QuotaExhausted,
        RefusalReason::RateExceeded,
        RefusalReason::OutsideWindow,
        RefusalReason::Suspended,
        RefusalReason::Revoked,
        RefusalReason::UnknownEntitlement,
        RefusalReason::StationNotAllowed,
        RefusalReason::NoKeysLeft,
        RefusalReason::HqKeysOnly,
        RefusalReason::Internal,
        RefusalReason::StationRevoked,
        RefusalReason::NotAStation,
        RefusalReason::UnknownDevice,
        RefusalReason::DeviceRevoked,
        RefusalReason::PossessionNotProven,
        RefusalReason::RenewalLimit,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::MalformedCsr => "malformed-csr",
            RefusalReason::BadCsrSignature => "bad-csr-signature",
            RefusalReason::KeyTypeNotAllowed => "key-type-not-allowed",
            RefusalReason::WeakKey => "weak-key",
            RefusalReason::DuplicateKey => "duplicate-key",
            RefusalReason::QuotaExhausted => "quota-exhausted",
            RefusalReason::RateExceeded => "rate-exceeded",
            RefusalReason::OutsideWindow => "outside-window",
            RefusalReason::Suspended => "suspended",
            RefusalReason::Revoked => "revoked",
            RefusalReason::UnknownEntitlement => "unknown-entitlement",
            RefusalReason::StationNotAllowed => "station-not-allowed",
            RefusalReason::NoKeysLeft => "no-keys-left",
            RefusalReason::HqKeysOnly => "hq-keys-only",
            RefusalReason::Internal => "internal",
            RefusalReason::StationRevoked => "station-revoked",
            RefusalReason::NotAStation => "not-a-station",
            RefusalReason::UnknownDevice => "unknown-device",
            RefusalReason::DeviceRevoked => "device-revoked",
            RefusalReason::PossessionNotProven => "possession-not-proven",
            RefusalReason::RenewalLimit => "renewal-limit",
        }
    }
}

/// A device certificate the site issued.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// The grant it was issued under.
    pub entitlement_id: String,
    /// The device serial (from the grant's ranges; in the subject's serialNumber).
    pub device_serial: u64,
    /// The certificate (DER).
    pub certificate: ByteBuf,
    /// SHA-256 of the certificate.
    pub certificate_sha256: ByteBuf,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub public_key_sha256: ByteBuf,
    /// The station that asked (or `batch` for `stamp site issue`).
    pub station: String,
    /// For an HQ-generated key: its index in the grant's key list.
    pub hq_key_index: Option<u64>,
    /// A renewal for a new key: the device's proof of possession, a signature with the key of its
    /// certificate until then ([`crate::device::verify_renewal_proof`]), so HQ can check that the
    /// device, not only a station, asked. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub possession_proof: Option<ByteBuf>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Event {
    /// An entitlement package was applied.
    EntitlementApplied {
        /// The grant it created or changed.
        entitlement_id: String,
        /// Its sequence.
        sequence: u64,
        /// `grant` or `amend`.
        action: String,
        /// SHA-256 of the package file.
        package_sha256: ByteBuf,
    },
    /// A device certificate was issued for a device's own key.
    DeviceIssued(DeviceRecord),
    /// An HQ-generated key was handed out with its certificate.
    KeyHandedOut(DeviceRecord),
    /// A device that has a certificate from this site got a new one (EST re-enrollment): same
    /// subject and device serial, not counted against the quota; it supersedes the device's
    /// certificate until then (one live certificate per serial).
    DeviceRenewed(DeviceRecord),
    /// A request was refused.
    RequestRefused {
        /// The grant asked for, if known.
        entitlement_id: Option<String>,
        /// The station that asked.
        station: String,
        /// Why.
        reason: RefusalReason,
        /// SHA-256 of the requested public key's SPKI, if there was one.
        public_key_sha256: Option<ByteBuf>,
    },
    /// An audit bundle was exported.
    ExportMade {
        /// Log size the previous export covered (0 for the first).
        previous_size: u64,
        /// The new bundle's ID.
        bundle_id: ByteBuf,
    },
    /// A line station was added: who may ask the site service for devices.
    StationAdded {
        /// The station's name.
        station: String,
        /// SHA-256 of its certificate.
        certificate_sha256: ByteBuf,
    },
    /// A line station was revoked.
    StationRevoked {
        /// The station's name.
        station: String,
    },
}

/// One audit log entry; its CBOR encoding is the Merkle leaf.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the log, from 0.
    pub index: u64,
    /// When (Unix milliseconds); never decreases along the log.
    pub time_ms: i64,
    /// What happened.
    pub event: Event,
}

/// Why an entry, header, chunk or frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditError {
    /// Over a size limit.
    #[error("{0} is over its size limit")]
    TooLarge(&'static str),
    /// Not the expected CBOR layout.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which part.
        what: &'static str,
        /// Decoder detail.
        detail: String,
    },
    /// A version this build does not read.
    #[error("unsupported audit {0} version {1}")]
    UnsupportedVersion(&'static str, u32),
    /// A bundle file's framing is broken.
    #[error("bundle framing: {0}")]
    Framing(&'static str),
    /// Reading the bundle failed.
    #[error("reading the bundle failed")]
    Io(String),
}

fn to_cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail for these types.
    let _ = ciborium::into_writer(v, &mut out);
    out
}

fn from_cbor<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    max: usize,
) -> Result<T, AuditError> {
    if bytes.len() > max {
        return Err(AuditError::TooLarge(what));
    }
    let mut reader = bytes;
    let v: T = ciborium::de::from_reader_with_recursion_limit(&mut reader, 16).map_err(|e| {
        AuditError::Malformed {
            what,
            detail: e.to_string(),
        }
    })?;
    if !reader.is_empty() {
        return Err(AuditError::Malformed {
            what,
            detail: "trailing bytes".into(),
        });
    }
    Ok(v)
}

impl Entry {
    /// The entry's CBOR encoding (the Merkle leaf data).
    pub fn to_cbor(&self) -> Vec<u8> {
        to_cbor(self)
    }

    /// Decodes an entry (bounded, exact fields, no trailing bytes).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, AuditError> {
        from_cbor(bytes, "audit entry", MAX_ENTRY)
    }
}

/// A tree size and root.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeHead {
    /// Number of entries.
    pub size: u64,
    /// Merkle root (32 bytes).
    pub root: ByteBuf,
}

/// The first part of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    /// Always [`VERSION`].
    pub version: u32,
    /// The exporting site.
    pub site_id: SiteId,
    /// 16 random bytes naming this bundle; every chunk repeats it.
    pub bundle_id: ByteBuf,
    /// When it was made (Unix milliseconds).
    pub created_at_ms: i64,
    /// The tree head the previous export ended at (absent for the first export).
    pub previous: Option<TreeHead>,
    /// The new checkpoint: a C2SP signed note by the site identity key (docs/formats/checkpoint.md).
    pub checkpoint: String,
    /// Consistency proof from `previous.size` to the checkpoint's size (empty for the first export).
    pub consistency_proof: Vec<ByteBuf>,
    /// Index of the first entry in the chunks (= `previous.size`, or 0).
    pub first_index: u64,
    /// Number of entries in the chunks (checkpoint size − first index).
    pub entry_count: u64,
    /// Number of chunks that follow.
    pub chunk_count: u64,
}

impl BundleHeader {
    /// CBOR encoding.
    pub fn to_cbor(&self) -> Vec<u8> {
        to_cbor(self)
    }

    /// Decodes a header (bounded, exact fields, version 1).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, AuditError> {
        let h: BundleHeader = from_cbor(bytes, "bundle header", 256 * 1024)?;
        if h.version != VERSION {
            return Err(AuditError::UnsupportedVersion("bundle header", h.version));
        }
        if h.bundle_id.len() != 16 {
            return Err(AuditError::Malformed {
                what: "bundle header",
                detail: "bundle_id must be 16 bytes".into(),
            });
        }
        if h.consistency_proof.len() > MAX_PROOF || h.consistency_proof.iter().any(|p| p.len() != 32) {
            return Err(AuditError::Malformed {
                what: "bundle header",
                detail: "bad consistency proof".into(),
            });
        }
        if h.previous.as_ref().is_some_and(|p| p.root.len() != 32) {
            return Err(AuditError::Malformed {
                what: "bundle header",
                detail: "bad previous root".into(),
            });
        }
        Ok(h)
    }
}

/// A run of consecutive entries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleChunk {
    /// The header's bundle ID.
    pub bundle_id: ByteBuf,
    /// Position of this chunk, from 0.
    pub chunk: u64,
    /// Index of its first entry.
    pub first_index: u64,
    /// Encoded entries, in log order (each exactly the leaf bytes).
    pub entries: Vec<ByteBuf>,
}

impl BundleChunk {
    /// CBOR encoding.
    pub fn to_cbor(&self) -> Vec<u8> {
        to_cbor(self)
    }

    /// Decodes a chunk (bounded, at most [`MAX_ENTRIES_PER_CHUNK`] entries of at most [`MAX_ENTRY`]).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, AuditError> {
        let c: BundleChunk = from_cbor(bytes, "bundle chunk", MAX_FRAME)?;
        if c.entries.is_empty() || c.entries.len() > MAX_ENTRIES_PER_CHUNK {
            return Err(AuditError::Malformed {
                what: "bundle chunk",
                detail: "1 to 4096 entries".into(),
            });
        }
        if c.entries.iter().any(|e| e.len() > MAX_ENTRY) {
            return Err(AuditError::TooLarge("audit entry"));
        }
        Ok(c)
    }
}

/// Writes one frame: a CBOR byte string holding `bytes`.
pub fn write_frame<W: Write>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    let len = bytes.len() as u64;
    // The length's big-endian bytes: each arm below writes only the low bytes its range needs.
    let be = len.to_be_bytes();
    let mut head = Vec::with_capacity(9);
    match len {
        0..=23 => head.push(0x40 | be[7]),
        24..=0xff => head.extend_from_slice(&[0x58, be[7]]),
        0x100..=0xffff => {
            head.push(0x59);
            head.extend_from_slice(&be[6..]);
        }
        0x1_0000..=0xffff_ffff => {
            head.push(0x5a);
            head.extend_from_slice(&be[4..]);
        }
        _ => {
            head.push(0x5b);
            head.extend_from_slice(&len.to_be_bytes());
        }
    }
    w.write_all(&head)?;
    w.write_all(bytes)
}

/// Reads the next frame (a definite-length CBOR byte string of at most `max` bytes); `Ok(None)` at
/// a clean end of input.
pub fn read_frame<R: Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, AuditError> {
    let io = |e: std::io::Error| AuditError::Io(e.to_string());
    let mut first = [0u8; 1];
    match r.read(&mut first) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(io(e)),
    }
    if first[0] >> 5 != 2 {
        return Err(AuditError::Framing("expected a CBOR byte string"));
    }
    let info = first[0] & 0x1f;
    let len: u64 = match info {
        0..=23 => u64::from(info),
        24..=27 => {
            let n = 1usize << (info - 24);
            let mut buf = [0u8; 8];
            r.read_exact(&mut buf[8 - n..])
                .map_err(|_| AuditError::Framing("truncated frame length"))?;
            let v = u64::from_be_bytes(buf);
            // Shortest form only (deterministic encoding).
            let min = match n {
                1 => 24,
                2 => 0x100,
                4 => 0x1_0000,
                _ => 0x1_0000_0000,
            };
            if v < min {
                return Err(AuditError::Framing("non-minimal frame length"));
            }
            v
        }
        _ => return Err(AuditError::Framing("indefinite or reserved length")),
    };
    if len > max as u64 {
        return Err(AuditError::TooLarge("bundle frame"));
    }
    let len = usize::try_from(len).map_err(|_| AuditError::TooLarge("bundle frame"))?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)
        .map_err(|_| AuditError::Framing("truncated frame"))?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(i: u64) -> Entry {
        Entry {
            index: i,
            time_ms: 1_000 + i as i64,
            event: Event::DeviceIssued(DeviceRecord {
                entitlement_id: "s.1".into(),
                device_serial: 10 + i,
                certificate: ByteBuf::from(vec![0x30, 0x00]),
                certificate_sha256: ByteBuf::from(vec![1; 32]),
                public_key_sha256: ByteBuf::from(vec![2; 32]),
                station: "line-1".into(),
                hq_key_index: None,
                possession_proof: None,
            }),
        }
    }

    #[test]
    fn entries_round_trip_and_refuse_trailing_bytes() {
        let events = [
            device(0),
            Entry {
                index: 1,
                time_ms: 5,
                event: Event::RequestRefused {
                    entitlement_id: None,
                    station: "x".into(),
                    reason: RefusalReason::QuotaExhausted,
                    public_key_sha256: None,
                },
            },
            Entry {
                index: 2,
                time_ms: 6,
                event: Event::ExportMade {
                    previous_size: 0,
                    bundle_id: ByteBuf::from(vec![0; 16]),
                },
            },
        ];
        for e in events {
            let b = e.to_cbor();
            assert_eq!(Entry::from_cbor(&b).unwrap(), e);
            let mut t = b.clone();
            t.push(0);
            assert!(Entry::from_cbor(&t).is_err());
            assert!(Entry::from_cbor(&b[..b.len() - 1]).is_err());
        }
        assert_eq!(RefusalReason::RateExceeded.code(), "rate-exceeded");
        let renewed = match device(3).event {
            Event::DeviceIssued(r) => Entry {
                index: 3,
                time_ms: 7,
                event: Event::DeviceRenewed(r),
            },
            _ => unreachable!(),
        };
        let b = renewed.to_cbor();
        assert_eq!(Entry::from_cbor(&b).unwrap(), renewed);
        assert!(String::from_utf8_lossy(&b).contains("device-renewed"));
    }

    #[test]
    fn refusal_codes_are_their_serialized_names() {
        for r in RefusalReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.code());
        }
    }

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let mut out = Vec::new();
        for n in [0usize, 1, 23, 24, 255, 256, 70_000] {
            write_frame(&mut out, &vec![7u8; n]).unwrap();
        }
        let mut r = out.as_slice();
        for n in [0usize, 1, 23, 24, 255, 256, 70_000] {
            assert_eq!(read_frame(&mut r, 100_000).unwrap().unwrap().len(), n);
        }
        assert_eq!(read_frame(&mut r, 100_000).unwrap(), None);
        let mut big = Vec::new();
        write_frame(&mut big, &[0u8; 300]).unwrap();
        assert_eq!(
            read_frame(&mut big.as_slice(), 299),
            Err(AuditError::TooLarge("bundle frame"))
        );
        assert!(read_frame(&mut &big[..100], 1000).is_err());
        assert!(
            read_frame(&mut &[0x58u8, 0x05][..], 1000).is_err(),
            "non-minimal length"
        );
        assert!(read_frame(&mut &[0x5fu8][..], 1000).is_err(), "indefinite length");
        assert!(read_frame(&mut &[0xa0u8][..], 1000).is_err(), "not a byte string");
    }
}
