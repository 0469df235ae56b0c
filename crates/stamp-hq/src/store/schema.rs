//! HQ's schema: every migration of the HQ database, in order, in one place.
//!
//! Entry N of [`MIGRATIONS`] is schema version N (stamp-store checks that the versions are 1, 2,
//! ..., n in order and records the last one applied in `PRAGMA user_version`). A released entry
//! is never edited, removed or reordered, since databases in the field have run it: a change to
//! the schema is a new entry at the end (docs/CONTRIBUTING.md, "How to add a migration"). The
//! test below pins the SQL of every entry.

use stamp_store::Migration;

/// HQ's migrations; entry N is version N.
pub(crate) const MIGRATIONS: &[Migration] = &[
    // 1: HQ itself (its org), its own keys and their certificates, every certificate it issued,
    // and the enrolled sites.
    Migration {
        version: 1,
        sql: "
        CREATE TABLE hq (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            org TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        -- HQ's own keys: where each lives and its certificate.
        CREATE TABLE own_keys (
            profile TEXT PRIMARY KEY,
            key_ref TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            cert_der BLOB NOT NULL
        );
        -- Every certificate HQ has issued.
        CREATE TABLE certificates (
            sha256 BLOB PRIMARY KEY,
            profile TEXT NOT NULL,
            site_id TEXT,
            spki_sha256 BLOB NOT NULL,
            issued_at TEXT NOT NULL,
            der BLOB NOT NULL
        );
        CREATE INDEX certificates_spki ON certificates (spki_sha256);
        CREATE TABLE sites (
            site_id TEXT PRIMARY KEY,
            request_sha256 BLOB NOT NULL,
            enrolled_at TEXT NOT NULL
        );
    ",
    },
    // 2: entitlements: HQ's view of every grant, the sealed packages sent to sites, and the
    // device serial ranges allocated across all sites.
    Migration {
        version: 2,
        sql: "
        -- HQ's view of every grant, amendments applied (GrantState as JSON).
        CREATE TABLE entitlements (
            entitlement_id TEXT PRIMARY KEY,
            site_id TEXT NOT NULL REFERENCES sites (site_id),
            state_json TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        -- Every sealed package sent to a site, by per-site sequence.
        CREATE TABLE packages (
            site_id TEXT NOT NULL REFERENCES sites (site_id),
            sequence INTEGER NOT NULL,
            entitlement_id TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('grant', 'amend')),
            payload_cbor BLOB NOT NULL,
            sealed BLOB NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (site_id, sequence)
        );
        -- Device serial ranges, across all sites; never overlapping.
        CREATE TABLE serial_allocations (
            first INTEGER NOT NULL UNIQUE,
            last INTEGER NOT NULL,
            entitlement_id TEXT NOT NULL,
            site_id TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            CHECK (last >= first)
        );
    ",
    },
    // 3: firmware signing (crate::firmware): named firmware-signing keys and every release.
    Migration {
        version: 3,
        sql: "
        -- HQ's named firmware-signing keys.
        CREATE TABLE firmware_keys (
            name TEXT PRIMARY KEY,
            key_ref TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            cert_der BLOB NOT NULL,
            created_at TEXT NOT NULL
        );
        -- Every signed firmware release; a version is released once per key and format.
        CREATE TABLE firmware_releases (
            id INTEGER PRIMARY KEY,
            version TEXT NOT NULL,
            format TEXT NOT NULL,
            key_name TEXT NOT NULL REFERENCES firmware_keys (name),
            sha256 BLOB NOT NULL,
            image_digest BLOB NOT NULL,
            size INTEGER NOT NULL,
            signed_at TEXT NOT NULL,
            UNIQUE (format, key_name, version)
        );
    ",
    },
    // 4: reconciliation (crate::reconcile, docs/formats/audit.md): per site where HQ's copy of its
    // log ends, accepted checkpoints, reconciled bundles, equivocation evidence, each grant as
    // the log applied it, first uses of serials and keys, and the registry of genuine devices.
    Migration {
        version: 4,
        sql: "
    -- Reconciliation (docs/formats/audit.md). Per site: where HQ's copy of its log ends.
    CREATE TABLE audit_sites (
        site_id TEXT PRIMARY KEY REFERENCES sites (site_id),
        size INTEGER NOT NULL,               -- entries reconciled
        root BLOB NOT NULL,                  -- Merkle root of those entries
        note TEXT NOT NULL,                  -- the signed checkpoint for them
        frontier BLOB NOT NULL,              -- merkle::Frontier::to_bytes of that tree
        last_time_ms INTEGER NOT NULL,       -- time of the last entry
        last_sequence INTEGER NOT NULL,      -- last entitlement package the log applied
        updated_at TEXT NOT NULL
    );
    -- Every checkpoint accepted, kept for good.
    CREATE TABLE audit_checkpoints (
        site_id TEXT NOT NULL REFERENCES sites (site_id),
        size INTEGER NOT NULL,
        root BLOB NOT NULL,
        note TEXT NOT NULL,
        bundle_id BLOB NOT NULL,
        accepted_at TEXT NOT NULL,
        PRIMARY KEY (site_id, size)
    );
    -- Every bundle reconciled, with its report.
    CREATE TABLE audit_bundles (
        site_id TEXT NOT NULL REFERENCES sites (site_id),
        bundle_id BLOB NOT NULL,
        first_index INTEGER NOT NULL,
        entry_count INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        reconciled_at TEXT NOT NULL,
        violations INTEGER NOT NULL,
        devices_recorded INTEGER NOT NULL,
        report_json TEXT NOT NULL,
        PRIMARY KEY (site_id, bundle_id)
    );
    -- Equivocation evidence: two checkpoints signed by the site for the same tree size with
    -- different roots, and the signed header envelope that carried the second.
    CREATE TABLE audit_equivocations (
        id INTEGER PRIMARY KEY,
        site_id TEXT NOT NULL REFERENCES sites (site_id),
        size INTEGER NOT NULL,
        accepted_root BLOB NOT NULL,
        accepted_note TEXT NOT NULL,
        conflicting_root BLOB NOT NULL,
        conflicting_note TEXT NOT NULL,
        header_envelope BLOB NOT NULL,
        detected_at TEXT NOT NULL
    );
    -- Each grant as the site's log applied it (GrantState JSON), its device count and the
    -- recent issuance times of each rate period ({period: [[time_ms, count], ...]}).
    CREATE TABLE audit_grants (
        entitlement_id TEXT PRIMARY KEY,
        site_id TEXT NOT NULL REFERENCES sites (site_id),
        state_json TEXT NOT NULL,
        issued INTEGER NOT NULL,
        rate_tails_json TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    -- First use of every device serial, public key and HQ-generated key in any site's log.
    CREATE TABLE audit_serials (
        device_serial INTEGER PRIMARY KEY,   -- the u64 serial's bits as a signed integer
        site_id TEXT NOT NULL,
        entitlement_id TEXT NOT NULL,
        log_index INTEGER NOT NULL
    );
    CREATE TABLE audit_public_keys (
        public_key_sha256 BLOB PRIMARY KEY,
        site_id TEXT NOT NULL,
        entitlement_id TEXT NOT NULL,
        log_index INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE audit_hq_keys (
        entitlement_id TEXT NOT NULL,
        hq_key_index INTEGER NOT NULL,
        site_id TEXT NOT NULL,
        log_index INTEGER NOT NULL,
        PRIMARY KEY (entitlement_id, hq_key_index)
    );
    -- The registry of genuine devices: every device certificate that passed every check.
    CREATE TABLE devices (
        certificate_sha256 BLOB PRIMARY KEY,
        site_id TEXT NOT NULL REFERENCES sites (site_id),
        entitlement_id TEXT NOT NULL,
        device_serial INTEGER NOT NULL,
        public_key_sha256 BLOB NOT NULL,
        certificate BLOB NOT NULL,
        issued_at_ms INTEGER NOT NULL,
        log_index INTEGER NOT NULL,
        bundle_id BLOB NOT NULL,
        recorded_at TEXT NOT NULL
    );
    CREATE INDEX devices_site ON devices (site_id, log_index);
    CREATE INDEX devices_serial ON devices (device_serial);
    CREATE INDEX devices_public_key ON devices (public_key_sha256);
",
    },
    // 5: the cloud (crate::cloud, docs/cloud.md): revocations HQ publishes in the registry, and
    // every registry HQ signed.
    Migration {
        version: 5,
        sql: "
    -- Revocations HQ publishes in the registry; exactly one selector per row.
    CREATE TABLE revocations (
        id INTEGER PRIMARY KEY,
        device_serial INTEGER,
        certificate_sha256 BLOB,
        entitlement_id TEXT,
        site_id TEXT,
        reason TEXT NOT NULL,
        revoked_at INTEGER NOT NULL,
        CHECK ((device_serial IS NOT NULL) + (certificate_sha256 IS NOT NULL)
             + (entitlement_id IS NOT NULL) + (site_id IS NOT NULL) = 1)
    );
    -- Every registry HQ signed, by sequence (verifiers refuse older sequences).
    CREATE TABLE registry_exports (
        sequence INTEGER PRIMARY KEY,
        sha256 BLOB NOT NULL,
        devices INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
",
    },
    // 6: the OEM root's CRLs (crate::crl).
    Migration {
        version: 6,
        sql: "
    -- Every CRL the OEM root signed (numbers grow by one).
    CREATE TABLE crls (
        number INTEGER PRIMARY KEY,
        this_update INTEGER NOT NULL,
        next_update INTEGER NOT NULL,
        revoked INTEGER NOT NULL,
        sha256 BLOB NOT NULL
    );
",
    },
    // 7: the registry's indexes on device serial and on public key go. Nothing queries them, and
    // every recorded device paid for both (the public-key one on a random page of a 43 MB index
    // at 1M devices: a 1M-entry reconciliation took 138 s of CPU with them, about 117 s
    // without). A device is found by serial or key through `audit_serials` or
    // `audit_public_keys` (site and log index of its first use), then `devices_site`.
    Migration {
        version: 7,
        sql: "
    DROP INDEX IF EXISTS devices_serial;
    DROP INDEX IF EXISTS devices_public_key;
",
    },
    // 8: each grant's reconciled serial frontier (the highest serial within its ranges of a
    // device-issued or key-handed-out entry of its log; the u64's bits), which the registry
    // carries so the cloud decides `not-in-log` from serials, not from the site's clock. Grants
    // reconciled before it get the highest serial first used under them within their ranges
    // (audit_serials also records a renewal's unknown serial, so this can only be higher than
    // the exact frontier, refusing more, never admitting more).
    Migration {
        version: 8,
        sql: "
    ALTER TABLE audit_grants ADD COLUMN serial_frontier INTEGER;
    UPDATE audit_grants SET serial_frontier = (
        SELECT MAX(s.device_serial) FROM audit_serials s
        WHERE s.entitlement_id = audit_grants.entitlement_id
          AND s.site_id = audit_grants.site_id
          AND s.device_serial >= 0
          AND EXISTS (
              SELECT 1 FROM json_each(audit_grants.state_json, '$.grant.serial_ranges') r
              WHERE s.device_serial >= json_extract(r.value, '$.first')
                AND s.device_serial <= json_extract(r.value, '$.last')
          )
    );
",
    },
    // 9: one live certificate per device serial. A renewal HQ accepts supersedes the certificate
    // it replaces (`devices.superseded_by`); `audit_live` names each serial's live certificate;
    // `audit_renewals` holds the time of every renewal entry, for the renewal limit. Existing
    // registries are backfilled: per serial, the certificate logged last is live.
    Migration {
        version: 9,
        sql: "
    ALTER TABLE devices ADD COLUMN superseded_by BLOB;
    CREATE TABLE audit_live (
        device_serial INTEGER PRIMARY KEY,   -- the u64 serial's bits as a signed integer
        certificate_sha256 BLOB NOT NULL
    );
    INSERT OR REPLACE INTO audit_live (device_serial, certificate_sha256)
        SELECT device_serial, certificate_sha256 FROM devices ORDER BY site_id, log_index;
    UPDATE devices SET superseded_by =
        (SELECT l.certificate_sha256 FROM audit_live l WHERE l.device_serial = devices.device_serial)
        WHERE certificate_sha256 NOT IN (SELECT certificate_sha256 FROM audit_live);
    CREATE TABLE audit_renewals (
        device_serial INTEGER NOT NULL,
        time_ms INTEGER NOT NULL
    );
    CREATE INDEX audit_renewals_by_serial ON audit_renewals (device_serial, time_ms);
",
    },
];

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// SHA-256 of each released migration's SQL, by version. A database that ran a migration
    /// never runs it again, so changing a released entry would leave old and new databases with
    /// different schemas under one version: add a new entry instead (and its hash here).
    const RELEASED: &[(u32, &str)] = &[
        (
            1,
            "73a3ca03072a404f9b0c87df964f8e352b14ea96338b93d62841d835e00be638",
        ),
        (
            2,
            "408544604896265cc88ee23adf5dd121f5965676a7160cc456aacfc4a71741ff",
        ),
        (
            3,
            "851fe89667eb2293de6094931ba3bad95e2fb59b1223ae00e28cede689eb35dd",
        ),
        (
            4,
            "62266dea0642f09968bc99f034a78e96c193c919f50d6c02e39fbfe9668f6772",
        ),
        (
            5,
            "0bdda83f54ad6710bf28d653aa227ffe0d51b8f0ffdaa6128eb73c9cc17a32d2",
        ),
        (
            6,
            "f7223ba3b1a405672588c638292f382771d0f85e00fdc35cb629a3601f7d2df8",
        ),
        (
            7,
            "ec9f99cac85cbef23ef3ebf3c83e01d2d02a98aab8b9d7ea42a2eedbf18f62cd",
        ),
        (
            8,
            "6a8e10015d435421dfa7325950eab19d8f982c51046507438b37d266edc85bf9",
        ),
        (
            9,
            "46cd0fcbffed5a1ceda30c277ff2e9a22c8f94c182253821c182336e3504f66f",
        ),
    ];

    #[test]
    fn released_migrations_are_unchanged_and_numbered_by_position() {
        stamp_testkit::assert_migrations_pinned(MIGRATIONS, RELEASED);
    }
}
