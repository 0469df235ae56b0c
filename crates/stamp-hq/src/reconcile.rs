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
mod rejection;
mod report;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use rusqlite::Connection;
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
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

pub use crate::store::registry::{DeviceRecord, Equivocation};
pub(crate) use db::frontiers;
pub use report::{
    ReconcileReport, TreeHeadSummary, Violation, ViolationKind, MAX_LISTED_ENTRIES, MAX_VIOLATIONS,
};

use crate::{Hq, HqError};
use policy::{Finding, GrantTrack};
use precheck::Prechecked;
pub use rejection::Rejection;
use report::Violations;
use run::Run;

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

#[cfg(test)]
mod tests;
