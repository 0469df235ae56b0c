//! Reconciliation: HQ verifies a site's audit bundle and checks that the site kept its grants.
//!
//! docs/formats/audit.md ("What HQ checks when it reconciles a bundle") is the specification;
//! [`Hq::reconcile`] follows it step by step, **streaming**: frames are read, verified, opened and
//! their entries hashed and checked one at a time. What HQ keeps in memory is bounded by the
//! number of grants and their rate limits (the per-grant state of [`policy`]) and by the report's
//! caps ([`report::MAX_VIOLATIONS`]), never by the number of entries; uniqueness of serials and
//! keys is checked against indexed tables.
//!
//! Everything happens in one SQLite transaction. A bundle that fails any structural or
//! cryptographic check is rejected ([`Rejection`]) and the transaction rolled back, so HQ's state
//! is unchanged, with one exception: equivocation evidence is recorded. A bundle that verifies is
//! accepted (HQ's copy of the log advances to its checkpoint) even when the entries violate policy;
//! the report lists each violation, and only genuine devices (those that break no rule) enter the
//! registry.

mod db;
mod policy;
mod precheck;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use stamp_core::admission::{Ask, Breach};
use stamp_core::audit::{
    self, AuditError, BundleChunk, BundleHeader, DeviceRecord as EntryDevice, Entry, Event,
    CHUNK_CONTENT_TYPE, HEADER_CONTENT_TYPE, MAX_ENTRIES_PER_CHUNK, MAX_FRAME,
};
use stamp_core::cert::{self, CertError};
use stamp_core::checkpoint::{self, CheckpointError};
use stamp_core::device::{self, DeviceCertError};
use stamp_core::entitlement::{self, Action, GrantState, RatePeriod, Status};
use stamp_core::envelope::{self, EnvelopeError};
use stamp_core::fingerprint::sha256;
use stamp_core::key::{KeyAgreement, SignatureAlgorithm};
use stamp_core::merkle::{self, Frontier, ProofError};
use stamp_core::oid::RoleEku;
use stamp_core::profile::Profile;
use stamp_core::SiteId;
use stamp_keys::{KeyRef, KeyStore};
use stamp_store::rusqlite::Connection;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

pub(crate) use db::frontiers;
pub use db::{DeviceRecord, Equivocation};
pub use report::{
    ReconcileReport, TreeHeadSummary, Violation, ViolationKind, MAX_LISTED_ENTRIES, MAX_VIOLATIONS,
};

use crate::{Hq, HqError};
use policy::{Finding, GrantTrack};
use precheck::Prechecked;
use report::Violations;

/// How reconciliation runs ([`Hq::reconcile_with_options`]). `cache_mib` and `threads` only say
/// how it uses the machine and never change what is checked, recorded or reported;
/// `package_grace` is a policy setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// How long after HQ sealed a package for a site (its `created_at` at HQ) the site's
    /// reconciled log may still not have applied it before HQ reports it as
    /// [`ViolationKind::PackageNotApplied`], measured by HQ's clock at reconciliation (default
    /// [`DEFAULT_PACKAGE_GRACE`]).
    pub package_grace: time::Duration,
    /// SQLite page cache for the reconciliation transaction, in MiB (default 64). A large bundle
    /// is one transaction that inserts into tables keyed by hashes (random pages); SQLite's
    /// default 2 MB cache makes it write the same pages to the WAL again and again (1M entries:
    /// 3.6 GB written, 22 s of system time; 2.6 GB and 9 s with 64 MiB). The cache is most of
    /// reconciliation's memory: the rest does not grow with the bundle.
    pub cache_mib: u32,
    /// Threads computing entries' leaf hashes, decodings and certificate signature checks ahead
    /// of the in-order checks; `None`: one per core, at most 8. `Some(0)`: none, the reconciling
    /// thread does everything.
    pub threads: Option<usize>,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            package_grace: DEFAULT_PACKAGE_GRACE,
            cache_mib: 64,
            threads: None,
        }
    }
}

/// How far a site's clock may be from HQ's before its entries' times are violations: an entry may
/// be at most this much earlier than HQ made the package it runs under, or later than the bundle's
/// arrival at HQ (15 minutes).
pub const MAX_CLOCK_SKEW_MS: i64 = 15 * 60 * 1000;

/// Default [`ReconcileOptions::package_grace`]: 7 days, time for a file to travel to an offline
/// site and be imported.
pub const DEFAULT_PACKAGE_GRACE: time::Duration = time::Duration::days(7);

/// Key ID HQ's key-agreement key has in every bundle envelope.
pub const HQ_KEY_ID: &[u8] = b"hq";

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

/// How far reconciliation has got, for a progress display.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Entries checked so far.
    pub entries_done: u64,
    /// Entries in the bundle.
    pub entries_total: u64,
}

fn reject(r: Rejection) -> HqError {
    HqError::Rejected(r)
}

/// Display form of an untrusted string: at most 64 characters, control characters escaped.
fn short(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn head(size: u64, root: &[u8]) -> String {
    format!("size {size} (root {})", hex::encode(root))
}

/// The bundle signer: its site, algorithm and key, after checking step 1 for the header frame.
struct Signer {
    site: SiteId,
    leaf: Vec<u8>,
    alg: SignatureAlgorithm,
    public_key: Vec<u8>,
}

/// Opens frames: step 1 (same signer as the header) and step 2 (HQ's key, the site as recipient
/// ID, the content type expected at this position).
struct Opener<'a> {
    signer: &'a Signer,
    key: &'a dyn KeyAgreement,
}

impl Opener<'_> {
    fn open(
        &self,
        frame: u64,
        bytes: &[u8],
        content_type: &'static str,
    ) -> Result<impl std::ops::Deref<Target = Vec<u8>>, Rejection> {
        let env = |source| Rejection::Envelope { frame, source };
        let signed = envelope::parse(bytes, MAX_FRAME).map_err(env)?;
        if !matches!(signed.chain(), [only] if *only == self.signer.leaf) {
            return Err(Rejection::SignerChanged { frame });
        }
        let verified = signed
            .verify(self.signer.alg, &self.signer.public_key, &[])
            .map_err(env)?;
        if verified.content_type() != content_type {
            return Err(Rejection::WrongContentType {
                frame,
                found: short(verified.content_type()),
                expected: content_type,
            });
        }
        let not_for_hq = || Rejection::NotForHq {
            frame,
            site: self.signer.site.clone(),
        };
        if verified.key_id() != HQ_KEY_ID {
            return Err(not_for_hq());
        }
        verified
            .open(self.key, self.signer.site.as_str().as_bytes())
            .map_err(|e| match e {
                EnvelopeError::NotAddressedToUs => not_for_hq(),
                other => env(other),
            })
    }
}

impl Hq {
    /// Reconciles one audit bundle (see the module documentation and docs/formats/audit.md).
    ///
    /// Returns the report of a bundle that verified (`ok` is false when it lists violations), or
    /// [`HqError::Rejected`] naming the first structural or cryptographic failure, with HQ's state
    /// unchanged except for equivocation evidence.
    pub fn reconcile(&mut self, bundle: impl Read, now: OffsetDateTime) -> Result<ReconcileReport, HqError> {
        self.reconcile_with_progress(bundle, now, &mut |_| {})
    }

    /// [`Hq::reconcile`], calling `progress` after every chunk.
    pub fn reconcile_with_progress(
        &mut self,
        bundle: impl Read,
        now: OffsetDateTime,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ReconcileReport, HqError> {
        self.reconcile_with_options(bundle, now, ReconcileOptions::default(), progress)
    }

    /// [`Hq::reconcile_with_progress`] with the cache and threads of `options`.
    pub fn reconcile_with_options(
        &mut self,
        mut bundle: impl Read,
        now: OffsetDateTime,
        options: ReconcileOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ReconcileReport, HqError> {
        let (_, root) = self.store.own_key(Profile::OemRoot)?;
        let (ka_ref, _) = self.store.own_key(Profile::HqAuthorityKeyAgreement)?;
        let key = self.keys.open_key_agreement(&KeyRef::parse(&ka_ref)?)?;

        // Steps 1 to 3 for the header frame.
        let header_frame = audit::read_frame(&mut bundle, MAX_FRAME)
            .map_err(|source| reject(Rejection::Framing { frame: 1, source }))?
            .ok_or(reject(Rejection::Empty))?;
        let signer = self.bundle_signer(&header_frame, &root, now)?;
        let opener = Opener {
            signer: &signer,
            key: key.as_ref(),
        };
        let plain = opener
            .open(1, &header_frame, HEADER_CONTENT_TYPE)
            .map_err(reject)?;
        let header = BundleHeader::from_cbor(&plain).map_err(|e| reject(Rejection::Header(e)))?;
        drop(plain);
        let site = signer.site.clone();
        if header.site_id != site {
            return Err(reject(Rejection::WrongSite {
                signer: site,
                header: header.site_id,
            }));
        }
        let origin = format!("stamp/site/{site}");
        let cp = checkpoint::verify(
            header.checkpoint.as_bytes(),
            &origin,
            signer.alg,
            &signer.public_key,
        )
        .map_err(|source| {
            reject(Rejection::Checkpoint {
                site: site.clone(),
                source,
            })
        })?;
        if cp.origin() != origin {
            return Err(reject(Rejection::WrongOrigin {
                found: short(cp.origin()),
                expected: origin,
            }));
        }
        check_counts(&header, cp.size()).map_err(reject)?;

        let ca_der = self.store.site_certificate(&site, Profile::SiteIssuingCa)?;
        let ca = cert::parse(&ca_der).map_err(|e| HqError::StoredCert("site issuing CA", e))?;
        let now_text = crate::store::ts(now);
        let cp_root = *cp.root();
        let cp_size = cp.size();

        // The whole bundle is one transaction, with the page cache of `options` for this
        // transaction only (see `ReconcileOptions::cache_mib`). A performance setting only: if
        // SQLite refuses it, reconciliation runs as before.
        let cache_before: Option<i64> = self
            .store
            .conn()
            .pragma_query_value(None, "cache_size", |r| r.get(0))
            .ok();
        let _ = self.store.conn().pragma_update(
            None,
            "cache_size",
            -i64::from(options.cache_mib).saturating_mul(1024),
        );
        let result = self.store.db_mut().transaction(|tx| {
            let log = db::site_log(tx, &site)?;
            check_continuity(tx, &site, &header, cp_size, &cp_root, log.as_ref())?;
            let frontier = match &log {
                Some(l) => {
                    let f = Frontier::from_bytes(&l.frontier)
                        .map_err(|_| reject(Rejection::StoredState("frontier")))?;
                    if f.size() != l.size || f.root().as_slice() != l.root.as_slice() {
                        return Err(reject(Rejection::StoredState(
                            "frontier does not match the checkpoint",
                        )));
                    }
                    f
                }
                None => Frontier::new(),
            };
            let mut run = Run {
                tx,
                site: &site,
                ca: &ca,
                bundle_id: &header.bundle_id,
                now: &now_text,
                now_ms: i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
                grants: HashMap::new(),
                last_sequence: log.as_ref().map_or(0, |l| l.last_sequence),
                violations: Violations::default(),
                devices_issued: 0,
                devices_recorded: 0,
                applied: 0,
                refusals: BTreeMap::new(),
            };
            let stream = Stream {
                header: &header,
                opener: &opener,
                frontier,
                next_index: header.first_index,
                last_time_ms: log.as_ref().map_or(i64::MIN, |l| l.last_time_ms),
                last_is_export: false,
                workers: options.threads.unwrap_or_else(precheck::workers),
            };
            let stream = stream.run(&mut bundle, &mut run, progress)?;
            // Step 6: the entries are exactly the ones the checkpoint covers.
            if stream.frontier.root() != cp_root {
                return Err(reject(Rejection::RootMismatch { size: cp_size }));
            }
            if !stream.last_is_export {
                return Err(reject(Rejection::NoExportEntry));
            }
            let new_log = db::SiteLog {
                size: cp_size,
                root: cp_root.to_vec(),
                note: header.checkpoint.clone(),
                frontier: stream.frontier.to_bytes(),
                last_time_ms: stream.last_time_ms,
                last_sequence: run.last_sequence,
            };
            run.unapplied_packages(now, options.package_grace)?;
            run.finish(&header, log.as_ref(), &new_log, cp_size)
        });
        if let Some(c) = cache_before {
            let _ = self.store.conn().pragma_update(None, "cache_size", c);
        }
        if let Err(HqError::Rejected(Rejection::Equivocation { site, evidence })) = &result {
            db::record_equivocation(self.store.conn(), site, evidence, &header_frame, &now_text)?;
        }
        result
    }

    /// Step 1 for the header frame: the signer's certificate is one HQ issued to a site as its
    /// identity, and valid under the OEM root with that role.
    fn bundle_signer(&self, frame: &[u8], root: &[u8], now: OffsetDateTime) -> Result<Signer, HqError> {
        let signed = envelope::parse(frame, MAX_FRAME)
            .map_err(|source| reject(Rejection::Envelope { frame: 1, source }))?;
        let [leaf] = signed.chain() else {
            return Err(reject(Rejection::SignerChain(signed.chain().len())));
        };
        let site = db::site_of_identity_cert(self.store.conn(), &sha256(leaf))?
            .and_then(|s| SiteId::new(&s).ok())
            .ok_or(reject(Rejection::UnknownSigner))?;
        cert::validate_end_entity(
            "bundle signer",
            leaf,
            &[],
            root,
            Profile::SiteIdentitySigning,
            RoleEku::SiteIdentity,
            now,
        )
        .map_err(|e| reject(Rejection::SignerCertificate(e)))?;
        let c = cert::parse(leaf).map_err(|e| reject(Rejection::SignerCertificate(e)))?;
        let alg = stamp_core::csr::classify_spki(c.public_key().raw)
            .ok()
            .and_then(stamp_core::ceremony::signature_algorithm)
            .ok_or(reject(Rejection::SignerCertificate(CertError::UnsupportedKey(
                "bundle signer",
            ))))?;
        Ok(Signer {
            site,
            leaf: leaf.clone(),
            alg,
            public_key: c.public_key().subject_public_key.data.to_vec(),
        })
    }
}

/// The header's own arithmetic: first index, entry and chunk counts.
fn check_counts(h: &BundleHeader, size: u64) -> Result<(), Rejection> {
    use Rejection::HeaderInconsistent as Bad;
    if h.first_index != h.previous.as_ref().map_or(0, |p| p.size) {
        return Err(Bad("first_index is not the previous size"));
    }
    if size.checked_sub(h.first_index) != Some(h.entry_count) {
        return Err(Bad("entry_count is not the checkpoint size minus first_index"));
    }
    if h.entry_count == 0 {
        return Err(Bad("no entries (every bundle ends with its export-made entry)"));
    }
    if h.chunk_count == 0
        || h.chunk_count > h.entry_count
        || h.chunk_count.saturating_mul(MAX_ENTRIES_PER_CHUNK as u64) < h.entry_count
    {
        return Err(Bad("chunk_count cannot hold entry_count entries"));
    }
    if h.previous.is_none() && !h.consistency_proof.is_empty() {
        return Err(Bad("a first bundle has no consistency proof"));
    }
    Ok(())
}

/// Step 4: the checkpoint is new, not older than HQ's last, and extends it.
fn check_continuity(
    c: &Connection,
    site: &SiteId,
    h: &BundleHeader,
    size: u64,
    root: &merkle::Hash,
    log: Option<&db::SiteLog>,
) -> Result<(), HqError> {
    if let Some((seen_root, seen_note)) = db::checkpoint_at(c, site, size)? {
        if seen_root.as_slice() == root.as_slice() {
            return Err(reject(Rejection::Replayed { size }));
        }
        return Err(reject(Rejection::Equivocation {
            site: site.clone(),
            evidence: Box::new(Equivocation {
                size,
                accepted_root: seen_root,
                accepted_note: seen_note,
                conflicting_root: root.to_vec(),
                conflicting_note: h.checkpoint.clone(),
            }),
        }));
    }
    if let Some(l) = log {
        if size < l.size {
            return Err(reject(Rejection::Older { size, last: l.size }));
        }
    }
    if db::bundle_seen(c, site, &h.bundle_id)? {
        return Err(reject(Rejection::BundleIdReused {
            bundle_id: hex::encode(&h.bundle_id),
        }));
    }
    let mismatch = || {
        reject(Rejection::PreviousMismatch {
            claimed: h
                .previous
                .as_ref()
                .map_or("the empty log".into(), |p| head(p.size, &p.root)),
            last: log.map_or("the empty log (no bundle reconciled yet)".into(), |l| {
                head(l.size, &l.root)
            }),
        })
    };
    match (&h.previous, log) {
        (None, None) => Ok(()),
        (Some(p), Some(l)) if p.size == l.size => {
            let proof = merkle::verify_consistency(p.size, size, &h.consistency_proof, &p.root, root);
            if p.root.as_slice() == l.root.as_slice() {
                proof.map_err(|source| {
                    reject(Rejection::BadConsistencyProof {
                        from: p.size,
                        to: size,
                        source,
                    })
                })
            } else if proof.is_ok() {
                // The new checkpoint provably extends a tree of size p.size whose root is not
                // the one the site signed before: two different logs.
                Err(reject(Rejection::Equivocation {
                    site: site.clone(),
                    evidence: Box::new(Equivocation {
                        size: p.size,
                        accepted_root: l.root.clone(),
                        accepted_note: l.note.clone(),
                        conflicting_root: p.root.to_vec(),
                        conflicting_note: h.checkpoint.clone(),
                    }),
                }))
            } else {
                Err(mismatch())
            }
        }
        _ => Err(mismatch()),
    }
}

/// Steps 5 and 6 over the chunks, feeding each entry to the policy checks.
struct Stream<'a> {
    header: &'a BundleHeader,
    opener: &'a Opener<'a>,
    frontier: Frontier,
    next_index: u64,
    last_time_ms: i64,
    last_is_export: bool,
    /// Threads computing entries' [`Prechecked`] ahead.
    workers: usize,
}

impl Stream<'_> {
    fn run(
        mut self,
        bundle: &mut impl Read,
        run: &mut Run<'_>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, HqError> {
        let h = self.header;
        let end = h
            .first_index
            .checked_add(h.entry_count)
            .ok_or(reject(Rejection::HeaderInconsistent("entry count overflows")))?;
        for chunk_no in 0..h.chunk_count {
            let frame = chunk_no + 2;
            let bytes = audit::read_frame(bundle, MAX_FRAME)
                .map_err(|source| reject(Rejection::Framing { frame, source }))?
                .ok_or(reject(Rejection::Truncated {
                    found: chunk_no,
                    expected: h.chunk_count,
                }))?;
            let plain = self
                .opener
                .open(frame, &bytes, CHUNK_CONTENT_TYPE)
                .map_err(reject)?;
            drop(bytes);
            let chunk = BundleChunk::from_cbor(&plain).map_err(|source| {
                reject(Rejection::Chunk {
                    chunk: chunk_no,
                    source,
                })
            })?;
            drop(plain);
            if chunk.bundle_id != h.bundle_id {
                return Err(reject(Rejection::ForeignChunk { chunk: chunk_no }));
            }
            if chunk.chunk != chunk_no {
                return Err(reject(Rejection::ChunkOutOfOrder {
                    frame,
                    expected: chunk_no,
                    found: chunk.chunk,
                }));
            }
            if chunk.first_index != self.next_index {
                return Err(reject(Rejection::ChunkNotContiguous {
                    chunk: chunk_no,
                    expected: self.next_index,
                    found: chunk.first_index,
                }));
            }
            if end - self.next_index < chunk.entries.len() as u64 {
                return Err(reject(Rejection::TooManyEntries {
                    expected: h.entry_count,
                }));
            }
            // What needs no state (most of the CPU) is computed ahead on every core; this
            // thread takes the results strictly in log order, so every check, and which failure
            // is reported first, is exactly as if each entry were handled whole, one by one.
            let ca = run.ca;
            precheck::in_order(&chunk.entries, ca, self.workers, |pre| self.entry(pre, run))?;
            progress(Progress {
                entries_done: self.next_index - h.first_index,
                entries_total: h.entry_count,
            });
        }
        if self.next_index != end {
            return Err(reject(Rejection::TooFewEntries {
                expected: h.entry_count,
                found: self.next_index - h.first_index,
            }));
        }
        match audit::read_frame(bundle, MAX_FRAME) {
            Ok(None) => Ok(self),
            _ => Err(reject(Rejection::TrailingFrames)),
        }
    }

    fn entry(&mut self, pre: Prechecked, run: &mut Run<'_>) -> Result<(), HqError> {
        let index = self.next_index;
        self.frontier
            .append(pre.leaf)
            .map_err(|_| reject(Rejection::HeaderInconsistent("the log is full")))?;
        let entry = pre
            .entry
            .map_err(|source| reject(Rejection::Entry { index, source }))?;
        if entry.index != index {
            return Err(reject(Rejection::EntryIndex {
                position: index,
                found: entry.index,
            }));
        }
        if entry.time_ms < self.last_time_ms {
            return Err(reject(Rejection::TimeWentBack {
                index,
                time_ms: entry.time_ms,
                previous_ms: self.last_time_ms,
            }));
        }
        self.last_time_ms = entry.time_ms;
        self.last_is_export = matches!(
            &entry.event,
            Event::ExportMade { previous_size, bundle_id }
                if *previous_size == self.header.first_index && *bundle_id == self.header.bundle_id
        );
        self.next_index += 1;
        run.entry(index, entry, pre.issued)
    }
}

/// The policy checks and what they record, inside the reconciliation transaction.
struct Run<'a> {
    tx: &'a Connection,
    site: &'a SiteId,
    ca: &'a X509Certificate<'a>,
    bundle_id: &'a [u8],
    now: &'a str,
    /// The bundle's arrival at HQ (Unix milliseconds, HQ's clock).
    now_ms: i64,
    /// Grants the log has applied, loaded as entries refer to them: bounded by the site's grants.
    grants: HashMap<String, GrantTrack>,
    last_sequence: u64,
    violations: Violations,
    devices_issued: u64,
    devices_recorded: u64,
    applied: u64,
    refusals: BTreeMap<String, u64>,
}

impl Run<'_> {
    /// `issued` is [`device::verify_issued`] for the entry's certificate, computed ahead.
    fn entry(&mut self, index: u64, entry: Entry, issued: Option<Issued>) -> Result<(), HqError> {
        if entry.time_ms > self.now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            let t = rfc3339_ms(entry.time_ms);
            self.violations.add(ViolationKind::TimeInFuture, None, "", index, |n| {
                format!(
                    "{n} entr(ies) dated more than 15 minutes after the bundle reached HQ (the first at {t}): \
                     the site's clock is ahead"
                )
            });
        }
        match entry.event {
            Event::EntitlementApplied {
                entitlement_id,
                sequence,
                action,
                package_sha256,
            } => self.applied(
                index,
                entry.time_ms,
                &entitlement_id,
                sequence,
                &action,
                &package_sha256,
            ),
            Event::DeviceIssued(d) => self.device(index, entry.time_ms, &d, false, issued),
            Event::KeyHandedOut(d) => self.device(index, entry.time_ms, &d, true, issued),
            Event::DeviceRenewed(d) => self.renewed(index, entry.time_ms, &d, issued),
            Event::RequestRefused { reason, .. } => {
                *self.refusals.entry(reason.code().to_owned()).or_insert(0) += 1;
                Ok(())
            }
            // In the log for the record (who could ask for devices, from when to when); the site
            // service enforces a revocation per request and logs what it refuses.
            Event::ExportMade { .. } | Event::StationAdded { .. } | Event::StationRevoked { .. } => Ok(()),
        }
    }

    /// Loads a grant the log applied in an earlier bundle, if not in memory yet.
    fn load(&mut self, id: &str) -> Result<bool, HqError> {
        if self.grants.contains_key(id) {
            return Ok(true);
        }
        match db::grant(self.tx, self.site, id)? {
            Some(row) => {
                let mut track = GrantTrack::restore(row.state, row.issued, &row.tails);
                track.frontier = row.frontier;
                self.grants.insert(id.to_owned(), track);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// An entitlement-applied entry: the grant or amendment HQ sealed with that sequence is in
    /// force from here on.
    fn applied(
        &mut self,
        index: u64,
        time_ms: i64,
        id: &str,
        sequence: u64,
        action: &str,
        sha: &[u8],
    ) -> Result<(), HqError> {
        let v = &mut self.violations;
        let group = index.to_string();
        if sequence <= self.last_sequence {
            let last = self.last_sequence;
            v.add(
                ViolationKind::PackageOutOfOrder,
                Some(&short(id)),
                &group,
                index,
                |_| format!("package {sequence} applied after package {last}"),
            );
            return Ok(());
        }
        let Some(db::Package {
            entitlement_id: pkg_id,
            action: pkg_action,
            entitlement: e,
            sealed,
        }) = db::package(self.tx, self.site, sequence)?
        else {
            v.add(
                ViolationKind::UnknownPackage,
                Some(&short(id)),
                &group,
                index,
                |_| format!("HQ never made a package with sequence {sequence} for this site"),
            );
            return Ok(());
        };
        if pkg_id != id || pkg_action != action {
            v.add(ViolationKind::UnknownPackage, Some(&short(id)), &group, index, |_| {
                format!(
                    "the entry says package {sequence} is {} of {}; HQ's package {sequence} is {pkg_action} of {pkg_id}",
                    short(action),
                    short(id)
                )
            });
            return Ok(());
        }
        if sequence > self.last_sequence.saturating_add(1) {
            let first = self.last_sequence + 1;
            let skipped = if first == sequence - 1 {
                format!("package {first}")
            } else {
                format!("packages {first} to {}", sequence - 1)
            };
            v.add(ViolationKind::PackageSkipped, Some(&short(id)), &group, index, |_| {
                format!(
                    "package {sequence} applied while {skipped} HQ sealed for this site never was (a site applies packages strictly in sequence)"
                )
            });
        }
        self.last_sequence = sequence;
        self.applied += 1;
        // Times never go back along a log, so an entry that applies a package bounds every later
        // entry: none can be earlier than HQ made the package (less the allowed skew).
        let made_ms = e.issued_at.saturating_mul(1000);
        if time_ms < made_ms.saturating_sub(MAX_CLOCK_SKEW_MS) {
            let (t, made) = (rfc3339_ms(time_ms), rfc3339_ms(made_ms));
            v.add(ViolationKind::TimeBeforePackage, Some(id), &group, index, |_| {
                format!("package {sequence} applied at {t}, before HQ made it at {made}: the site's clock is behind")
            });
        }
        if sha256(&sealed).as_slice() != sha {
            v.add(ViolationKind::UnknownPackage, Some(id), &group, index, |_| {
                format!(
                    "package {sequence}'s SHA-256 differs from the package HQ sealed (altered in transit?)"
                )
            });
        }
        match e.action {
            Action::Grant(g) => {
                self.grants
                    .entry(id.to_owned())
                    .or_insert_with(|| GrantTrack::new(GrantState::new(g, sequence)));
            }
            Action::Amend(a) => {
                let target = a.entitlement_id.clone();
                if !self.load(&target)? {
                    self.violations
                        .add(ViolationKind::InvalidAmendment, Some(id), &group, index, |_| {
                            format!("package {sequence} amends {target}, which the log never applied")
                        });
                    return Ok(());
                }
                if let Some(t) = self.grants.get_mut(&target) {
                    match entitlement::amend(&t.state, &a, sequence) {
                        Ok(next) => t.state = next,
                        Err(err) => self.violations.add(
                            ViolationKind::InvalidAmendment,
                            Some(id),
                            &group,
                            index,
                            |_| format!("package {sequence} cannot apply to {target}: {err}"),
                        ),
                    }
                }
            }
        }
        Ok(())
    }

    /// A renewal: a new certificate for a device HQ registered from this site, under the same
    /// grant. Checked like an issuance (issuer, profile, the entry's claims, notBefore), then
    /// by the grant's rule for renewals; a new key needs the device's proof of possession by its
    /// live certificate's key, and must be certified nowhere else in this site's logs. A genuine
    /// renewal becomes the serial's live certificate and supersedes the one before.
    fn renewed(
        &mut self,
        index: u64,
        time_ms: i64,
        d: &EntryDevice,
        issued: Option<Issued>,
    ) -> Result<(), HqError> {
        let id = short(&d.entitlement_id);
        let mut genuine = true;
        self.load(&d.entitlement_id)?;
        let site = self.site;
        let serial = d.device_serial;
        let v = &mut self.violations;
        let mismatch = |what: &'static str, v: &mut Violations| {
            v.add(ViolationKind::CertificateMismatch, Some(&id), what, index, |n| {
                format!("{n} entr(ies) whose {what} disagree with the certificate or the entry's kind")
            });
            false
        };
        if sha256(&d.certificate).as_slice() != d.certificate_sha256.as_slice() {
            genuine &= mismatch("certificate SHA-256", v);
        }
        if d.hq_key_index.is_some() {
            genuine &= mismatch("HQ key index (a renewal has none)", v);
        }
        let live = db::live_device(self.tx, serial)?
            .filter(|l| l.site_id == site.as_str() && l.entitlement_id == d.entitlement_id);
        let Some(t) = self.grants.get(&d.entitlement_id) else {
            v.add(ViolationKind::UnknownEntitlement, Some(&id), "", index, |n| {
                format!("{n} renewal(s) under entitlement {id}, which the site's log never applied")
            });
            return Ok(());
        };
        match check_device(&d.certificate, &t.state.grant, self.ca, issued) {
            Ok(info) => {
                if info.device_serial != serial {
                    genuine &= mismatch("device serial", v);
                }
                if info.public_key_sha256.as_slice() != d.public_key_sha256.as_slice() {
                    genuine &= mismatch("public key SHA-256", v);
                }
                genuine &= not_before_matches(v, &id, index, time_ms, &info);
            }
            Err(e) => genuine &= certificate_refused(v, &id, site, index, e),
        }
        let Some(live) = live else {
            v.add(
                ViolationKind::RenewalOfUnknownDevice,
                Some(&id),
                &serial.to_string(),
                index,
                |n| format!("{n} renewal(s) of device serial {serial}, which HQ never registered from site {site} under {id}"),
            );
            return Ok(());
        };
        let keeps_key = live.public_key_sha256.as_slice() == d.public_key_sha256.as_slice();
        if !keeps_key {
            let proven = <[u8; 32]>::try_from(d.public_key_sha256.as_slice()).is_ok_and(|new_key| {
                d.possession_proof
                    .as_ref()
                    .is_some_and(|p| device::verify_renewal_proof(&live.certificate, &new_key, p).is_ok())
            });
            if !proven {
                genuine = false;
                v.add(
                    ViolationKind::PossessionNotProven,
                    Some(&id),
                    &serial.to_string(),
                    index,
                    |n| {
                        format!(
                            "{n} renewal(s) of device serial {serial} for a new key without the device's proof of \
                             possession (a station or the site alone asked)"
                        )
                    },
                );
            }
        }
        let period_ms = t.state.grant.renewal_limit.period.seconds() * 1000;
        let before = db::count_renewal(self.tx, serial, time_ms, period_ms)?;
        for b in t.renew(keeps_key, time_ms, &d.station, None, serial, before) {
            genuine = false;
            breach(v, &id, index, "renewed", b);
        }
        if !keeps_key && d.public_key_sha256.len() == 32 {
            genuine &= self.key_unique(d, index, genuine)?;
        }
        if genuine && db::record_device(self.tx, site, d, time_ms, index, self.bundle_id, self.now)? {
            db::set_live(self.tx, serial, &d.certificate_sha256)?;
            self.devices_recorded += 1;
        }
        Ok(())
    }

    /// Uniqueness of a new key: certified before in this site's logs, it is a violation of this
    /// site (returns false). Certified first by another site, it is reported, and neither device
    /// loses its standing: each is its own serial, usable only with the private key, and one
    /// site must not be able to burn another's devices by logging their public keys first. An
    /// entry that is no longer `genuine` claims nothing.
    fn key_unique(&mut self, d: &EntryDevice, index: u64, genuine: bool) -> Result<bool, HqError> {
        let (site, grant) = (self.site, d.entitlement_id.as_str());
        let id = short(grant);
        let first = if genuine {
            db::claim_public_key(self.tx, &d.public_key_sha256, site, grant, index)?
        } else {
            db::public_key_use(self.tx, &d.public_key_sha256)?
        };
        let Some(first) = first else {
            return Ok(true);
        };
        let key = hex::encode(&d.public_key_sha256);
        self.violations
            .add(ViolationKind::KeyReused, Some(&id), &key, index, |n| {
                format!(
                    "public key (SPKI SHA-256 {key}) certified {n} more time(s); first {}",
                    first_use(&first, site)
                )
            });
        if first.site_id == site.as_str() {
            self.violations
                .note_earlier(ViolationKind::KeyReused, first.log_index);
            return Ok(false);
        }
        Ok(true)
    }

    /// A device-issued or key-handed-out entry: the grant's rule (as the site applies it), the
    /// serial in the grant's ranges, the certificate (issuer, profile, notBefore, the entry's
    /// claims), HQ-generated keys; then uniqueness. Only an entry that breaks nothing claims its
    /// serial and key: a violating entry can never take them from the device they belong to.
    fn device(
        &mut self,
        index: u64,
        time_ms: i64,
        d: &EntryDevice,
        handed_out: bool,
        issued: Option<Issued>,
    ) -> Result<(), HqError> {
        self.devices_issued += 1;
        let id = short(&d.entitlement_id);
        let mut genuine = true;
        self.load(&d.entitlement_id)?;
        let site = self.site;
        let v = &mut self.violations;
        let mismatch = |what: &'static str, v: &mut Violations| {
            v.add(ViolationKind::CertificateMismatch, Some(&id), what, index, |n| {
                format!("{n} entr(ies) whose {what} disagree with the certificate or the entry's kind")
            });
            false
        };
        if sha256(&d.certificate).as_slice() != d.certificate_sha256.as_slice() {
            genuine &= mismatch("certificate SHA-256", v);
        }
        match (handed_out, d.hq_key_index) {
            (true, None) => genuine &= mismatch("HQ key index (missing)", v),
            (false, Some(_)) => genuine &= mismatch("HQ key index (a device's own key has none)", v),
            _ => {}
        }
        if d.possession_proof.is_some() {
            genuine &= mismatch("proof of possession (only a renewal has one)", v);
        }
        let Some(t) = self.grants.get_mut(&d.entitlement_id) else {
            let whose = match db::grant_site(self.tx, &d.entitlement_id)? {
                Some(s) if s == site.as_str() => "the site's log never applied".to_owned(),
                Some(s) => format!("HQ made for site {s}"),
                None => "HQ never made".to_owned(),
            };
            v.add(ViolationKind::UnknownEntitlement, Some(&id), "", index, |n| {
                format!("{n} device(s) issued under entitlement {id}, which {whose}")
            });
            return Ok(());
        };
        t.first_issued(d.device_serial);
        let ask = if handed_out { Ask::HandOut } else { Ask::Issue };
        let mut in_range = true;
        for f in t.issue(ask, time_ms, &d.station, None, d.device_serial) {
            genuine = false;
            in_range &= f != Finding::SerialOutsideRange;
            finding(v, &t.state, &id, index, time_ms, f);
        }
        // HQ-generated keys: a hand-out names one HQ made for this grant, with its key.
        if let (true, Some(k)) = (handed_out, d.hq_key_index) {
            let generated = usize::try_from(k)
                .ok()
                .and_then(|k| t.state.grant.device_keys.get(k))
                .is_some_and(|key| key.spki_sha256.as_slice() == d.public_key_sha256.as_slice());
            if !generated {
                genuine = false;
                v.add(ViolationKind::UnknownHqKey, Some(&id), &k.to_string(), index, |n| {
                    format!("{n} hand-out(s) of HQ key {k} of {id} with a public key HQ did not generate as that key")
                });
            }
        }
        match check_device(&d.certificate, &t.state.grant, self.ca, issued) {
            Ok(info) => {
                if info.device_serial != d.device_serial {
                    genuine &= mismatch("device serial", v);
                }
                if info.public_key_sha256.as_slice() != d.public_key_sha256.as_slice() {
                    genuine &= mismatch("public key SHA-256", v);
                }
                genuine &= not_before_matches(v, &id, index, time_ms, &info);
            }
            Err(e) => genuine &= certificate_refused(v, &id, site, index, e),
        }
        // Uniqueness, across every bundle of every site: serials, public keys, HQ keys. A serial
        // outside the grant's ranges is not the grant's to claim (it is reported above).
        let grant = d.entitlement_id.as_str();
        let serial = d.device_serial;
        if in_range {
            let first = if genuine {
                db::claim_serial(self.tx, serial, site, grant, index)?
            } else {
                db::serial_use(self.tx, serial)?
            };
            if let Some(first) = first {
                genuine = false;
                v.add(
                    ViolationKind::SerialReused,
                    Some(&id),
                    &serial.to_string(),
                    index,
                    |n| {
                        format!(
                            "device serial {serial} issued {n} more time(s); first {}",
                            first_use(&first, site)
                        )
                    },
                );
                if first.site_id == site.as_str() {
                    v.note_earlier(ViolationKind::SerialReused, first.log_index);
                }
            }
        }
        if d.public_key_sha256.len() != 32 {
            genuine &= mismatch("public key SHA-256 (not 32 bytes)", v);
        } else {
            genuine &= self.key_unique(d, index, genuine)?;
        }
        if let (true, Some(k)) = (handed_out, d.hq_key_index) {
            if let Some(first) = db::claim_hq_key(self.tx, grant, k, site, index)? {
                genuine = false;
                self.violations.add(
                    ViolationKind::HqKeyReused,
                    Some(&id),
                    &k.to_string(),
                    index,
                    |n| {
                        format!(
                            "HQ-generated key {k} of {id} handed out {n} more time(s); first {}",
                            first_use(&first, site)
                        )
                    },
                );
                if first.site_id == site.as_str() {
                    self.violations
                        .note_earlier(ViolationKind::HqKeyReused, first.log_index);
                }
            }
        }
        if genuine && db::record_device(self.tx, site, d, time_ms, index, self.bundle_id, self.now)? {
            db::set_live(self.tx, serial, &d.certificate_sha256)?;
            self.devices_recorded += 1;
        }
        Ok(())
    }

    /// Stores the new state and the report.
    /// Every package HQ sealed for the site above the last one the log applied, sealed more than
    /// `grace` before `now` (HQ's clock for both): [`ViolationKind::PackageNotApplied`]. Packages
    /// the log skipped are reported where it skipped them ([`ViolationKind::PackageSkipped`]).
    fn unapplied_packages(&mut self, now: OffsetDateTime, grace: time::Duration) -> Result<(), HqError> {
        let rows = db::packages_after(self.tx, self.site, self.last_sequence)?;
        for (sequence, id, action, created_at) in rows {
            let created = OffsetDateTime::parse(&created_at, &time::format_description::well_known::Rfc3339)
                .map_err(|_| reject(Rejection::StoredState("a package's creation time")))?;
            let age = now - created;
            if age <= grace {
                continue;
            }
            let last = self.last_sequence;
            self.violations.add_unlogged(
                ViolationKind::PackageNotApplied,
                Some(&short(&id)),
                format!(
                    "package {sequence} ({action} of {id}), sealed by HQ at {created_at}, is not applied in the reconciled log {} later (grace {}; the log's last package is {last}): `stamp hq export-package` re-exports it",
                    span(age),
                    span(grace)
                ),
            );
        }
        Ok(())
    }

    fn finish(
        self,
        header: &BundleHeader,
        previous: Option<&db::SiteLog>,
        log: &db::SiteLog,
        size: u64,
    ) -> Result<ReconcileReport, HqError> {
        for t in self.grants.values() {
            db::save_grant(self.tx, self.site, &t.state, t.issued, &t.tails(), self.now)?;
            db::save_frontier(self.tx, &t.state.grant.entitlement_id, t.frontier)?;
        }
        let ok = self.violations.is_empty();
        let (violations, violations_omitted) = self.violations.finish();
        let report = ReconcileReport {
            ok,
            site_id: self.site.clone(),
            bundle_id: hex::encode(&header.bundle_id),
            first_index: header.first_index,
            entries: header.entry_count,
            devices_issued: self.devices_issued,
            devices_recorded: self.devices_recorded,
            entitlements_applied: self.applied,
            refusals_by_reason: self.refusals,
            previous: previous.map(|p| TreeHeadSummary {
                size: p.size,
                root: hex::encode(&p.root),
            }),
            checkpoint: TreeHeadSummary {
                size,
                root: hex::encode(&log.root),
            },
            violations_omitted,
            violations,
        };
        let count = report.violations.len() as u64 + report.violations_omitted;
        db::accept(
            self.tx,
            self.site,
            &db::Accepted {
                log,
                bundle_id: &header.bundle_id,
                first_index: header.first_index,
                entry_count: header.entry_count,
                created_at_ms: header.created_at_ms,
                violations: count,
                devices_recorded: report.devices_recorded,
                report_json: &serde_json::to_string(&report)?,
            },
            self.now,
        )?;
        Ok(report)
    }
}

/// A duration for people, in its largest whole unit: "8 days", "36 hours", "0 seconds".
fn span(d: time::Duration) -> String {
    let (n, unit) = if d.whole_days() >= 2 {
        (d.whole_days(), "days")
    } else if d.whole_hours() >= 2 {
        (d.whole_hours(), "hours")
    } else if d.whole_minutes() >= 2 {
        (d.whole_minutes(), "minutes")
    } else {
        (d.whole_seconds(), "seconds")
    };
    format!("{n} {unit}")
}

/// What [`device::verify_issued`] returned for a certificate, if computed ahead.
type Issued = Result<device::Issued, DeviceCertError>;

/// `device::check(der, grant, ca)`, finished from the half computed ahead when there is one.
fn check_device(
    der: &[u8],
    grant: &entitlement::Grant,
    ca: &X509Certificate<'_>,
    issued: Option<Issued>,
) -> Result<device::DeviceCertInfo, DeviceCertError> {
    match issued {
        Some(issued) => device::check_issued(der, grant, ca, issued),
        None => device::check(der, grant, ca),
    }
}

/// Whether a certificate's notBefore is its entry's time (the site sets it when it logs the
/// issuance, to the second); reports it if not.
fn not_before_matches(
    v: &mut Violations,
    id: &str,
    index: u64,
    time_ms: i64,
    info: &device::DeviceCertInfo,
) -> bool {
    if info.not_before.unix_timestamp() == time_ms.div_euclid(1000) {
        return true;
    }
    v.add(ViolationKind::NotBeforeMismatch, Some(id), "", index, |n| {
        format!("{n} certificate(s) of {id} whose notBefore is not their entry's time")
    });
    false
}

/// Reports a certificate that is not the site's or not the grant's profile (returns false).
fn certificate_refused(v: &mut Violations, id: &str, site: &SiteId, index: u64, e: DeviceCertError) -> bool {
    match e {
        DeviceCertError::Profile(what) => v.add(ViolationKind::ProfileMismatch, Some(id), what, index, |n| {
            format!("{n} certificate(s) do not match {id}'s device profile: {what}")
        }),
        e => v.add(ViolationKind::WrongIssuer, Some(id), "", index, |n| {
            format!("{n} certificate(s) not issued by site {site}'s issuing CA ({e})")
        }),
    }
    false
}

fn first_use(f: &db::FirstUse, site: &SiteId) -> String {
    if f.site_id == site.as_str() {
        format!("at entry {} ({})", f.log_index, short(&f.entitlement_id))
    } else {
        format!("by site {} at its entry {}", f.site_id, f.log_index)
    }
}

fn period_name(p: RatePeriod) -> &'static str {
    p.name()
}

/// Reports one [`Finding`] of a grant's checks.
fn finding(v: &mut Violations, st: &GrantState, id: &str, index: u64, time_ms: i64, f: Finding) {
    match f {
        Finding::Rule(b) => breach(v, id, index, "issued", b),
        Finding::Rate {
            period,
            limit,
            window_start_ms,
            episode,
        } => {
            let p = period_name(period);
            let (from, to) = (rfc3339_ms(window_start_ms), rfc3339_ms(time_ms));
            v.add(
                ViolationKind::RateExceeded,
                Some(id),
                &format!("{p}/{episode}"),
                index,
                |n| {
                    format!(
                        "per-{p} limit of {limit} exceeded: {n} device(s) over the limit in the window \
                         from {from} to {to} (no more than {limit} in any {p})"
                    )
                },
            )
        }
        Finding::SerialOutsideRange => {
            let ranges: Vec<String> = st
                .grant
                .serial_ranges
                .iter()
                .map(|r| format!("{}-{}", r.first, r.last))
                .collect();
            v.add(ViolationKind::SerialOutsideRange, Some(id), "", index, |n| {
                format!(
                    "{n} device(s) with serials outside {id}'s ranges {}",
                    ranges.join(", ")
                )
            })
        }
    }
}

/// Reports one rule of the grant an entry broke; `done` says what the entries did ("issued",
/// "renewed").
fn breach(v: &mut Violations, id: &str, index: u64, done: &str, b: Breach) {
    match b {
        Breach::NotActive(Status::Revoked) => {
            v.add(ViolationKind::IssuedWhileRevoked, Some(id), done, index, |n| {
                format!("{n} device(s) {done} after {id} was revoked")
            })
        }
        Breach::NotActive(_) => v.add(ViolationKind::IssuedWhileSuspended, Some(id), done, index, |n| {
            format!("{n} device(s) {done} while {id} was suspended")
        }),
        Breach::DeviceRevoked => v.add(ViolationKind::RenewalOfRevokedDevice, Some(id), "", index, |n| {
            format!("{n} renewal(s) of devices of {id} that HQ revoked")
        }),
        Breach::HqKeysOnly => v.add(ViolationKind::OwnKeyUnderHqKeys, Some(id), done, index, |n| {
            format!(
                "{n} device(s) {done} for a key of their own under {id}, whose devices get HQ-generated keys"
            )
        }),
        Breach::StationNotAllowed => v.add(ViolationKind::StationNotAllowed, Some(id), done, index, |n| {
            format!("{n} device(s) {done} for a station {id} does not name")
        }),
        Breach::OutsideWindow {
            not_before,
            not_after,
        } => {
            let (nb, na) = (
                rfc3339_ms(not_before.saturating_mul(1000)),
                rfc3339_ms(not_after.saturating_mul(1000)),
            );
            v.add(
                ViolationKind::OutsideWindow,
                Some(id),
                &format!("{done}/{not_before}/{not_after}"),
                index,
                |n| format!("{n} device(s) {done} outside {id}'s production window {nb} to {na}"),
            )
        }
        Breach::KeyTypeNotAllowed => {
            v.add(ViolationKind::ProfileMismatch, Some(id), "key type", index, |n| {
                format!("{n} certificate(s) do not match {id}'s device profile: key type")
            })
        }
        // HQ checks key uniqueness through its claims, across every site.
        Breach::DuplicateKey => {}
        Breach::OverQuota { quota } => v.add(
            ViolationKind::OverQuota,
            Some(id),
            &quota.to_string(),
            index,
            |n| format!("{n} device(s) issued beyond {id}'s quota of {quota}"),
        ),
        // Reported with its episode by `finding`.
        Breach::Rate { .. } => {}
        Breach::RenewalLimit { count, period } => {
            let p = period_name(period);
            v.add(ViolationKind::RenewalLimit, Some(id), "", index, |n| {
                format!("{n} renewal(s) beyond {id}'s limit of {count} per device per {p}")
            })
        }
        _ => v.add(ViolationKind::ProfileMismatch, Some(id), "rule", index, |n| {
            format!("{n} entr(ies) break a rule of {id}")
        }),
    }
}

impl crate::HqStore {
    /// Calls `f` for every genuine device in the registry (of one site, or of all), in site and
    /// log order, without loading them all.
    pub fn for_each_device(
        &self,
        site: Option<&SiteId>,
        f: impl FnMut(DeviceRecord) -> Result<(), HqError>,
    ) -> Result<(), HqError> {
        db::for_each_device(self.conn(), site, f)
    }

    /// Equivocation evidence recorded for a site, oldest first.
    pub fn equivocations(&self, site: &SiteId) -> Result<Vec<Equivocation>, HqError> {
        db::equivocations(self.conn(), site)
    }
}

#[cfg(test)]
mod tests {
    use serde_bytes::ByteBuf;
    use stamp_core::audit::TreeHead;

    use super::*;

    #[test]
    fn spans_read_in_their_largest_whole_unit() {
        assert_eq!(span(time::Duration::ZERO), "0 seconds");
        assert_eq!(span(time::Duration::seconds(90)), "90 seconds");
        assert_eq!(span(time::Duration::minutes(5)), "5 minutes");
        assert_eq!(span(time::Duration::hours(36)), "36 hours");
        assert_eq!(span(DEFAULT_PACKAGE_GRACE), "7 days");
        assert_eq!(ReconcileOptions::default().package_grace, time::Duration::days(7));
    }

    fn header(previous: Option<u64>, first: u64, count: u64, chunks: u64) -> BundleHeader {
        BundleHeader {
            version: audit::VERSION,
            site_id: SiteId::new("s").unwrap(),
            bundle_id: ByteBuf::from(vec![0; 16]),
            created_at_ms: 0,
            previous: previous.map(|size| TreeHead {
                size,
                root: ByteBuf::from(vec![0; 32]),
            }),
            checkpoint: String::new(),
            consistency_proof: vec![],
            first_index: first,
            entry_count: count,
            chunk_count: chunks,
        }
    }

    #[test]
    fn header_numbers_must_agree() {
        assert!(check_counts(&header(None, 0, 10, 1), 10).is_ok());
        assert!(check_counts(&header(Some(10), 10, 5, 2), 15).is_ok());
        for (h, size) in [
            (header(None, 1, 9, 1), 10),                 // first index without previous
            (header(Some(10), 9, 6, 1), 15),             // first index is not previous size
            (header(None, 0, 9, 1), 10),                 // count does not reach the size
            (header(Some(10), 10, 0, 1), 10),            // no entries
            (header(None, 0, 10, 0), 10),                // no chunks
            (header(None, 0, 10, 11), 10),               // more chunks than entries
            (header(None, 0, 5000, 1), 5000),            // more than 4096 entries in one chunk
            (header(Some(u64::MAX), u64::MAX, 1, 1), 0), // overflow
        ] {
            assert!(
                matches!(check_counts(&h, size), Err(Rejection::HeaderInconsistent(_))),
                "{h:?} size {size}"
            );
        }
        let mut proof_without_previous = header(None, 0, 10, 1);
        proof_without_previous
            .consistency_proof
            .push(ByteBuf::from(vec![0; 32]));
        assert!(check_counts(&proof_without_previous, 10).is_err());
    }

    #[test]
    fn untrusted_text_is_shortened_and_escaped() {
        assert_eq!(short("plant-7.1"), "plant-7.1");
        assert_eq!(short("a\nb\u{1b}"), "a\\nb\\u{1b}");
        let long = "x".repeat(1000);
        assert_eq!(short(&long).chars().count(), 65);
    }

    #[test]
    fn rejection_codes_are_distinct_enough_to_script_against() {
        let codes = [
            Rejection::Empty.code(),
            Rejection::UnknownSigner.code(),
            Rejection::TrailingFrames.code(),
            Rejection::NoExportEntry.code(),
            Rejection::RootMismatch { size: 1 }.code(),
            Rejection::Older { size: 1, last: 2 }.code(),
        ];
        let unique: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
    }
}
