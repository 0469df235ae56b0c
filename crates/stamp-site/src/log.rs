//! The site's audit log: appending entries inside the transaction that records their event.
//!
//! Each entry's CBOR is a leaf of an RFC 9162 Merkle tree; the tree's frontier is kept in
//! `log_state`, updated in the same transaction as the entries, so the log and the state it records
//! can never disagree after a crash.

use stamp_core::audit::{Entry, Event};
use stamp_core::merkle::{self, Frontier, Hash, HashSource};
use stamp_store::rusqlite::{params, Connection, Transaction};

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
    head.frontier
        .append(leaf)
        .map_err(|_| SiteError::CorruptLog("log full"))?;
    head.last_time_ms = entry.time_ms;
    tx.prepare_cached("INSERT INTO log_entries (idx, time_ms, entry, leaf_hash) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![entry.index as i64, entry.time_ms, bytes, leaf.as_slice()])?;
    Ok(entry)
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

/// Leaf hashes read from the log table, for proofs.
pub(crate) struct StoredLeaves<'a>(pub &'a Connection);

impl HashSource for StoredLeaves<'_> {
    type Error = SiteError;
    fn leaf_hash(&self, index: u64) -> Result<Hash, SiteError> {
        let v: Vec<u8> = self.0.query_row(
            "SELECT leaf_hash FROM log_entries WHERE idx = ?1",
            [index as i64],
            |r| r.get(0),
        )?;
        v.try_into().map_err(|_| SiteError::CorruptLog("leaf hash"))
    }
}

/// Checks the whole stored log: every entry decodes, indexes are consecutive, times never go back,
/// every leaf hash is the hash of its entry, and the leaves give the stored frontier's root.
pub(crate) fn verify(conn: &Connection) -> Result<(u64, Hash), SiteError> {
    let h = head(conn)?;
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
        if e.index != frontier.size() || idx as u64 != e.index || e.time_ms != time_ms || e.time_ms < last {
            return Err(SiteError::CorruptLog("entry order"));
        }
        if merkle::leaf_hash(&bytes).as_slice() != leaf.as_slice() {
            return Err(SiteError::CorruptLog("leaf hash"));
        }
        last = e.time_ms;
        frontier
            .append(merkle::leaf_hash(&bytes))
            .map_err(|_| SiteError::CorruptLog("log full"))?;
    }
    if frontier.size() != h.frontier.size() || frontier.root() != h.frontier.root() {
        return Err(SiteError::CorruptLog(
            "stored frontier does not match the entries",
        ));
    }
    Ok((frontier.size(), frontier.root()))
}
