//! Exporting the audit log to HQ as an audit bundle (docs/formats/audit.md).

use std::fs::OpenOptions;
use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rusqlite::{params, OptionalExtension};
use serde_bytes::ByteBuf;
use stamp_core::audit::{self, BundleChunk, BundleHeader, Event, TreeHead};
use stamp_core::checkpoint::{self, Checkpoint};
use stamp_core::csr::KeyType;
use stamp_core::envelope::{self, Recipient};
use stamp_core::key::{KeyAgreementAlgorithm, Signer};
use stamp_core::merkle;
use stamp_core::profile::Profile;
use stamp_core::{cert, SiteId};
use stamp_keys::{KeyRef, KeyStore};
use time::OffsetDateTime;

use crate::log::{self, StoredLeaves};
use crate::{unix_ms, Site, SiteError};

/// The `kid` of bundle envelopes.
pub const HQ_KEY_ID: &[u8] = b"hq";

/// The checkpoint origin (and key name) of a site's log.
pub fn origin(site: &SiteId) -> String {
    format!("stamp/site/{site}")
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    /// The bundle file.
    pub bundle: PathBuf,
    /// The bundle's ID (hex).
    pub bundle_id: String,
    /// Log size the bundle starts after.
    pub previous_size: u64,
    /// Log size it ends at (the checkpoint's).
    pub size: u64,
    /// Merkle root of the log at `size` (hex).
    pub root: String,
    /// Entries in the bundle.
    pub entries: u64,
    /// The signed checkpoint.
    pub checkpoint: String,
}

struct Sealer {
    site: SiteId,
    signer: Box<dyn Signer>,
    chain: Vec<Vec<u8>>,
    hq_alg: KeyAgreementAlgorithm,
    hq_key: Vec<u8>,
    rng: SystemRandom,
}

impl Sealer {
    fn seal(&self, content_type: &str, plaintext: &[u8]) -> Result<Vec<u8>, SiteError> {
        let r = Recipient {
            alg: self.hq_alg,
            public_key: &self.hq_key,
            key_id: HQ_KEY_ID,
            recipient_id: self.site.as_str().as_bytes(),
        };
        envelope::seal(
            content_type,
            plaintext,
            self.signer.as_ref(),
            &self.chain,
            &r,
            &[],
            &self.rng,
        )
        .map_err(|e| ExportError::Seal(e).into())
    }
}

/// Why an audit export failed (nothing was written).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Sealing a bundle part to HQ failed.
    #[error("sealing a bundle part to HQ failed")]
    Seal(#[source] stamp_core::envelope::EnvelopeError),
    /// Signing the checkpoint failed.
    #[error("signing the checkpoint failed")]
    Checkpoint(#[source] stamp_core::checkpoint::CheckpointError),
    /// The previous export's checkpoint is not in the site's records.
    #[error("this site made no checkpoint at size {0}")]
    NoCheckpoint(u64),
    /// The consistency proof from the previous export could not be made.
    #[error("the consistency proof could not be made")]
    Proof(#[source] Box<merkle::GenerateError<SiteError>>),
}

impl Site {
    fn sealer(&self) -> Result<Sealer, SiteError> {
        let missing = || SiteError::Import(crate::entitlements::ImportError::NotInstalled);
        let site = self.store.site_id()?;
        let chain = vec![self
            .store
            .certificate(Profile::SiteIdentitySigning)?
            .ok_or_else(missing)?];
        let hq_der = self
            .store
            .certificate(Profile::HqAuthorityKeyAgreement)?
            .ok_or_else(missing)?;
        let hq = cert::parse(&hq_der).map_err(|_| SiteError::CorruptLog("stored HQ certificate"))?;
        let hq_alg = match stamp_core::csr::classify_spki(hq.public_key().raw) {
            Ok(KeyType::P384) => KeyAgreementAlgorithm::EcdhP384,
            _ => KeyAgreementAlgorithm::EcdhP256,
        };
        let hq_key = hq.public_key().subject_public_key.data.to_vec();
        let signer = self.keys.open_signer(&KeyRef::parse(
            &self.store.key_ref(Profile::SiteIdentitySigning)?,
        )?)?;
        Ok(Sealer {
            site,
            signer,
            chain,
            hq_alg,
            hq_key,
            rng: SystemRandom::new(),
        })
    }

    /// Exports the log since the last export (or since the checkpoint at `since`, for an export
    /// HQ never received) to `out`: records an `export-made` entry and a signed checkpoint in one
    /// transaction, then writes the bundle (header with the consistency proof, then chunks).
    pub fn export_audit(
        &mut self,
        out: &Path,
        since: Option<u64>,
        now: OffsetDateTime,
    ) -> Result<ExportReport, SiteError> {
        let sealer = self.sealer()?;
        let site = sealer.site.clone();
        let previous: Option<(u64, Vec<u8>)> = match since {
            Some(0) => None,
            Some(n) => Some(
                self.store
                    .conn()
                    .query_row(
                        "SELECT size, root FROM checkpoints WHERE size = ?1",
                        [stamp_store::to_sql(n)],
                        |r| Ok((stamp_store::from_sql(r.get::<_, i64>(0)?), r.get(1)?)),
                    )
                    .optional()?
                    .ok_or(ExportError::NoCheckpoint(n))?,
            ),
            None => self
                .store
                .conn()
                .query_row(
                    "SELECT size, root FROM exports ORDER BY size DESC LIMIT 1",
                    [],
                    |r| Ok((stamp_store::from_sql(r.get::<_, i64>(0)?), r.get(1)?)),
                )
                .optional()?,
        };
        let previous_size = previous.as_ref().map_or(0, |p| p.0);
        let mut bundle_id = [0u8; 16];
        sealer.rng.fill(&mut bundle_id).map_err(|_| SiteError::Random)?;
        let origin = origin(&site);
        let now_ms = unix_ms(now);
        // A log from before the subtree table: store its subtree hashes once, so that the
        // consistency proof below reads O(log n) rows.
        if previous.is_some() {
            self.store.db_mut().transaction(log::backfill_subtrees)?;
        }
        // The export entry and the checkpoint, durably, before the file is written.
        let (size, root, note) = self.store.db_mut().transaction(|tx| {
            log::append_one(
                tx,
                now_ms,
                Event::ExportMade { previous_size, bundle_id: ByteBuf::from(bundle_id.to_vec()) },
            )?;
            let head = log::head(tx)?;
            let (size, root) = (head.frontier.size(), head.frontier.root());
            let cp = Checkpoint { origin: origin.clone(), size, root, extensions: vec![] };
            let note = checkpoint::sign(&cp, &origin, sealer.signer.as_ref())
                .map_err(ExportError::Checkpoint)?;
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints (size, root, note, made_ms) VALUES (?1, ?2, ?3, ?4)",
                params![stamp_store::to_sql(size), root.as_slice(), note, now_ms],
            )?;
            tx.execute(
                "INSERT INTO exports (bundle_id, previous_size, size, root, made_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![bundle_id.as_slice(), stamp_store::to_sql(previous_size), stamp_store::to_sql(size), root.as_slice(), now_ms],
            )?;
            Ok::<_, SiteError>((size, root, note))
        })?;
        let conn = self.store.conn();
        let proof = match &previous {
            Some((n, _)) => merkle::consistency_proof(&StoredLeaves(conn), *n, size)
                .map_err(|e| ExportError::Proof(Box::new(e)))?,
            None => vec![],
        };
        let entry_count = size - previous_size;
        // Chunks of at most MAX_ENTRIES_PER_CHUNK entries and MAX_CHUNK_PLAINTEXT bytes.
        let mut chunks: Vec<(u64, u64)> = Vec::new();
        {
            let mut stmt =
                conn.prepare("SELECT idx, length(entry) FROM log_entries WHERE idx >= ?1 ORDER BY idx")?;
            let mut rows = stmt.query([stamp_store::to_sql(previous_size)])?;
            let (mut start, mut count, mut bytes) = (previous_size, 0u64, 0usize);
            while let Some(row) = rows.next()? {
                let idx: i64 = row.get(0)?;
                let len: i64 = row.get(1)?;
                if stamp_store::from_sql(idx) >= size {
                    break;
                }
                let len = usize::try_from(len).unwrap_or(usize::MAX).saturating_add(8);
                if count > 0
                    && (usize::try_from(count).unwrap_or(usize::MAX) >= audit::MAX_ENTRIES_PER_CHUNK
                        || bytes.saturating_add(len) > audit::MAX_CHUNK_PLAINTEXT)
                {
                    chunks.push((start, count));
                    start += count;
                    count = 0;
                    bytes = 0;
                }
                count += 1;
                bytes += len;
            }
            if count > 0 {
                chunks.push((start, count));
            }
        }
        let header = BundleHeader {
            version: audit::VERSION,
            site_id: site.clone(),
            bundle_id: ByteBuf::from(bundle_id.to_vec()),
            created_at_ms: now_ms,
            previous: previous.map(|(size, root)| TreeHead {
                size,
                root: ByteBuf::from(root),
            }),
            checkpoint: note.clone(),
            consistency_proof: proof.iter().map(|h| ByteBuf::from(h.to_vec())).collect(),
            first_index: previous_size,
            entry_count,
            chunk_count: chunks.len() as u64,
        };
        let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
        let write = || -> Result<(), SiteError> {
            let io = |source| SiteError::Io {
                path: out.to_owned(),
                source,
            };
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)
                .map_err(io)?;
            let mut w = BufWriter::new(f);
            audit::write_frame(
                &mut w,
                &sealer.seal(audit::HEADER_CONTENT_TYPE, &header.to_cbor())?,
            )
            .map_err(io)?;
            let mut stmt =
                conn.prepare("SELECT entry FROM log_entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")?;
            for (n, (start, count)) in chunks.iter().enumerate() {
                let entries = stmt
                    .query_map(
                        params![stamp_store::to_sql(*start), stamp_store::to_sql(*start + *count)],
                        |r| r.get::<_, Vec<u8>>(0),
                    )?
                    .map(|e| e.map(ByteBuf::from))
                    .collect::<Result<Vec<_>, _>>()?;
                let chunk = BundleChunk {
                    bundle_id: ByteBuf::from(bundle_id.to_vec()),
                    chunk: n as u64,
                    first_index: *start,
                    entries,
                };
                audit::write_frame(&mut w, &sealer.seal(audit::CHUNK_CONTENT_TYPE, &chunk.to_cbor())?)
                    .map_err(io)?;
            }
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, out).map_err(io)?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(ExportReport {
            bundle: out.to_owned(),
            bundle_id: hex(&bundle_id),
            previous_size,
            size,
            root: hex(&root),
            entries: entry_count,
            checkpoint: note,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
