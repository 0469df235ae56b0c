//! Why a bundle was rejected, with a stable code for each reason.

use super::*;

/// Why a bundle was rejected. Nothing was recorded, except equivocation evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// No frame at all.
    #[error("the bundle is empty")]
    Empty,
    /// A frame's CBOR framing is broken or cut short.
    #[error("frame {frame} is not a complete bundle frame (truncated or not a bundle)")]
    Framing {
        /// 1-based frame number.
        frame: u64,
        /// What is wrong.
        #[source]
        source: AuditError,
    },
    /// Fewer chunks than the header announces.
    #[error("the bundle ends after {found} of its {expected} chunks (truncated)")]
    Truncated {
        /// Chunks read.
        found: u64,
        /// Chunks announced.
        expected: u64,
    },
    /// A frame is not a sealed envelope, or its signature does not verify.
    #[error("frame {frame} is not a valid sealed envelope")]
    Envelope {
        /// 1-based frame number.
        frame: u64,
        /// What is wrong.
        #[source]
        source: EnvelopeError,
    },
    /// The signer's certificate is not a site identity certificate HQ issued.
    #[error(
        "the bundle is signed by a certificate HQ never issued to a site as its identity (wrong signer)"
    )]
    UnknownSigner,
    /// The signer's chain is not exactly one certificate.
    #[error("the bundle signer's chain must be just the site identity certificate; it has {0}")]
    SignerChain(usize),
    /// The signer's certificate does not validate (expired, wrong role, not under the root).
    #[error("the bundle signer's certificate is not valid")]
    SignerCertificate(#[source] CertError),
    /// A frame is signed by another certificate than the header.
    #[error(
        "frame {frame} is signed by another certificate than the header (spliced from another site's bundle)"
    )]
    SignerChanged {
        /// 1-based frame number.
        frame: u64,
    },
    /// A frame is not encrypted to HQ (other key, other key ID or other recipient ID).
    #[error("frame {frame} is not encrypted to HQ's key-agreement key (key ID \"hq\") for site {site}")]
    NotForHq {
        /// 1-based frame number.
        frame: u64,
        /// The signer's site.
        site: SiteId,
    },
    /// A frame holds something other than the part expected there.
    #[error("frame {frame} holds {found}, expected {expected}")]
    WrongContentType {
        /// 1-based frame number.
        frame: u64,
        /// Its content type.
        found: String,
        /// The content type expected.
        expected: &'static str,
    },
    /// The header does not decode.
    #[error("the bundle header is malformed")]
    Header(#[source] AuditError),
    /// The header names another site than the signer's.
    #[error("the bundle is signed by site {signer} but its header names site {header}")]
    WrongSite {
        /// The signer's site.
        signer: SiteId,
        /// The header's.
        header: SiteId,
    },
    /// The checkpoint does not verify with the site's identity key.
    #[error("the bundle's checkpoint does not verify with site {site}'s identity key")]
    Checkpoint {
        /// The site.
        site: SiteId,
        /// What is wrong.
        #[source]
        source: CheckpointError,
    },
    /// The checkpoint is for another log.
    #[error("the checkpoint's origin is {found:?}, expected {expected:?}")]
    WrongOrigin {
        /// The checkpoint's.
        found: String,
        /// The site's.
        expected: String,
    },
    /// Sizes and counts in the header disagree.
    #[error("the bundle header is inconsistent: {0}")]
    HeaderInconsistent(&'static str),
    /// The checkpoint was accepted before.
    #[error("the checkpoint (size {size}) was already reconciled: replayed bundle")]
    Replayed {
        /// Its size.
        size: u64,
    },
    /// The bundle ID was reconciled before.
    #[error("bundle {bundle_id} was already reconciled: replayed bundle")]
    BundleIdReused {
        /// Hex.
        bundle_id: String,
    },
    /// The checkpoint is older than the last one accepted.
    #[error(
        "the bundle ends at size {size}, older than the last checkpoint HQ accepted from this site (size {last})"
    )]
    Older {
        /// Its size.
        size: u64,
        /// HQ's last.
        last: u64,
    },
    /// The bundle does not continue where HQ's copy of the log ends.
    #[error(
        "the bundle continues from {claimed}, but HQ's copy of this site's log ends at {last}: \
         reconcile the site's bundles in order"
    )]
    PreviousMismatch {
        /// What the header says.
        claimed: String,
        /// What HQ has.
        last: String,
    },
    /// The site signed two different trees of the same size. The evidence was recorded.
    #[error(
        "EQUIVOCATION: site {site} signed two different roots for log size {}; both are kept as evidence",
        .evidence.size
    )]
    Equivocation {
        /// The site.
        site: SiteId,
        /// Both checkpoints.
        evidence: Box<Equivocation>,
    },
    /// The consistency proof does not verify.
    #[error("the consistency proof from size {from} to size {to} does not verify")]
    BadConsistencyProof {
        /// Previous size.
        from: u64,
        /// New size.
        to: u64,
        /// What is wrong.
        #[source]
        source: ProofError,
    },
    /// A chunk does not decode.
    #[error("chunk {chunk} is malformed")]
    Chunk {
        /// Chunk number.
        chunk: u64,
        /// What is wrong.
        #[source]
        source: AuditError,
    },
    /// A chunk carries another bundle's ID.
    #[error("chunk {chunk} belongs to another bundle (spliced)")]
    ForeignChunk {
        /// Chunk number (position).
        chunk: u64,
    },
    /// Chunks out of order.
    #[error("frame {frame} holds chunk {found}, expected chunk {expected} (chunks reordered, duplicated or missing)")]
    ChunkOutOfOrder {
        /// 1-based frame number.
        frame: u64,
        /// Expected chunk number.
        expected: u64,
        /// Chunk number found.
        found: u64,
    },
    /// A chunk does not start where the previous one ended.
    #[error(
        "chunk {chunk} starts at entry {found}, expected entry {expected} (entries missing or duplicated)"
    )]
    ChunkNotContiguous {
        /// Chunk number.
        chunk: u64,
        /// Expected first index.
        expected: u64,
        /// First index found.
        found: u64,
    },
    /// An entry does not decode.
    #[error("entry {index} does not decode (altered)")]
    Entry {
        /// Its position in the log.
        index: u64,
        /// What is wrong.
        #[source]
        source: AuditError,
    },
    /// An entry's index is not its position.
    #[error("the entry at position {position} says it is entry {found} (entries reordered, duplicated or deleted)")]
    EntryIndex {
        /// Its position.
        position: u64,
        /// The index it carries.
        found: u64,
    },
    /// An entry's time is before the previous entry's.
    #[error("entry {index}'s time goes back ({time_ms} ms after {previous_ms} ms)")]
    TimeWentBack {
        /// The entry.
        index: u64,
        /// Its time.
        time_ms: i64,
        /// The previous entry's time.
        previous_ms: i64,
    },
    /// More entries than the header announces.
    #[error("the chunks hold more entries than the header's {expected} (entries inserted or duplicated)")]
    TooManyEntries {
        /// Entries announced.
        expected: u64,
    },
    /// Fewer entries than the header announces.
    #[error("the chunks hold {found} entries, the header announces {expected} (entries deleted)")]
    TooFewEntries {
        /// Entries announced.
        expected: u64,
        /// Entries found.
        found: u64,
    },
    /// Something follows the last chunk.
    #[error("frames follow the bundle's last chunk")]
    TrailingFrames,
    /// The entries' Merkle root is not the checkpoint's.
    #[error(
        "the entries do not hash to the checkpoint's root for size {size} \
         (an entry was altered, deleted, inserted, duplicated or reordered)"
    )]
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
    },
    /// The last entry is not the bundle's own export-made entry.
    #[error("the bundle's last entry is not the export-made entry of this bundle")]
    NoExportEntry,
    /// HQ's stored state for the site is unusable.
    #[error("HQ's stored log state for this site is inconsistent: {0}")]
    StoredState(&'static str),
}

impl Rejection {
    /// A stable code naming the rejection.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::Framing { .. } => "framing",
            Rejection::Truncated { .. } => "truncated",
            Rejection::Envelope { .. } => "bad-envelope",
            Rejection::UnknownSigner => "unknown-signer",
            Rejection::SignerChain(_) => "signer-chain",
            Rejection::SignerCertificate(_) => "signer-certificate",
            Rejection::SignerChanged { .. } => "signer-changed",
            Rejection::NotForHq { .. } => "not-for-hq",
            Rejection::WrongContentType { .. } => "wrong-content-type",
            Rejection::Header(_) => "bad-header",
            Rejection::WrongSite { .. } => "wrong-site",
            Rejection::Checkpoint { .. } => "bad-checkpoint",
            Rejection::WrongOrigin { .. } => "wrong-origin",
            Rejection::HeaderInconsistent(_) => "header-inconsistent",
            Rejection::Replayed { .. } | Rejection::BundleIdReused { .. } => "replayed",
            Rejection::Older { .. } => "older",
            Rejection::PreviousMismatch { .. } => "previous-mismatch",
            Rejection::Equivocation { .. } => "equivocation",
            Rejection::BadConsistencyProof { .. } => "bad-consistency-proof",
            Rejection::Chunk { .. } => "bad-chunk",
            Rejection::ForeignChunk { .. } => "foreign-chunk",
            Rejection::ChunkOutOfOrder { .. } => "chunk-out-of-order",
            Rejection::ChunkNotContiguous { .. } => "chunk-not-contiguous",
            Rejection::Entry { .. } => "bad-entry",
            Rejection::EntryIndex { .. } => "entry-index",
            Rejection::TimeWentBack { .. } => "time-went-back",
            Rejection::TooManyEntries { .. } => "too-many-entries",
            Rejection::TooFewEntries { .. } => "too-few-entries",
            Rejection::TrailingFrames => "trailing-frames",
            Rejection::RootMismatch { .. } => "root-mismatch",
            Rejection::NoExportEntry => "no-export-entry",
            Rejection::StoredState(_) => "stored-state",
        }
    }
}
