//! The site's audit log: appending entries inside the transaction that records their event.
//!
//! Each entry's CBOR is a leaf of an RFC 9162 Merkle tree; the tree's frontier is kept in
//! `log_state`, updated in the same transaction as the entries, so the log and the state it records
//! can never disagree after a crash.
//!
//! The hashes of the tree's perfect subtrees at levels 4, 8, 12, ... (16, 256, 4096, ... leaves)
//! are stored in `log_subtrees` as appends complete them (about one row per 15 entries), in the
//! same transaction: with them an inclusion or consistency proof reads O(log n) rows (at most 8
//! per proof hash) instead of every leaf. Entries logged before that table existed are covered
//! by [`backfill_subtrees`], once; until then a missing subtree is computed from its leaves.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use stamp_core::audit::{Entry, Event};
use stamp_core::merkle::{self, Frontier, Hash, HashSource, Subtree};

use crate::SiteError;

/// The log's head as stored: frontier and the time of the last entry.
pub(crate) struct LogHead {
    pub frontier: Frontier,
    pub last_time_ms: i64,
}

/// Reads the log head.
pub(crate) fn head(conn: &Connection) -> Result<LogHead, SiteError> {
    let (bytes, last_time_ms): (Vec<u8>, i64) = conn.query_row(
        "SELECT frontier, last_time_ms FROM log_state WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let frontier = Frontier::from_bytes(&bytes).map_err(|_| SiteError::CorruptLog("stored frontier"))?;
    Ok(LogHead {
        frontier,
        last_time_ms,
    })
}

/// Appends one event at `time_ms` (raised to the last entry's time if the clock went back) and
/// returns the entry. The caller's transaction commits it; [`save`] must run before the commit.
pub(crate) fn append(
    tx: &Transaction<'_>,
    head: &mut LogHead,
    time_ms: i64,
    event: Event,
) -> Result<Entry, SiteError> {
    let entry = Entry {
        index: head.frontier.size(),
        time_ms: time_ms.max(head.last_time_ms),
        event,
    };
    let bytes = entry.to_cbor();
    let leaf = merkle::leaf_hash(&bytes);
    let mut completed = Vec::new();
    head.frontier
        .append_with(leaf, |st, h| {
            if stored_level(st.level) {
                completed.push((st, *h));
            }
        })
        .map_err(|_| SiteError::CorruptLog("log full"))?;
    head.last_time_ms = entry.time_ms;
    tx.prepare_cached("INSERT INTO log_entries (idx, time_ms, entry, leaf_hash) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![
            stamp_store::to_sql(entry.index),
            entry.time_ms,
            bytes,
            leaf.as_slice()
        ])?;
    store_subtrees(tx, &completed)?;
    Ok(entry)
}

/// Levels of the subtrees stored in `log_subtrees`: the multiples of this (never 0: leaves are in
/// `log_entries`). A proof hash at another level is made of at most 2^(STEP - 1) stored ones.
const SUBTREE_LEVEL_STEP: u8 = 4;

fn stored_level(level: u8) -> bool {
    level > 0 && level.is_multiple_of(SUBTREE_LEVEL_STEP)
}

fn store_subtrees(tx: &Connection, completed: &[(Subtree, Hash)]) -> Result<(), SiteError> {
    if completed.is_empty() {
        return Ok(());
    }
    let mut insert =
        tx.prepare_cached("INSERT OR IGNORE INTO log_subtrees (level, idx, hash) VALUES (?1, ?2, ?3)")?;
    for (st, h) in completed {
        let idx = i64::try_from(st.index).map_err(|_| SiteError::CorruptLog("log full"))?;
        insert.execute(params![i64::from(st.level), idx, h.as_slice()])?;
    }
    Ok(())
}

/// Stores the subtree hashes of the entries logged before the site database had
/// `log_subtrees` (`log_state.subtrees_from` of them): one pass over their leaf hashes, done
/// once. Returns how many entries it covered (0 when there was nothing to do). The subtrees it
/// stores all end before `subtrees_from`, so it never touches a row the writer adds.
pub(crate) fn backfill_subtrees(tx: &Transaction<'_>) -> Result<u64, SiteError> {
    let from: i64 = tx.query_row("SELECT subtrees_from FROM log_state WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    if from <= 0 {
        return Ok(0);
    }
    let mut frontier = Frontier::new();
    let mut completed = Vec::new();
    {
        let mut stmt = tx.prepare("SELECT idx, leaf_hash FROM log_entries WHERE idx < ?1 ORDER BY idx")?;
        let mut rows = stmt.query([from])?;
        while let Some(row) = rows.next()? {
            let idx: i64 = row.get(0)?;
            let leaf: Vec<u8> = row.get(1)?;
            let leaf: Hash = leaf.try_into().map_err(|_| SiteError::CorruptLog("leaf hash"))?;
            if stamp_store::from_sql(idx) != frontier.size() {
                return Err(SiteError::CorruptLog("entry order"));
            }
            frontier
                .append_with(leaf, |st, h| {
                    if stored_level(st.level) {
                        completed.push((st, *h));
                    }
                })
                .map_err(|_| SiteError::CorruptLog("log full"))?;
            if completed.len() >= 1024 {
                store_subtrees(tx, &completed)?;
                completed.clear();
            }
        }
    }
    if frontier.size() != stamp_store::from_sql(from) {
        return Err(SiteError::CorruptLog("entries missing"));
    }
    store_subtrees(tx, &completed)?;
    tx.execute("UPDATE log_state SET subtrees_from = 0 WHERE id = 1", [])?;
    Ok(stamp_store::from_sql(from))
}

/// Stores the head after appends, in the same transaction.
pub(crate) fn save(tx: &Transaction<'_>, head: &LogHead) -> Result<(), SiteError> {
    tx.execute(
        "UPDATE log_state SET frontier = ?1, last_time_ms = ?2 WHERE id = 1",
        params![head.frontier.to_bytes(), head.last_time_ms],
    )?;
    Ok(())
}

/// Appends one event in its own step of a transaction: read head, append, save.
pub(crate) fn append_one(tx: &Transaction<'_>, time_ms: i64, event: Event) -> Result<Entry, SiteError> {
    let mut h = head(tx)?;
    let e = append(tx, &mut h, time_ms, event)?;
    save(tx, &h)?;
    Ok(e)
}

/// Leaf and subtree hashes read from the log's tables, for proofs.
pub(crate) struct StoredLeaves<'a>(pub &'a Connection);

impl HashSource for StoredLeaves<'_> {
    type Error = SiteError;
    fn leaf_hash(&self, index: u64) -> Result<Hash, SiteError> {
        let v: Vec<u8> = self
            .0
            .prepare_cached("SELECT leaf_hash FROM log_entries WHERE idx = ?1")?
            .query_row([stamp_store::to_sql(index)], |r| r.get(0))?;
        v.try_into().map_err(|_| SiteError::CorruptLog("leaf hash"))
    }

    fn subtree_hash(&self, subtree: Subtree) -> Result<Option<Hash>, SiteError> {
        if !stored_level(subtree.level) {
            return Ok(None);
        }
        let Ok(idx) = i64::try_from(subtree.index) else {
            return Ok(None);
        };
        let v: Option<Vec<u8>> = self
            .0
            .prepare_cached("SELECT hash FROM log_subtrees WHERE level = ?1 AND idx = ?2")?
            .query_row(params![i64::from(subtree.level), idx], |r| r.get(0))
            .optional()?;
        v.map(|v| v.try_into().map_err(|_| SiteError::CorruptLog("subtree hash")))
            .transpose()
    }
}

/// Checks the whole stored log: every entry decodes, indexes are consecutive, times never go back,
/// every leaf hash is the hash of its entry, and the leaves give the stored frontier's root.
pub(crate) fn verify(conn: &Connection) -> Result<(u64, Hash), SiteError> {
    let h = head(conn)?;
    let subtrees_from: i64 = conn.query_row("SELECT subtrees_from FROM log_state WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    let mut stored_subtree = conn.prepare("SELECT hash FROM log_subtrees WHERE level = ?1 AND idx = ?2")?;
    let mut subtrees = 0i64;
    let mut frontier = Frontier::new();
    let mut last = i64::MIN;
    let mut stmt = conn.prepare("SELECT idx, time_ms, entry, leaf_hash FROM log_entries ORDER BY idx")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let idx: i64 = row.get(0)?;
        let time_ms: i64 = row.get(1)?;
        let bytes: Vec<u8> = row.get(2)?;
        let leaf: Vec<u8> = row.get(3)?;
        let e = Entry::from_cbor(&bytes).map_err(|_| SiteError::CorruptLog("entry does not decode"))?;
        if e.index != frontier.size()
            || stamp_store::from_sql(idx) != e.index
            || e.time_ms != time_ms
            || e.time_ms < last
        {
            return Err(SiteError::CorruptLog("entry order"));
        }
        if merkle::leaf_hash(&bytes).as_slice() != leaf.as_slice() {
            return Err(SiteError::CorruptLog("leaf hash"));
        }
        last = e.time_ms;
        let mut completed = Vec::new();
        frontier
            .append_with(merkle::leaf_hash(&bytes), |st, h| {
                if stored_level(st.level) {
                    completed.push((st, *h));
                }
            })
            .map_err(|_| SiteError::CorruptLog("log full"))?;
        // Every stored subtree hash is the hash of its leaves; every subtree completed since
        // the table exists is stored.
        for (st, hash) in completed {
            let stored: Option<Vec<u8>> = stored_subtree
                .query_row(params![i64::from(st.level), stamp_store::to_sql(st.index)], |r| {
                    r.get(0)
                })
                .optional()?;
            match stored {
                Some(s) if s.as_slice() == hash.as_slice() => subtrees += 1,
                None if idx < subtrees_from => {}
                _ => return Err(SiteError::CorruptLog("stored subtree hash")),
            }
        }
    }
    if frontier.size() != h.frontier.size() || frontier.root() != h.frontier.root() {
        return Err(SiteError::CorruptLog(
            "stored frontier does not match the entries",
        ));
    }
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM log_subtrees", [], |r| r.get(0))?;
    if rows != subtrees {
        return Err(SiteError::CorruptLog("stored subtree hashes beyond the log"));
    }
    Ok((frontier.size(), frontier.root()))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_bytes::ByteBuf;
    use stamp_core::SiteId;
    use stamp_store::Database;
    use time::OffsetDateTime;

    use super::*;
    use crate::SiteStore;

    fn event(i: u64) -> Event {
        Event::ExportMade {
            previous_size: i,
            bundle_id: ByteBuf::from(vec![7; 16]),
        }
    }

    fn new_store(dir: &tempfile::TempDir) -> SiteStore {
        SiteStore::create(
            &dir.path().join("site.db"),
            &SiteId::new("plant-1").unwrap(),
            &[0; 32],
            OffsetDateTime::UNIX_EPOCH,
        )
        .unwrap()
    }

    /// Appends `n` entries in transactions of varying sizes (as the writer's group commits do);
    /// returns their leaf hashes, from the entries as stored.
    fn append_entries(store: &mut SiteStore, n: u64) -> Vec<Hash> {
        let mut done = 0;
        let mut batch = 1;
        while done < n {
            let k = batch.min(n - done);
            store
                .db_mut()
                .transaction(|tx| {
                    let mut h = head(tx)?;
                    for i in 0..k {
                        append(tx, &mut h, (done + i) as i64, event(done + i))?;
                    }
                    save(tx, &h)?;
                    Ok::<_, SiteError>(())
                })
                .unwrap();
            done += k;
            batch = batch % 37 + 3;
        }
        leaves(store.conn())
    }

    fn leaves(conn: &Connection) -> Vec<Hash> {
        let mut stmt = conn
            .prepare("SELECT entry FROM log_entries ORDER BY idx")
            .unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|e| merkle::leaf_hash(&e.unwrap()))
            .collect();
        rows
    }

    /// Counts the rows a proof reads.
    struct Counting<'a> {
        inner: StoredLeaves<'a>,
        reads: Cell<u64>,
    }

    impl HashSource for Counting<'_> {
        type Error = SiteError;
        fn leaf_hash(&self, index: u64) -> Result<Hash, SiteError> {
            self.reads.set(self.reads.get() + 1);
            self.inner.leaf_hash(index)
        }
        fn subtree_hash(&self, st: Subtree) -> Result<Option<Hash>, SiteError> {
            let h = self.inner.subtree_hash(st)?;
            if h.is_some() {
                self.reads.set(self.reads.get() + 1);
            }
            Ok(h)
        }
    }

    /// Compares every proof the stored tables give with the all-leaves computation, for every
    /// pair of sizes up to `all`, pairs around subtree boundaries and pairs spread over the whole
    /// log.
    fn assert_proofs_match(conn: &Connection, leaves: &[Hash], all: u64) {
        let n = leaves.len() as u64;
        let stored = StoredLeaves(conn);
        let mut pairs: Vec<(u64, u64)> = Vec::new();
        for size2 in 1..=all.min(n) {
            for size1 in 1..=size2 {
                pairs.push((size1, size2));
            }
        }
        let marks = [1, 2, 15, 16, 17, 255, 256, 257, 1000, 4095, 4096, 4097, n - 1, n];
        for &a in &marks {
            for &b in &marks {
                if 1 <= a && a <= b && b <= n {
                    pairs.push((a, b));
                }
            }
        }
        for size2 in (all..=n).step_by(97) {
            pairs.push((size2 / 3 + 1, size2));
            pairs.push((size2 - 1, size2));
        }
        for (size1, size2) in pairs {
            let want = merkle::consistency_proof(leaves, size1, size2).unwrap();
            let got = merkle::consistency_proof(&stored, size1, size2).unwrap();
            assert_eq!(got, want, "consistency {size1} -> {size2}");
            let index = size1 - 1;
            let want = merkle::inclusion_proof(leaves, index, size2).unwrap();
            let got = merkle::inclusion_proof(&stored, index, size2).unwrap();
            assert_eq!(got, want, "inclusion of {index} in {size2}");
            assert_eq!(
                merkle::tree_root(&stored, size2).unwrap(),
                merkle::root_from_leaves(&leaves[..size2 as usize])
            );
        }
    }

    #[test]
    fn proofs_from_stored_subtrees_are_those_of_all_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = new_store(&dir);
        let leaves = append_entries(&mut store, 5000);
        assert_proofs_match(store.conn(), &leaves, 64);
        assert_eq!(verify(store.conn()).unwrap().0, 5000);
        // About one stored subtree per 15 entries.
        let rows: i64 = store
            .conn()
            .query_row("SELECT COUNT(*) FROM log_subtrees", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 5000 / 16 + 5000 / 256 + 5000 / 4096);
    }

    #[test]
    fn proofs_read_a_logarithmic_number_of_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = new_store(&dir);
        let n = 20_000u64;
        let leaves = append_entries(&mut store, n);
        let src = Counting {
            inner: StoredLeaves(store.conn()),
            reads: Cell::new(0),
        };
        let mut worst = 0;
        for size1 in [1, 2, 17, 1000, 4096, 4097, 9999, 12_345, 16_384, 19_999] {
            src.reads.set(0);
            let proof = merkle::consistency_proof(&src, size1, n).unwrap();
            worst = worst.max(src.reads.get());
            let r1 = merkle::root_from_leaves(&leaves[..size1 as usize]);
            let r2 = merkle::root_from_leaves(&leaves);
            merkle::verify_consistency(size1, n, &proof, &r1, &r2).unwrap();
            src.reads.set(0);
            merkle::inclusion_proof(&src, size1 - 1, n).unwrap();
            worst = worst.max(src.reads.get());
        }
        // log2(20000) < 15 proof hashes, each at most 8 stored hashes, plus the ragged right
        // edge: a few hundred at most, against 20,000 leaves without the table.
        assert!(worst <= 8 * 2 * 15, "{worst} reads");
    }

    #[test]
    fn a_log_from_before_the_subtree_table_is_backfilled_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.db");
        // A site database of schema 4 with 3000 entries, written as that version wrote them.
        let n = 3000u64;
        {
            let db =
                Database::create(&path, &crate::store::MIGRATIONS[..crate::store::BEFORE_SUBTREES]).unwrap();
            let mut frontier = Frontier::new();
            for i in 0..n {
                let bytes = Entry {
                    index: i,
                    time_ms: i as i64,
                    event: event(i),
                }
                .to_cbor();
                let leaf = merkle::leaf_hash(&bytes);
                frontier.append(leaf).unwrap();
                db.conn()
                    .execute(
                        "INSERT INTO log_entries (idx, time_ms, entry, leaf_hash) VALUES (?1, ?2, ?3, ?4)",
                        params![i as i64, i as i64, bytes, leaf.as_slice()],
                    )
                    .unwrap();
            }
            db.conn()
                .execute(
                    "UPDATE log_state SET frontier = ?1, last_time_ms = ?2 WHERE id = 1",
                    params![frontier.to_bytes(), (n - 1) as i64],
                )
                .unwrap();
        }
        let mut store = SiteStore::open(&path).unwrap();
        let from: i64 = store
            .conn()
            .query_row("SELECT subtrees_from FROM log_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(from, n as i64);
        // New entries store their subtrees; the old part falls back to its leaves.
        {
            let tx_leaves = store.db_mut().transaction(|tx| {
                let mut h = head(tx)?;
                for i in n..n + 700 {
                    append(tx, &mut h, i as i64, event(i))?;
                }
                save(tx, &h)?;
                Ok::<_, SiteError>(())
            });
            tx_leaves.unwrap();
        }
        let all = leaves(store.conn());
        assert_eq!(verify(store.conn()).unwrap().0, n + 700);
        let stored = StoredLeaves(store.conn());
        for (size1, size2) in [
            (1, n + 700),
            (n - 1, n + 700),
            (n, n + 700),
            (n + 1, n + 700),
            (2048, n),
        ] {
            assert_eq!(
                merkle::consistency_proof(&stored, size1, size2).unwrap(),
                merkle::consistency_proof(&all, size1, size2).unwrap()
            );
        }
        // The backfill stores exactly what a log that always had the table stores.
        assert_eq!(store.db_mut().transaction(backfill_subtrees).unwrap(), n);
        assert_eq!(store.db_mut().transaction(backfill_subtrees).unwrap(), 0);
        assert_eq!(verify(store.conn()).unwrap().0, n + 700);
        assert_proofs_match(store.conn(), &all, 24);
        let fresh_dir = tempfile::tempdir().unwrap();
        let mut fresh = new_store(&fresh_dir);
        append_entries(&mut fresh, n + 700);
        let rows = |c: &Connection| -> Vec<(i64, i64, Vec<u8>)> {
            let mut stmt = c
                .prepare("SELECT level, idx, hash FROM log_subtrees ORDER BY level, idx")
                .unwrap();
            let r = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            r
        };
        assert_eq!(rows(store.conn()), rows(fresh.conn()));
    }

    #[test]
    fn verify_refuses_a_wrong_or_missing_subtree_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = new_store(&dir);
        append_entries(&mut store, 600);
        let c = store.conn();
        let good: Vec<u8> = c
            .query_row(
                "SELECT hash FROM log_subtrees WHERE level = 4 AND idx = 7",
                [],
                |r| r.get(0),
            )
            .unwrap();
        c.execute(
            "UPDATE log_subtrees SET hash = zeroblob(32) WHERE level = 4 AND idx = 7",
            [],
        )
        .unwrap();
        assert!(matches!(
            verify(c),
            Err(SiteError::CorruptLog("stored subtree hash"))
        ));
        c.execute("DELETE FROM log_subtrees WHERE level = 4 AND idx = 7", [])
            .unwrap();
        assert!(matches!(
            verify(c),
            Err(SiteError::CorruptLog("stored subtree hash"))
        ));
        c.execute(
            "INSERT INTO log_subtrees (level, idx, hash) VALUES (4, 7, ?1)",
            [&good],
        )
        .unwrap();
        assert_eq!(verify(c).unwrap().0, 600);
        // A subtree the log does not have yet.
        c.execute(
            "INSERT INTO log_subtrees (level, idx, hash) VALUES (4, 99, zeroblob(32))",
            [],
        )
        .unwrap();
        assert!(matches!(
            verify(c),
            Err(SiteError::CorruptLog("stored subtree hashes beyond the log"))
        ));
    }
}
