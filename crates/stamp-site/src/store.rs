//! The site database: a narrow, typed interface over SQLite. Its whole schema is [`schema`] (one
//! ordered migration list).

use std::path::Path;

use rusqlite::{params, OptionalExtension};
use stamp_core::profile::Profile;
use stamp_core::SiteId;
use stamp_keys::KeyRef;
use stamp_store::{Database, StoreError};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

mod schema;

#[cfg(test)]
pub(crate) use schema::BEFORE_SUBTREES;
pub(crate) use schema::MIGRATIONS;

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
    pub(crate) fn conn(&self) -> &rusqlite::Connection {
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
            self.db.err(rusqlite::Error::InvalidColumnType(
                0,
                "site_id".into(),
                rusqlite::types::Type::Text,
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
