//! Every query reconciliation makes, on its tables (HQ schema versions 4, 7, 8 and 9, in
//! `store/schema.rs`).

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use stamp_core::entitlement::{Entitlement, EntitlementError, GrantState, RatePeriod};
use stamp_core::SiteId;

use crate::store::registry::Equivocation;
use crate::HqError;

/// A device's live certificate in the registry.
pub(crate) struct Live {
    pub(crate) site_id: String,
    pub(crate) entitlement_id: String,
    pub(crate) public_key_sha256: Vec<u8>,
    pub(crate) certificate: Vec<u8>,
}

/// The live (genuine, not superseded) certificate of a device serial, if HQ registered one.
pub(crate) fn live_device(c: &Connection, serial: u64) -> Result<Option<Live>, HqError> {
    Ok(c.prepare_cached(
        "SELECT d.site_id, d.entitlement_id, d.public_key_sha256, d.certificate
         FROM audit_live l JOIN devices d ON d.certificate_sha256 = l.certificate_sha256
         WHERE l.device_serial = ?1",
    )?
    .query_row([stamp_store::to_sql(serial)], |r| {
        Ok(Live {
            site_id: r.get(0)?,
            entitlement_id: r.get(1)?,
            public_key_sha256: r.get(2)?,
            certificate: r.get(3)?,
        })
    })
    .optional()?)
}

/// Makes `certificate_sha256` the live certificate of `serial`; for a renewal (`supersedes`), the
/// one before is superseded by it (a first certificate has none: one statement less per device).
pub(crate) fn set_live(
    c: &Connection,
    serial: u64,
    certificate_sha256: &[u8],
    supersedes: bool,
) -> Result<(), HqError> {
    if supersedes {
        c.prepare_cached(
            "UPDATE devices SET superseded_by = ?2
         WHERE certificate_sha256 = (SELECT certificate_sha256 FROM audit_live WHERE device_serial = ?1)
           AND certificate_sha256 != ?2",
        )?
        .execute(params![stamp_store::to_sql(serial), certificate_sha256])?;
    }
    c.prepare_cached(
        "INSERT OR REPLACE INTO audit_live (device_serial, certificate_sha256) VALUES (?1, ?2)",
    )?
    .execute(params![stamp_store::to_sql(serial), certificate_sha256])?;
    Ok(())
}

/// Records a renewal entry's time and returns how many renewals of `serial` HQ saw less than
/// `period_ms` before `time_ms` (not counting this one).
pub(crate) fn count_renewal(
    c: &Connection,
    serial: u64,
    time_ms: i64,
    period_ms: i64,
) -> Result<u64, HqError> {
    let before: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM audit_renewals WHERE device_serial = ?1 AND time_ms > ?2")?
        .query_row(
            params![stamp_store::to_sql(serial), time_ms.saturating_sub(period_ms)],
            |r| r.get(0),
        )?;
    c.prepare_cached("INSERT INTO audit_renewals (device_serial, time_ms) VALUES (?1, ?2)")?
        .execute(params![stamp_store::to_sql(serial), time_ms])?;
    Ok(u64::try_from(before).unwrap_or(0))
}

/// Where HQ's copy of a site's log ends.
#[derive(Clone, Debug)]
pub(crate) struct SiteLog {
    pub(crate) size: u64,
    pub(crate) root: Vec<u8>,
    pub(crate) note: String,
    pub(crate) frontier: Vec<u8>,
    pub(crate) last_time_ms: i64,
    pub(crate) last_sequence: u64,
}

/// A grant's reconciliation state as stored.
pub(crate) struct GrantRow {
    pub(crate) state: GrantState,
    pub(crate) issued: u64,
    pub(crate) tails: BTreeMap<RatePeriod, Vec<(i64, u64)>>,
    pub(crate) frontier: Option<u64>,
}

/// Who used a serial, key or HQ key first.
#[derive(Clone, Debug)]
pub(crate) struct FirstUse {
    pub(crate) site_id: String,
    pub(crate) entitlement_id: String,
    pub(crate) log_index: u64,
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn site_log(c: &Connection, site: &SiteId) -> Result<Option<SiteLog>, HqError> {
    Ok(c.query_row(
        "SELECT size, root, note, frontier, last_time_ms, last_sequence FROM audit_sites WHERE site_id = ?1",
        [site.as_str()],
        |r| {
            Ok(SiteLog {
                size: u(r.get(0)?),
                root: r.get(1)?,
                note: r.get(2)?,
                frontier: r.get(3)?,
                last_time_ms: r.get(4)?,
                last_sequence: u(r.get(5)?),
            })
        },
    )
    .optional()?)
}

pub(crate) fn checkpoint_at(
    c: &Connection,
    site: &SiteId,
    size: u64,
) -> Result<Option<(Vec<u8>, String)>, HqError> {
    Ok(c.query_row(
        "SELECT root, note FROM audit_checkpoints WHERE site_id = ?1 AND size = ?2",
        params![site.as_str(), i(size)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?)
}

pub(crate) fn bundle_seen(c: &Connection, site: &SiteId, bundle_id: &[u8]) -> Result<bool, HqError> {
    Ok(c.query_row(
        "SELECT 1 FROM audit_bundles WHERE site_id = ?1 AND bundle_id = ?2",
        params![site.as_str(), bundle_id],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

pub(crate) fn record_equivocation(
    c: &Connection,
    site: &SiteId,
    e: &Equivocation,
    header_envelope: &[u8],
    now: &str,
) -> Result<(), HqError> {
    c.execute(
        "INSERT INTO audit_equivocations (site_id, size, accepted_root, accepted_note, conflicting_root,
             conflicting_note, header_envelope, detected_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            site.as_str(),
            i(e.size),
            e.accepted_root,
            e.accepted_note,
            e.conflicting_root,
            e.conflicting_note,
            header_envelope,
            now
        ],
    )?;
    Ok(())
}

/// A package HQ sealed to a site.
pub(crate) struct Package {
    pub(crate) entitlement_id: String,
    pub(crate) action: String,
    pub(crate) entitlement: Entitlement,
    pub(crate) sealed: Vec<u8>,
}

/// Decodes a payload HQ stored itself. HQ stores grants redacted (HQ-generated private keys and
/// secrets removed), so the payload is not re-validated as a package; it is still bounded.
fn stored_payload(bytes: &[u8]) -> Result<Entitlement, HqError> {
    if bytes.len() > stamp_core::entitlement::MAX_PAYLOAD {
        return Err(EntitlementError::TooLarge.into());
    }
    let mut reader = bytes;
    ciborium::de::from_reader_with_recursion_limit(&mut reader, 16)
        .map_err(|e| EntitlementError::Malformed(e.to_string()).into())
}

/// The package HQ sealed to `site` with `sequence`.
pub(crate) fn package(c: &Connection, site: &SiteId, sequence: u64) -> Result<Option<Package>, HqError> {
    let Ok(seq) = i64::try_from(sequence) else {
        return Ok(None);
    };
    let row: Option<(String, String, Vec<u8>, Vec<u8>)> = c
        .prepare_cached(
            "SELECT entitlement_id, action, payload_cbor, sealed FROM packages WHERE site_id = ?1 AND sequence = ?2",
        )?
        .query_row(params![site.as_str(), seq], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    row.map(|(entitlement_id, action, payload, sealed)| {
        Ok(Package {
            entitlement_id,
            action,
            entitlement: stored_payload(&payload)?,
            sealed,
        })
    })
    .transpose()
}

/// The packages HQ sealed to `site` above `sequence`, in order: (sequence, entitlement ID,
/// action, created_at).
pub(crate) fn packages_after(
    c: &Connection,
    site: &SiteId,
    sequence: u64,
) -> Result<Vec<(u64, String, String, String)>, HqError> {
    let seq = i64::try_from(sequence).unwrap_or(i64::MAX);
    let mut stmt = c.prepare_cached(
        "SELECT sequence, entitlement_id, action, created_at FROM packages
         WHERE site_id = ?1 AND sequence > ?2 ORDER BY sequence",
    )?;
    let rows = stmt
        .query_map(params![site.as_str(), seq], |r| {
            Ok((
                u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The site HQ made grant `id` for, if HQ made it.
pub(crate) fn grant_site(c: &Connection, id: &str) -> Result<Option<String>, HqError> {
    Ok(
        c.prepare_cached("SELECT site_id FROM entitlements WHERE entitlement_id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?,
    )
}

pub(crate) fn grant(c: &Connection, site: &SiteId, id: &str) -> Result<Option<GrantRow>, HqError> {
    let row: Option<(String, i64, String, Option<i64>)> = c
        .prepare_cached(
            "SELECT state_json, issued, rate_tails_json, serial_frontier FROM audit_grants
             WHERE entitlement_id = ?1 AND site_id = ?2",
        )?
        .query_row(params![id, site.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    row.map(|(state, issued, tails, frontier)| {
        Ok(GrantRow {
            state: serde_json::from_str(&state)?,
            issued: u(issued),
            tails: serde_json::from_str(&tails)?,
            // The u64's bits, as in audit_serials.
            frontier: frontier.map(stamp_store::from_sql),
        })
    })
    .transpose()
}

pub(crate) fn save_grant(
    c: &Connection,
    site: &SiteId,
    state: &GrantState,
    issued: u64,
    tails: &BTreeMap<RatePeriod, Vec<(i64, u64)>>,
    now: &str,
) -> Result<(), HqError> {
    c.execute(
        "INSERT INTO audit_grants (entitlement_id, site_id, state_json, issued, rate_tails_json, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (entitlement_id) DO UPDATE SET state_json = excluded.state_json,
             issued = excluded.issued, rate_tails_json = excluded.rate_tails_json,
             updated_at = excluded.updated_at",
        params![
            state.grant.entitlement_id,
            site.as_str(),
            serde_json::to_string(state)?,
            i(issued),
            serde_json::to_string(tails)?,
            now
        ],
    )?;
    Ok(())
}

/// Stores a grant's reconciled serial frontier (after [`save_grant`]).
pub(crate) fn save_frontier(c: &Connection, id: &str, frontier: Option<u64>) -> Result<(), HqError> {
    c.prepare_cached("UPDATE audit_grants SET serial_frontier = ?2 WHERE entitlement_id = ?1")?
        .execute(params![id, frontier.map(stamp_store::to_sql)])?;
    Ok(())
}

/// Each grant's reconciled serial frontier (grants without one are left out).
pub(crate) fn frontiers(c: &Connection) -> Result<BTreeMap<String, u64>, HqError> {
    let mut stmt = c.prepare(
        "SELECT entitlement_id, serial_frontier FROM audit_grants WHERE serial_frontier IS NOT NULL",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, stamp_store::from_sql(r.get::<_, i64>(1)?)))
        })?
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    Ok(rows)
}

fn first_use(r: &rusqlite::Row<'_>) -> rusqlite::Result<FirstUse> {
    Ok(FirstUse {
        site_id: r.get(0)?,
        entitlement_id: r.get(1)?,
        log_index: u(r.get(2)?),
    })
}

/// Records the first use of a device serial; returns the earlier use if there was one.
pub(crate) fn claim_serial(
    c: &Connection,
    serial: u64,
    site: &SiteId,
    grant: &str,
    index: u64,
) -> Result<Option<FirstUse>, HqError> {
    // The u64's bits, so every serial has exactly one key.
    let key = stamp_store::to_sql(serial);
    let n = c
        .prepare_cached(
            "INSERT OR IGNORE INTO audit_serials (device_serial, site_id, entitlement_id, log_index)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![key, site.as_str(), grant, i(index)])?;
    if n == 1 {
        return Ok(None);
    }
    Ok(c.prepare_cached(
        "SELECT site_id, entitlement_id, log_index FROM audit_serials WHERE device_serial = ?1",
    )?
    .query_row([key], first_use)
    .optional()?)
}

/// Who used a device serial first, if anyone (without claiming it).
pub(crate) fn serial_use(c: &Connection, serial: u64) -> Result<Option<FirstUse>, HqError> {
    Ok(c.prepare_cached(
        "SELECT site_id, entitlement_id, log_index FROM audit_serials WHERE device_serial = ?1",
    )?
    .query_row([stamp_store::to_sql(serial)], first_use)
    .optional()?)
}

/// Who certified a public key first, if anyone (without claiming it).
pub(crate) fn public_key_use(c: &Connection, spki_sha256: &[u8]) -> Result<Option<FirstUse>, HqError> {
    Ok(c.prepare_cached(
        "SELECT site_id, entitlement_id, log_index FROM audit_public_keys WHERE public_key_sha256 = ?1",
    )?
    .query_row([spki_sha256], first_use)
    .optional()?)
}

/// Records the first certification of a public key; returns the earlier one if there was one.
pub(crate) fn claim_public_key(
    c: &Connection,
    spki_sha256: &[u8],
    site: &SiteId,
    grant: &str,
    index: u64,
) -> Result<Option<FirstUse>, HqError> {
    let n = c
        .prepare_cached(
            "INSERT OR IGNORE INTO audit_public_keys (public_key_sha256, site_id, entitlement_id, log_index)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![spki_sha256, site.as_str(), grant, i(index)])?;
    if n == 1 {
        return Ok(None);
    }
    Ok(c.prepare_cached(
        "SELECT site_id, entitlement_id, log_index FROM audit_public_keys WHERE public_key_sha256 = ?1",
    )?
    .query_row([spki_sha256], first_use)
    .optional()?)
}

/// Records the first hand-out of an HQ-generated key; returns the earlier one if there was one.
pub(crate) fn claim_hq_key(
    c: &Connection,
    grant: &str,
    key_index: u64,
    site: &SiteId,
    index: u64,
) -> Result<Option<FirstUse>, HqError> {
    let k = i(key_index);
    let n = c
        .prepare_cached(
            "INSERT OR IGNORE INTO audit_hq_keys (entitlement_id, hq_key_index, site_id, log_index)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![grant, k, site.as_str(), i(index)])?;
    if n == 1 {
        return Ok(None);
    }
    Ok(c.prepare_cached(
        "SELECT site_id, entitlement_id, log_index FROM audit_hq_keys WHERE entitlement_id = ?1 AND hq_key_index = ?2",
    )?
    .query_row(params![grant, k], first_use)
    .optional()?)
}

/// Adds a genuine device to the registry; false if its certificate was there already.
pub(crate) fn record_device(
    c: &Connection,
    site: &SiteId,
    d: &stamp_core::audit::DeviceRecord,
    issued_at_ms: i64,
    index: u64,
    bundle_id: &[u8],
    now: &str,
) -> Result<bool, HqError> {
    let n = c.prepare_cached(
        "INSERT OR IGNORE INTO devices (certificate_sha256, site_id, entitlement_id, device_serial, public_key_sha256,
             certificate, issued_at_ms, log_index, bundle_id, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        d.certificate_sha256.as_slice(),
        site.as_str(),
        d.entitlement_id,
        stamp_store::to_sql(d.device_serial),
        d.public_key_sha256.as_slice(),
        d.certificate.as_slice(),
        issued_at_ms,
        i(index),
        bundle_id,
        now
    ])?;
    Ok(n == 1)
}

/// Stores where the site's log now ends, the accepted checkpoint and the bundle's report.
pub(crate) struct Accepted<'a> {
    pub(crate) log: &'a SiteLog,
    pub(crate) bundle_id: &'a [u8],
    pub(crate) first_index: u64,
    pub(crate) entry_count: u64,
    pub(crate) created_at_ms: i64,
    pub(crate) violations: u64,
    pub(crate) devices_recorded: u64,
    pub(crate) report_json: &'a str,
}

pub(crate) fn accept(c: &Connection, site: &SiteId, a: &Accepted<'_>, now: &str) -> Result<(), HqError> {
    let l = a.log;
    c.execute(
        "INSERT INTO audit_sites (site_id, size, root, note, frontier, last_time_ms, last_sequence, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (site_id) DO UPDATE SET size = excluded.size, root = excluded.root, note = excluded.note,
             frontier = excluded.frontier, last_time_ms = excluded.last_time_ms,
             last_sequence = excluded.last_sequence, updated_at = excluded.updated_at",
        params![
            site.as_str(),
            i(l.size),
            l.root,
            l.note,
            l.frontier,
            l.last_time_ms,
            i(l.last_sequence),
            now
        ],
    )?;
    c.execute(
        "INSERT INTO audit_checkpoints (site_id, size, root, note, bundle_id, accepted_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![site.as_str(), i(l.size), l.root, l.note, a.bundle_id, now],
    )?;
    c.execute(
        "INSERT INTO audit_bundles (site_id, bundle_id, first_index, entry_count, created_at_ms, reconciled_at,
             violations, devices_recorded, report_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            site.as_str(),
            a.bundle_id,
            i(a.first_index),
            i(a.entry_count),
            a.created_at_ms,
            now,
            i(a.violations),
            i(a.devices_recorded),
            a.report_json
        ],
    )?;
    Ok(())
}

/// The site that HQ issued this site-identity-signing certificate to (by the certificate's
/// SHA-256).
pub(crate) fn site_of_identity_cert(
    c: &Connection,
    cert_sha256: &[u8; 32],
) -> Result<Option<String>, HqError> {
    Ok(c.query_row(
        "SELECT site_id FROM certificates WHERE sha256 = ?1 AND profile = ?2",
        params![
            cert_sha256.as_slice(),
            stamp_core::profile::Profile::SiteIdentitySigning.name()
        ],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()?
    .flatten())
}
