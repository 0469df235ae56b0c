//! The gateway's state file: what a gateway must remember across restarts, in a SQLite database
//! (`stamp-store`, WAL, `synchronous = FULL`).
//!
//! - The highest registry sequence it accepted, and the OEM root of that registry: a gateway
//!   restarted on an older registry file refuses it (rollback), as a reload does, and a state
//!   file of another OEM is refused.
//! - Provisional bindings, one per device serial: the first public key seen presenting a
//!   provisional serial holds it; a certificate with that serial and another key is refused as
//!   `clone`. A binding goes once a registry registers the serial (the registry decides then).
//!
//! Several gateway processes on one host may share one state file (SQLite serializes the writes),
//! so the one-key-per-serial rule holds across them.

use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use stamp_core::registry::VerifiedRegistry;
use stamp_store::{Database, Migration, StoreError};

/// The state file's schema.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: "
    -- The newest registry this gateway accepted (one row).
    CREATE TABLE registry_accepted (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        sequence INTEGER NOT NULL,
        root_sha256 BLOB NOT NULL,
        accepted_at INTEGER NOT NULL
    );
    -- One public key per provisional device serial (the u64's bits as a signed integer).
    CREATE TABLE provisional_bindings (
        device_serial INTEGER PRIMARY KEY,
        public_key_sha256 BLOB NOT NULL,
        certificate_sha256 BLOB NOT NULL,
        site_id TEXT NOT NULL,
        entitlement_id TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        clones_refused INTEGER NOT NULL DEFAULT 0
    );
",
}];

/// Why the state refused something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry is older than one this gateway already accepted.
    #[error(
        "registry sequence {found} is older than sequence {highest}, which this gateway already accepted \
         (state file {path}): a rollback; give the gateway the newest registry HQ exported"
    )]
    Rollback {
        /// The registry's sequence.
        found: u64,
        /// The highest accepted.
        highest: u64,
        /// The state file.
        path: PathBuf,
    },
    /// The state file belongs to a gateway of another OEM root.
    #[error(
        "state file {path} belongs to a gateway of another OEM root ({expected}); this registry is under \
         {found}: use another --state file for another OEM"
    )]
    OtherRoot {
        /// The registry's root.
        found: String,
        /// The state's root.
        expected: String,
        /// The state file.
        path: PathBuf,
    },
}

/// What binding a provisional serial to a key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The serial had no key: this one holds it now.
    New,
    /// The serial is held by this key already.
    Same,
    /// The serial is held by another key: the presented certificate is a clone.
    Held {
        /// The holding key's SPKI SHA-256.
        public_key_sha256: [u8; 32],
        /// When it was first seen (Unix seconds).
        first_seen: i64,
    },
}

/// A provisional binding, as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BindingRecord {
    /// The device serial.
    pub device_serial: u64,
    /// The holding key's SPKI SHA-256, hex.
    pub public_key_sha256: String,
    /// The first certificate seen with it, SHA-256 hex.
    pub certificate_sha256: String,
    /// Certificates with this serial and another key refused since.
    pub clones_refused: u64,
}

/// The gateway's state database.
pub struct GatewayState {
    db: Database,
}

fn bits(serial: u64) -> i64 {
    serial as i64
}

impl GatewayState {
    /// Opens the state file at `path`, creating it (and nothing else) if it does not exist.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = if path.exists() {
            Database::open(path, MIGRATIONS)?
        } else {
            Database::create(path, MIGRATIONS)?
        };
        Ok(GatewayState { db })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// The highest registry sequence accepted, with its root's SHA-256.
    pub fn accepted(&self) -> Result<Option<(u64, [u8; 32])>, StateError> {
        let row: Option<(i64, Vec<u8>)> = self
            .db
            .conn()
            .query_row(
                "SELECT sequence, root_sha256 FROM registry_accepted WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.db.err(e))?;
        Ok(row.map(|(s, root)| {
            let mut fp = [0u8; 32];
            if root.len() == 32 {
                fp.copy_from_slice(&root);
            }
            (s as u64, fp)
        }))
    }

    /// Accepts `reg` if its sequence is at least the highest accepted (the same registry again
    /// after a restart is fine) and it is under the same root; records its sequence and drops the
    /// bindings of serials it registers. Returns how many bindings went.
    pub fn accept_registry(&mut self, reg: &VerifiedRegistry, now: i64) -> Result<usize, StateError> {
        if let Some((highest, root)) = self.accepted()? {
            if &root != reg.root_sha256() {
                return Err(StateError::OtherRoot {
                    found: stamp_core::fingerprint::colon_hex(reg.root_sha256()),
                    expected: stamp_core::fingerprint::colon_hex(&root),
                    path: self.path().to_owned(),
                });
            }
            if reg.sequence() < highest {
                return Err(StateError::Rollback {
                    found: reg.sequence(),
                    highest,
                    path: self.path().to_owned(),
                });
            }
        }
        let serials: Vec<i64> = {
            let c = self.db.conn();
            let mut stmt = c
                .prepare("SELECT device_serial FROM provisional_bindings")
                .map_err(|e| self.db.err(e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, i64>(0))
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| self.db.err(e))?;
            rows
        };
        let registered: Vec<i64> = serials
            .into_iter()
            .filter(|&s| reg.is_registered(s as u64))
            .collect();
        let (sequence, root) = (bits(reg.sequence()), reg.root_sha256().to_vec());
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO registry_accepted (id, sequence, root_sha256, accepted_at) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET sequence = MAX(sequence, excluded.sequence),
                     accepted_at = excluded.accepted_at",
                params![sequence, root, now],
            )?;
            for s in &registered {
                tx.execute("DELETE FROM provisional_bindings WHERE device_serial = ?1", [s])?;
            }
            Ok(())
        })?;
        Ok(registered.len())
    }

    /// Binds a provisional `serial` to `public_key_sha256` if no key holds it yet; otherwise
    /// says which key does (and counts a refused clone).
    pub fn bind(
        &mut self,
        serial: u64,
        public_key_sha256: &[u8; 32],
        certificate_sha256: &[u8; 32],
        site_id: &str,
        entitlement_id: &str,
        now: i64,
    ) -> Result<Binding, StateError> {
        let key = bits(serial);
        let path = self.db.path().to_owned();
        let sql = |source| {
            StateError::Store(StoreError::Sqlite {
                path: path.clone(),
                source,
            })
        };
        self.db.transaction(|tx| {
            let held: Option<(Vec<u8>, i64)> = tx
                .query_row(
                    "SELECT public_key_sha256, first_seen FROM provisional_bindings WHERE device_serial = ?1",
                    [key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql)?;
            match held {
                None => {
                    tx.execute(
                        "INSERT INTO provisional_bindings
                         (device_serial, public_key_sha256, certificate_sha256, site_id, entitlement_id, first_seen)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![key, public_key_sha256.as_slice(), certificate_sha256.as_slice(), site_id, entitlement_id, now],
                    )
                    .map_err(sql)?;
                    Ok(Binding::New)
                }
                Some((k, _)) if k.as_slice() == public_key_sha256.as_slice() => Ok(Binding::Same),
                Some((k, first_seen)) => {
                    tx.execute(
                        "UPDATE provisional_bindings SET clones_refused = clones_refused + 1 WHERE device_serial = ?1",
                        [key],
                    )
                    .map_err(sql)?;
                    let mut held = [0u8; 32];
                    if k.len() == 32 {
                        held.copy_from_slice(&k);
                    }
                    Ok(Binding::Held {
                        public_key_sha256: held,
                        first_seen,
                    })
                }
            }
        })
    }

    /// Every provisional binding, by serial.
    pub fn bindings(&self) -> Result<Vec<BindingRecord>, StateError> {
        let c = self.db.conn();
        let mut stmt = c
            .prepare(
                "SELECT device_serial, public_key_sha256, certificate_sha256, clones_refused
                 FROM provisional_bindings",
            )
            .map_err(|e| self.db.err(e))?;
        let mut rows = stmt
            .query_map([], |r| {
                Ok(BindingRecord {
                    device_serial: r.get::<_, i64>(0)? as u64,
                    public_key_sha256: hex::encode(r.get::<_, Vec<u8>>(1)?),
                    certificate_sha256: hex::encode(r.get::<_, Vec<u8>>(2)?),
                    clones_refused: r.get::<_, i64>(3)? as u64,
                })
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.db.err(e))?;
        rows.sort_by_key(|b| b.device_serial);
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_provisional_serial_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        let (k1, k2, c1, c2, c3) = ([1; 32], [2; 32], [11; 32], [12; 32], [13; 32]);
        {
            let mut st = GatewayState::open(&path).unwrap();
            assert_eq!(st.accepted().unwrap(), None);
            assert_eq!(st.bind(7, &k1, &c1, "s1", "s1.1", 100).unwrap(), Binding::New);
            // The same key again (even in another certificate) is the same device.
            assert_eq!(st.bind(7, &k1, &c1, "s1", "s1.1", 101).unwrap(), Binding::Same);
            assert_eq!(st.bind(7, &k1, &c3, "s1", "s1.1", 101).unwrap(), Binding::Same);
            // Another key for serial 7: held by the first.
            assert_eq!(
                st.bind(7, &k2, &c2, "s1", "s1.1", 102).unwrap(),
                Binding::Held {
                    public_key_sha256: k1,
                    first_seen: 100
                }
            );
            // Other serials are independent; u64 serials above i64::MAX too.
            assert_eq!(st.bind(8, &k2, &c2, "s1", "s1.1", 103).unwrap(), Binding::New);
            assert_eq!(
                st.bind(u64::MAX, &k2, &c2, "s1", "s1.1", 103).unwrap(),
                Binding::New
            );
        }
        // Reopened: the bindings hold.
        let mut st = GatewayState::open(&path).unwrap();
        assert!(matches!(
            st.bind(7, &k2, &c2, "s1", "s1.1", 200).unwrap(),
            Binding::Held { public_key_sha256, .. } if public_key_sha256 == k1
        ));
        let b = st.bindings().unwrap();
        assert_eq!(
            b.iter()
                .map(|b| (b.device_serial, b.clones_refused))
                .collect::<Vec<_>>(),
            vec![(7, 2), (8, 0), (u64::MAX, 0)]
        );
        assert_eq!(b[0].public_key_sha256, hex::encode(k1));
        assert_eq!(b[0].certificate_sha256, hex::encode(c1));
    }

    #[test]
    fn a_state_file_from_a_newer_stamp_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        drop(GatewayState::open(&path).unwrap());
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            GatewayState::open(&path),
            Err(StateError::Store(StoreError::TooNew { .. }))
        ));
    }
}
