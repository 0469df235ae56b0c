//! stamp storage: SQLite state databases with schema migrations, and atomic file writes.
//!
//! Role crates (HQ, site) define their schema as one ordered list of [`Migration`]s and their own
//! narrow, typed store on top of the [`rusqlite::Connection`] returned here. Every database runs in
//! WAL mode with `synchronous = FULL`, so a committed transaction survives power loss.
//!
//! A migration's version is its position in the list (the first is 1), as in cargo's
//! `util/sqlite.rs`; the database records the last one applied in `PRAGMA user_version`. Opening
//! refuses a list whose versions are not exactly 1, 2, ..., n in order
//! ([`StoreError::BadMigrations`]) and a database whose version is past the end of the list
//! ([`StoreError::TooNew`]). So an entry is never removed, reordered, renumbered or edited once
//! released: a new schema change is a new entry at the end.

// Items are `pub` only where the crate exports them (rustls and webpki do the same).
#![warn(unreachable_pub)]
// Numbers cross into SQLite's signed 64-bit integers here: every conversion is explicit.
#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss
    )
)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// An SQLite failure in one of a role's queries, as the role's error carries it (the role's
/// error says which database).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SqlError(#[from] rusqlite::Error);

/// One step of a schema: applied once, in order, inside a transaction.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Schema version after this step: its position in the role's list, counting from 1. It is
    /// written out so that a reader of the list sees the number a database records; opening
    /// checks that it matches the position.
    pub version: u32,
    /// SQL run to reach it.
    pub sql: &'static str,
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file does not exist.
    #[error("no state database at {0}; is this the right --dir?")]
    Missing(PathBuf),
    /// SQLite failed.
    #[error("database {path} failed")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The database was written by a newer stamp.
    #[error("database {path} has schema version {found}, newer than this stamp understands ({known}); upgrade stamp")]
    TooNew {
        /// The database.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The newest this build knows.
        known: u32,
    },
    /// The role's migration list is malformed: its versions are not exactly 1, 2, ..., n in list
    /// order (an entry missing, moved or repeated). A bug in this build of stamp, not in the
    /// database, which is left untouched.
    #[error("cannot open {path}: this stamp's schema list is malformed (entry {position} has version {found}, expected {position}); migrations must be numbered 1, 2, 3, ... in list order")]
    BadMigrations {
        /// The database.
        path: PathBuf,
        /// The entry's position in the list, counting from 1 (the version it should have).
        position: u32,
        /// The version it has.
        found: u32,
    },
    /// A file operation failed.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A state database.
pub struct Database {
    conn: Connection,
    path: PathBuf,
}

impl Database {
    /// Creates a new database at `path` (which must not exist) and applies all migrations.
    pub fn create(path: &Path, migrations: &[Migration]) -> Result<Self, StoreError> {
        if path.exists() {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
            });
        }
        Self::open_inner(path, migrations, true)
    }

    /// Opens an existing database and applies any migrations it has not had yet.
    pub fn open(path: &Path, migrations: &[Migration]) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        Self::open_inner(path, migrations, false)
    }

    fn open_inner(path: &Path, migrations: &[Migration], create: bool) -> Result<Self, StoreError> {
        // Checked before the file is opened: a malformed list neither creates nor changes a file.
        let known = check_migrations(path, migrations)?;
        let sql = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let flags = if create {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        } else {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let mut conn = Connection::open_with_flags(path, flags).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sql)?;
        let current: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        if current > known {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found: current,
                known,
            });
        }
        for m in migrations.iter().filter(|m| m.version > current) {
            let tx = conn.transaction().map_err(sql)?;
            tx.execute_batch(m.sql).map_err(sql)?;
            tx.pragma_update(None, "user_version", m.version).map_err(sql)?;
            tx.commit().map_err(sql)?;
        }
        Ok(Database {
            conn,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for the role's typed store.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The connection, mutably (transactions).
    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Runs `f` in a transaction and commits it; on any error nothing `f` did is kept.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let value = f(&tx).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(value)
    }

    /// Runs `f` in an immediate (write-locked) transaction and commits it if `f` succeeds; on any
    /// error nothing `f` did is kept. For work that mixes queries with other fallible steps.
    pub fn transaction<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        let value = f(&tx)?;
        tx.commit().map_err(sql)?;
        Ok(value)
    }

    /// Maps a SQLite error to a [`StoreError`] naming this database.
    pub fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The current schema version.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}

/// Checks that `migrations` are numbered 1, 2, ..., n in list order; returns n, the newest
/// version.
fn check_migrations(path: &Path, migrations: &[Migration]) -> Result<u32, StoreError> {
    let mut known = 0u32;
    for m in migrations {
        let position = known.saturating_add(1);
        if m.version != position {
            return Err(StoreError::BadMigrations {
                path: path.to_owned(),
                position,
                found: m.version,
            });
        }
        known = position;
    }
    Ok(known)
}

/// A `u64` (a serial, an index, a size, a sequence) as SQLite's signed 64-bit INTEGER stores it:
/// the same 64 bits, so every `u64` has exactly one value ([`from_sql`] reads it back). Values
/// above `i64::MAX` are negative to SQL: compare and sort such columns only for equality.
pub fn to_sql(v: u64) -> i64 {
    v.cast_signed()
}

/// The `u64` that [`to_sql`] stored (a count SQL computed is read the same way).
pub fn from_sql(v: i64) -> u64 {
    v.cast_unsigned()
}

/// The number the next CRL recorded in the role's `crls` table gets: one more than the last, 1
/// for the first. Call it and [`record_crl`] in the transaction that issues the CRL, so two CRLs
/// never share a number.
pub fn next_crl_number(conn: &Connection) -> rusqlite::Result<u64> {
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(number), 0) FROM crls", [], |r| r.get(0))?;
    Ok(from_sql(last).saturating_add(1))
}

/// Records a CRL just issued in the role's `crls` table (the same columns at HQ and at a site):
/// its number, validity (Unix seconds), how many certificates it revokes and its SHA-256.
pub fn record_crl(
    conn: &Connection,
    number: u64,
    this_update: i64,
    next_update: i64,
    revoked: usize,
    sha256: &[u8],
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO crls (number, this_update, next_update, revoked, sha256) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![
            to_sql(number),
            this_update,
            next_update,
            i64::try_from(revoked).unwrap_or(i64::MAX),
            sha256
        ],
    )?;
    Ok(())
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. `mode` is the new file's permission bits.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// A state directory under construction: everything is created in a hidden sibling directory and
/// moved into place by [`StagingDir::commit`], so a failed `init` leaves nothing behind.
pub struct StagingDir {
    staging: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Starts building `target`, which must not exist or be an empty directory.
    pub fn new(target: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: target.to_owned(),
            source,
        };
        if target.exists() {
            let empty = target.is_dir() && fs::read_dir(target).map_err(io)?.next().is_none();
            if !empty {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists and is not empty; choose a new directory",
                )));
            }
        }
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io)?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(".{name}.staging-{}", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io)?;
        }
        let mut builder = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&staging).map_err(io)?;
        Ok(StagingDir {
            staging,
            target: target.to_owned(),
            committed: false,
        })
    }

    /// Where to build.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves the finished directory into place.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.target.clone(),
            source,
        };
        if self.target.exists() {
            fs::remove_dir(&self.target).map_err(io)?;
        }
        fs::rename(&self.staging, &self.target).map_err(io)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &[Migration] = &[
        Migration {
            version: 1,
            sql: "CREATE TABLE t (x INTEGER);",
        },
        Migration {
            version: 2,
            sql: "ALTER TABLE t ADD COLUMN y TEXT;",
        },
    ];

    #[test]
    fn migrations_apply_once_and_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        {
            let db = Database::create(&p, &M[..1]).unwrap();
            assert_eq!(db.schema_version().unwrap(), 1);
        }
        let db = Database::open(&p, M).unwrap();
        assert_eq!(db.schema_version().unwrap(), 2);
        db.conn()
            .execute("INSERT INTO t (x, y) VALUES (1, 'a')", [])
            .unwrap();
        drop(db);
        assert!(matches!(
            Database::open(&p, &M[..1]),
            Err(StoreError::TooNew { found: 2, .. })
        ));
        assert!(Database::create(&p, M).is_err());
        assert!(matches!(
            Database::open(&dir.path().join("none.db"), M),
            Err(StoreError::Missing(_))
        ));
    }

    fn step(version: u32) -> Migration {
        Migration {
            version,
            sql: "SELECT 1;",
        }
    }

    #[test]
    fn a_list_not_numbered_by_position_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let cases: &[(&str, Vec<Migration>, u32, u32)] = &[
            ("gap", vec![step(1), step(2), step(4)], 3, 4),
            ("reorder", vec![step(1), step(3), step(2)], 2, 3),
            ("duplicate", vec![step(1), step(2), step(2)], 3, 2),
            ("zero-based", vec![step(0), step(1)], 1, 0),
        ];
        for (name, list, at, got) in cases {
            match Database::create(&p, list) {
                Err(e @ StoreError::BadMigrations { position, found, .. }) => {
                    assert_eq!((position, found), (*at, *got), "{name}");
                    assert!(e.to_string().contains("1, 2, 3"), "{name}: {e}");
                }
                other => panic!("{name}: {:?}", other.map(|d| d.path().to_owned())),
            }
            assert!(!p.exists(), "{name}: a refused list creates no file");
        }
        // An existing database is refused, and left as it was.
        Database::create(&p, M).unwrap();
        for (name, list, ..) in cases {
            assert!(
                matches!(Database::open(&p, list), Err(StoreError::BadMigrations { .. })),
                "{name}"
            );
        }
        assert_eq!(Database::open(&p, M).unwrap().schema_version().unwrap(), 2);
        // The empty list is well formed (version 0).
        let empty = dir.path().join("e.db");
        assert_eq!(
            Database::create(&empty, &[]).unwrap().schema_version().unwrap(),
            0
        );
    }

    #[test]
    fn a_database_newer_than_the_list_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let three = [M[0], M[1], step(3)];
        Database::create(&p, &three).unwrap();
        for known in [0usize, 1, 2] {
            match Database::open(&p, &three[..known]) {
                Err(e @ StoreError::TooNew { found: 3, .. }) => {
                    assert!(e.to_string().contains("upgrade stamp"), "{e}");
                }
                other => panic!("{known}: {:?}", other.map(|d| d.path().to_owned())),
            }
        }
        assert_eq!(Database::open(&p, &three).unwrap().schema_version().unwrap(), 3);
    }

    #[test]
    fn staging_dir_commits_or_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state");
        {
            let s = StagingDir::new(&target).unwrap();
            fs::write(s.path().join("f"), b"x").unwrap();
        }
        assert!(!target.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "staging removed on failure"
        );
        let s = StagingDir::new(&target).unwrap();
        fs::write(s.path().join("f"), b"x").unwrap();
        s.commit().unwrap();
        assert_eq!(fs::read(target.join("f")).unwrap(), b"x");
        assert!(
            StagingDir::new(&target).is_err(),
            "a non-empty directory is never reused"
        );
    }

    #[test]
    fn write_atomic_replaces_with_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn u64s_round_trip_through_sqlite_integers_bit_for_bit() {
        for v in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(from_sql(to_sql(v)), v);
            assert_eq!(to_sql(v), v as i64, "the same bits as the cast it replaces");
        }
    }
}
