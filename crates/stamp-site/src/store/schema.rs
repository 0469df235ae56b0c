//! The site's schema: every migration of the site database, in order, in one place.
//!
//! Entry N of [`MIGRATIONS`] is schema version N (stamp-store checks that the versions are 1, 2,
//! ..., n in order and records the last one applied in `PRAGMA user_version`). A released entry
//! is never edited, removed or reordered, since databases in the field have run it: a change to
//! the schema is a new entry at the end (docs/CONTRIBUTING.md, "How to add a migration"). The
//! test below pins the SQL of every entry.

use stamp_store::Migration;

/// The site's migrations; entry N is version N.
pub(crate) const MIGRATIONS: &[Migration] = &[
    // 1: the site itself (its ID and request, when it was installed), its own keys, and the
    // certificates from its credentials.
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
    // 2: entitlements (crate::entitlements): every package applied, and each grant with its
    // amendments and devices issued.
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
    // 3: the audit log (crate::log, docs/formats/audit.md) and its Merkle frontier, every device
    // certificate issued, checkpoints and exports.
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
    // 4: line stations (crate::stations) and renewals (EST re-enrollment). The last version
    // without the subtree table: see [`BEFORE_SUBTREES`].
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
    // 5: the site issuing CA's CRLs (crate::crl).
    Migration {
        version: 5,
        sql: "
    -- Every CRL the site issuing CA signed (numbers grow by one).
    CREATE TABLE crls (
        number INTEGER PRIMARY KEY,
        this_update INTEGER NOT NULL,
        next_update INTEGER NOT NULL,
        revoked INTEGER NOT NULL,
        sha256 BLOB NOT NULL
    );
",
    },
    // 6: the audit log's stored subtree hashes (crate::log), backfilled once by the next export.
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

/// The schema version before the audit log's subtree table (version 6): tests build a database
/// as those versions wrote it with `&MIGRATIONS[..BEFORE_SUBTREES]`.
#[cfg(test)]
pub(crate) const BEFORE_SUBTREES: usize = 4;

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// SHA-256 of each released migration's SQL, by version. A database that ran a migration
    /// never runs it again, so changing a released entry would leave old and new databases with
    /// different schemas under one version: add a new entry instead (and its hash here).
    const RELEASED: &[(u32, &str)] = &[
        (
            1,
            "2b42ed2e60590eb3ea451e05c63b3916b3cb82b4dfde99289ccc844b77fd6402",
        ),
        (
            2,
            "3fe00a2c315f628d0c449e762b810a99d8ded61f5fab531cd20ca826c00c3102",
        ),
        (
            3,
            "3b5d155aa2f5f3da00eec4f1956afc03af5fbe751eed18c58771f3c1be41bd5c",
        ),
        (
            4,
            "e677f2181e5c39fcf653168f6924e063ee4dbc5b77cd82965aefb6bfcbf405fe",
        ),
        (
            5,
            "6f7accb6a5c781d694e90978af87d6abd54715b00e6c96a1d05fe417d477e417",
        ),
        (
            6,
            "e6a37e772d7855138aaa47f593573c4efb028ec34b5fad936726ce7c79b37be1",
        ),
    ];

    #[test]
    fn released_migrations_are_unchanged_and_numbered_by_position() {
        stamp_testkit::assert_migrations_pinned(MIGRATIONS, RELEASED);
    }

    #[test]
    fn before_subtrees_ends_before_the_subtree_table() {
        let before = &MIGRATIONS[..super::BEFORE_SUBTREES];
        assert!(before.iter().all(|m| !m.sql.contains("log_subtrees")));
        assert!(MIGRATIONS[super::BEFORE_SUBTREES..]
            .iter()
            .any(|m| m.sql.contains("CREATE TABLE log_subtrees")));
    }
}
