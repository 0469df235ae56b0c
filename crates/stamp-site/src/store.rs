//! The site database: a narrow, typed interface over SQLite.

use std::path::Path;

use stamp_core::profile::Profile;
use stamp_core::SiteId;
use stamp_keys::KeyRef;
use stamp_store::rusqlite::{params, OptionalExtension};
use stamp_store::{Database, Migration, StoreError};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: "
        CREATE TABLE site (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            site_id TEXT NOT NULL,
            request_sha256 BLOB NOT NULL,
            created_at TEXT NOT NULL,
            installed_at TEXT
        );
        CREATE TABLE own_keys (
            profile TEXT PRIMARY KEY,
            key_ref TEXT NOT NULL,
            algorithm TEXT NOT NULL
        );
        -- Certificates from the credentials: the site's own, HQ's and the OEM root.
        CREATE TABLE certificates (
            profile TEXT PRIMARY KEY,
            der BLOB NOT NULL
        );
    ",
    },
    Migration {
        version: 2,
        sql: "
        -- Every entitlement package applied, by sequence (the primary key refuses a replay).
        CREATE TABLE packages (
            sequence INTEGER PRIMARY KEY,
            entitlement_id TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('grant', 'amend')),
            sha256 BLOB NOT NULL,
            sealed BLOB NOT NULL,
            applied_at TEXT NOT NULL
        );
        -- Each grant with amendments applied (GrantState as JSON) and devices issued under it.
        CREATE TABLE entitlements (
            entitlement_id TEXT PRIMARY KEY,
            state_json TEXT NOT NULL,
            issued INTEGER NOT NULL DEFAULT 0,
            applied_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
    ",
    },
    Migration {
        version: 3,
        sql: "
        -- The audit log: each entry's CBOR (the Merkle leaf) and its leaf hash.
        CREATE TABLE log_entries (
            idx INTEGER PRIMARY KEY,
            time_ms INTEGER NOT NULL,
            entry BLOB NOT NULL,
            leaf_hash BLOB NOT NULL
        );
        -- The Merkle frontier after the last entry (stamp_core::merkle::Frontier bytes).
        CREATE TABLE log_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            frontier BLOB NOT NULL,
            last_time_ms INTEGER NOT NULL
        );
        INSERT INTO log_state (id, frontier, last_time_ms) VALUES (1, X'0000000000000000', 0);
        -- Every device certificate issued; serials and keys are unique across the site.
        CREATE TABLE devices (
            device_serial INTEGER PRIMARY KEY,
            entitlement_id TEXT NOT NULL,
            cert_sha256 BLOB NOT NULL,
            spki_sha256 BLOB NOT NULL UNIQUE,
            certificate BLOB NOT NULL,
            issued_ms INTEGER NOT NULL,
            station TEXT NOT NULL,
            log_index INTEGER NOT NULL,
            hq_key_index INTEGER
        );
        CREATE INDEX devices_by_grant_time ON devices (entitlement_id, issued_ms);
        -- Signed checkpoints the site made, and its exports.
        CREATE TABLE checkpoints (
            size INTEGER PRIMARY KEY,
            root BLOB NOT NULL,
            note TEXT NOT NULL,
            made_ms INTEGER NOT NULL
        );
        CREATE TABLE exports (
            bundle_id BLOB PRIMARY KEY,
            previous_size INTEGER NOT NULL,
            size INTEGER NOT NULL,
            root BLOB NOT NULL,
            made_ms INTEGER NOT NULL
        );
    ",
    },
    Migration {
        version: 4,
        sql: "
        -- Line stations: their TLS client certificates, issued by the site issuing CA.
        CREATE TABLE stations (
            name TEXT PRIMARY KEY,
            cert_sha256 BLOB NOT NULL UNIQUE,
            certificate BLOB NOT NULL,
            added_ms INTEGER NOT NULL,
            revoked_ms INTEGER
        );
        -- Certificates issued again to devices that had one (EST re-enrollment); not quota.
        CREATE TABLE renewals (
            log_index INTEGER PRIMARY KEY,
            device_serial INTEGER NOT NULL,
            entitlement_id TEXT NOT NULL,
            cert_sha256 BLOB NOT NULL,
            spki_sha256 BLOB NOT NULL,
            certificate BLOB NOT NULL,
            issued_ms INTEGER NOT NULL,
            station TEXT NOT NULL
        );
        CREATE INDEX renewals_by_key ON renewals (spki_sha256);
        CREATE INDEX renewals_by_serial ON renewals (device_serial);
    ",
    },
    // The site issuing CA's CRLs (version 5), beside the code that uses them.
    crate::crl::MIGRATION,
    Migration {
        version: 6,
        sql: "
        -- Hashes of the audit log's perfect Merkle subtrees at levels 4, 8, 12, ... (2^level
        -- leaves from leaf idx * 2^level), stored as appends complete them: proofs read O(log n)
        -- rows instead of every leaf (docs/formats/audit.md, site storage).
        CREATE TABLE log_subtrees (
            level INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            hash BLOB NOT NULL,
            PRIMARY KEY (level, idx)
        ) WITHOUT ROWID;
        -- Entries logged before this table existed, whose subtrees are not stored yet (the next
        -- export stores them, once: crate::log::backfill_subtrees). 0 for a new log.
        ALTER TABLE log_state ADD COLUMN subtrees_from INTEGER NOT NULL DEFAULT 0;
        UPDATE log_state SET subtrees_from = (SELECT COALESCE(MAX(idx) + 1, 0) FROM log_entries);
    ",
    },
];

pub(crate) fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The site database.
pub struct SiteStore {
    db: Database,
}

impl SiteStore {
    /// Creates a new site database.
    pub fn create(
        path: &Path,
        site: &SiteId,
        request_sha256: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<Self, StoreError> {
        let db = Database::create(path, MIGRATIONS)?;
        db.conn()
            .execute(
                "INSERT INTO site (id, site_id, request_sha256, created_at) VALUES (1, ?1, ?2, ?3)",
                params![site.as_str(), request_sha256.as_slice(), ts(now)],
            )
            .map_err(|e| db.err(e))?;
        Ok(SiteStore { db })
    }

    /// Opens a site database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(SiteStore {
            db: Database::open(path, MIGRATIONS)?,
        })
    }

    /// The connection, for queries of the role's modules.
    pub(crate) fn conn(&self) -> &stamp_store::rusqlite::Connection {
        self.db.conn()
    }

    /// The database, for transactions of the role's modules.
    pub(crate) fn db_mut(&mut self) -> &mut Database {
        &mut self.db
    }

    /// Checks the whole audit log (see `stamp site verify-log`); returns its size and root.
    pub fn verify_log(&self) -> Result<(u64, stamp_core::merkle::Hash), crate::SiteError> {
        crate::log::verify(self.db.conn())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// The site's ID.
    pub fn site_id(&self) -> Result<SiteId, StoreError> {
        let s: String = self
            .db
            .conn()
            .query_row("SELECT site_id FROM site WHERE id = 1", [], |r| r.get(0))
            .map_err(|e| self.db.err(e))?;
        SiteId::new(&s).map_err(|_| {
            self.db.err(stamp_store::rusqlite::Error::InvalidColumnType(
                0,
                "site_id".into(),
                stamp_store::rusqlite::types::Type::Text,
            ))
        })
    }

    /// Records one of the site's keys.
    pub fn add_key(&mut self, profile: Profile, key: &KeyRef, algorithm: &str) -> Result<(), StoreError> {
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO own_keys (profile, key_ref, algorithm) VALUES (?1, ?2, ?3)",
                params![profile.name(), key.to_string(), algorithm],
            )
            .map(|_| ())
        })
    }

    /// The reference of one of the site's keys.
    pub fn key_ref(&self, profile: Profile) -> Result<String, StoreError> {
        self.db
            .conn()
            .query_row(
                "SELECT key_ref FROM own_keys WHERE profile = ?1",
                [profile.name()],
                |r| r.get(0),
            )
            .map_err(|e| self.db.err(e))
    }

    /// Whether credentials are installed.
    pub fn installed(&self) -> Result<bool, StoreError> {
        self.db
            .conn()
            .query_row("SELECT installed_at FROM site WHERE id = 1", [], |r| {
                r.get::<_, Option<String>>(0)
            })
            .map(|o| o.is_some())
            .map_err(|e| self.db.err(e))
    }

    /// Stores the credentials' certificates and marks the site installed, in one transaction.
    pub fn install(&mut self, certs: &[(Profile, &[u8])], now: OffsetDateTime) -> Result<(), StoreError> {
        self.db.write(|tx| {
            for (p, der) in certs {
                tx.execute(
                    "INSERT INTO certificates (profile, der) VALUES (?1, ?2)",
                    params![p.name(), der],
                )?;
            }
            tx.execute("UPDATE site SET installed_at = ?1 WHERE id = 1", [ts(now)])?;
            Ok(())
        })
    }

    /// A certificate from the installed credentials (DER), if installed.
    pub fn certificate(&self, profile: Profile) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .conn()
            .query_row(
                "SELECT der FROM certificates WHERE profile = ?1",
                [profile.name()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db.err(e))
    }
}
