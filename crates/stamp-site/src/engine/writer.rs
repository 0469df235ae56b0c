//! The audit log writer: one thread that commits queued entries in groups (group commit: one
//! SQLite transaction, WAL with fsync, for everything queued), then wakes every caller in the
//! group. Only then does a certificate leave the engine. A storage failure stops the engine
//! (fail-stop): a site that cannot log must not issue.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::params;
use stamp_core::audit::{DeviceRecord, Event};

use super::lock;
use crate::{log, SiteError, SiteStore};

/// Most log entries committed in one transaction.
const MAX_BATCH: usize = 1024;

/// What a job's caller is told: the entry's log index, or why the log could not take it (the
/// write's failure, or `None`: the log failed before).
pub(super) type Written = Result<u64, Option<Arc<SiteError>>>;

/// Where a job's caller waits for its [`Written`].
pub(super) type Reply = mpsc::SyncSender<Written>;

/// A log write for the writer thread.
pub(super) enum Job {
    /// A first certificate (own key or HQ-generated key): a `devices` row.
    Device {
        time_ms: i64,
        record: DeviceRecord,
        reply: Reply,
    },
    Refusal {
        time_ms: i64,
        event: Event,
        reply: Reply,
    },
    /// A renewal: a `renewals` row; it supersedes the device's certificate until then.
    Renewal {
        time_ms: i64,
        record: DeviceRecord,
        reply: Reply,
    },
    /// Answered once every job sent before it is committed (no entry of its own).
    Barrier { reply: Reply },
}

/// What admission has let through and the database cannot see yet: the lookups under the policy
/// lock consult it; the writer removes what it committed, without taking the policy lock.
#[derive(Default)]
pub(super) struct Pending {
    /// Public keys (SPKI SHA-256) of admitted certificates.
    pub(super) keys: Mutex<HashSet<[u8; 32]>>,
    /// Per device serial with renewals in flight: the newest renewed certificate and how many
    /// renewals are in flight.
    pub(super) renewals: Mutex<HashMap<u64, (Vec<u8>, u64)>>,
}

/// The writer thread: commits queued entries in groups.
pub(super) fn write_loop(
    mut store: SiteStore,
    rx: mpsc::Receiver<Job>,
    failed: Arc<AtomicBool>,
    pending: Arc<Pending>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let result = if failed.load(Ordering::SeqCst) {
            Err(None)
        } else {
            commit(&mut store, &batch).map_err(|e| {
                failed.store(true, Ordering::SeqCst);
                Some(Arc::new(e))
            })
        };
        if result.is_ok() {
            // Committed: the database lookups see these keys and renewals from now on.
            let mut keys = lock(&pending.keys);
            let mut renewals = lock(&pending.renewals);
            for job in &batch {
                if let Job::Device { record, .. } | Job::Renewal { record, .. } = job {
                    if let Ok(k) = <[u8; 32]>::try_from(record.public_key_sha256.as_slice()) {
                        keys.remove(&k);
                    }
                }
                if let Job::Renewal { record, .. } = job {
                    if let Some(entry) = renewals.get_mut(&record.device_serial) {
                        entry.1 = entry.1.saturating_sub(1);
                        if entry.1 == 0 {
                            renewals.remove(&record.device_serial);
                        }
                    }
                }
            }
        }
        for (i, job) in batch.into_iter().enumerate() {
            let reply = match job {
                Job::Device { reply, .. }
                | Job::Refusal { reply, .. }
                | Job::Renewal { reply, .. }
                | Job::Barrier { reply } => reply,
            };
            let _ = reply.send(result.as_ref().map(|indexes| indexes[i]).map_err(Clone::clone));
        }
    }
}

fn commit(store: &mut SiteStore, batch: &[Job]) -> Result<Vec<u64>, SiteError> {
    store.db_mut().transaction(|tx| {
        let mut head = log::head(tx)?;
        let mut indexes = Vec::with_capacity(batch.len());
        // Devices per grant in this batch: each grant's `issued` count is raised once per
        // transaction, by the batch's number, rather than once per device (same committed state).
        let mut issued: BTreeMap<&str, i64> = BTreeMap::new();
        // Statements are prepared once per connection (rusqlite's statement cache), not per row.
        let mut insert_device = tx.prepare_cached(
            "INSERT INTO devices (device_serial, entitlement_id, cert_sha256, spki_sha256, certificate,
                 issued_ms, station, log_index, hq_key_index)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for job in batch {
            match job {
                Job::Device { time_ms, record, .. } => {
                    let event = if record.hq_key_index.is_some() {
                        Event::KeyHandedOut(record.clone())
                    } else {
                        Event::DeviceIssued(record.clone())
                    };
                    let e = log::append(tx, &mut head, *time_ms, event)?;
                    insert_device.execute(params![
                        stamp_store::to_sql(record.device_serial),
                        record.entitlement_id,
                        record.certificate_sha256.as_slice(),
                        record.public_key_sha256.as_slice(),
                        record.certificate.as_slice(),
                        time_ms,
                        record.station,
                        stamp_store::to_sql(e.index),
                        record.hq_key_index.map(stamp_store::to_sql),
                    ])?;
                    *issued.entry(record.entitlement_id.as_str()).or_insert(0) += 1;
                    indexes.push(e.index);
                }
                Job::Refusal { time_ms, event, .. } => {
                    indexes.push(log::append(tx, &mut head, *time_ms, event.clone())?.index);
                }
                Job::Renewal { time_ms, record, .. } => {
                    let e = log::append(tx, &mut head, *time_ms, Event::DeviceRenewed(record.clone()))?;
                    tx.execute(
                        "INSERT INTO renewals (log_index, device_serial, entitlement_id, cert_sha256,
                             spki_sha256, certificate, issued_ms, station)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![
                            stamp_store::to_sql(e.index),
                            stamp_store::to_sql(record.device_serial),
                            record.entitlement_id,
                            record.certificate_sha256.as_slice(),
                            record.public_key_sha256.as_slice(),
                            record.certificate.as_slice(),
                            time_ms,
                            record.station,
                        ],
                    )?;
                    indexes.push(e.index);
                }
                Job::Barrier { .. } => indexes.push(0),
            }
        }
        let mut count =
            tx.prepare_cached("UPDATE entitlements SET issued = issued + ?2 WHERE entitlement_id = ?1")?;
        for (id, n) in issued {
            count.execute(params![id, n])?;
        }
        log::save(tx, &head)?;
        Ok(indexes)
    })
}
