//! The registry of genuine devices and the equivocation evidence, as HQ's reconciliation
//! recorded them (tables of schema version 4 and later): what `hq devices`, the exports and
//! `hq sites` read.

use rusqlite::Connection;
use stamp_core::SiteId;

use crate::{HqError, HqStore};

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A genuine device, as recorded in the registry.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceRecord {
    /// The site that made it.
    pub site_id: String,
    /// The grant it was made under.
    pub entitlement_id: String,
    /// Its device serial.
    pub device_serial: u64,
    /// SHA-256 of its certificate, lower-case hex.
    pub certificate_sha256: String,
    /// SHA-256 of its SubjectPublicKeyInfo, lower-case hex.
    pub public_key_sha256: String,
    /// When the site issued it (Unix milliseconds).
    pub issued_at_ms: i64,
    /// Its entry in the site's log.
    pub log_index: u64,
    /// The certificate, DER.
    #[serde(skip)]
    pub certificate: Vec<u8>,
    /// A renewal HQ accepted replaced it: not the serial's live certificate any more.
    pub superseded: bool,
}

/// Equivocation evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    /// The tree size both checkpoints are for.
    pub size: u64,
    /// The root HQ accepted before.
    pub accepted_root: Vec<u8>,
    /// The checkpoint HQ accepted before.
    pub accepted_note: String,
    /// The other root.
    pub conflicting_root: Vec<u8>,
    /// The checkpoint (or, for a conflicting `previous`, the bundle's checkpoint) with it.
    pub conflicting_note: String,
}

/// Calls `f` for every device in the registry (of one site, or all), in site and log order,
/// without loading them all.
fn for_each_device(
    c: &Connection,
    site: Option<&SiteId>,
    mut f: impl FnMut(DeviceRecord) -> Result<(), HqError>,
) -> Result<(), HqError> {
    let mut stmt = c.prepare(
        "SELECT site_id, entitlement_id, device_serial, certificate_sha256, public_key_sha256, issued_at_ms,
                log_index, certificate, superseded_by IS NOT NULL
         FROM devices WHERE ?1 IS NULL OR site_id = ?1 ORDER BY site_id, log_index",
    )?;
    let mut rows = stmt.query([site.map(SiteId::as_str)])?;
    while let Some(r) = rows.next()? {
        f(DeviceRecord {
            site_id: r.get(0)?,
            entitlement_id: r.get(1)?,
            device_serial: stamp_store::from_sql(r.get::<_, i64>(2)?),
            certificate_sha256: hex::encode(r.get::<_, Vec<u8>>(3)?),
            public_key_sha256: hex::encode(r.get::<_, Vec<u8>>(4)?),
            issued_at_ms: r.get(5)?,
            log_index: u(r.get(6)?),
            certificate: r.get(7)?,
            superseded: r.get(8)?,
        })?;
    }
    Ok(())
}

/// Equivocation evidence recorded for a site, oldest first.
fn equivocations(c: &Connection, site: &SiteId) -> Result<Vec<Equivocation>, HqError> {
    let mut stmt = c.prepare(
        "SELECT size, accepted_root, accepted_note, conflicting_root, conflicting_note
         FROM audit_equivocations WHERE site_id = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([site.as_str()], |r| {
            Ok(Equivocation {
                size: u(r.get(0)?),
                accepted_root: r.get(1)?,
                accepted_note: r.get(2)?,
                conflicting_root: r.get(3)?,
                conflicting_note: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

impl HqStore {
    /// Calls `f` for every genuine device in the registry (of one site, or of all), in site and
    /// log order, without loading them all.
    pub fn for_each_device(
        &self,
        site: Option<&SiteId>,
        f: impl FnMut(DeviceRecord) -> Result<(), HqError>,
    ) -> Result<(), HqError> {
        for_each_device(self.conn(), site, f)
    }

    /// Equivocation evidence recorded for a site, oldest first.
    pub fn equivocations(&self, site: &SiteId) -> Result<Vec<Equivocation>, HqError> {
        equivocations(self.conn(), site)
    }
}
