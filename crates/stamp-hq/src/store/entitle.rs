//! The store's queries for entitlements (`crate::entitle`): each grant as HQ sees it, and every
//! sealed package byte-identical to the file HQ wrote.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use stamp_core::entitlement::{GrantState, Product, RatePeriod, RenewalLimit, SerialRange, Status};
use stamp_core::SiteId;
use time::OffsetDateTime;

use crate::{HqError, HqStore};

/// One grant as HQ sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntitlementSummary {
    /// The grant's ID.
    pub entitlement_id: String,
    /// The site.
    pub site_id: String,
    /// Status.
    pub status: Status,
    /// Product.
    pub product: Product,
    /// Quota (after top-ups).
    pub quota: u64,
    /// Rate limits.
    pub rate_limits: BTreeMap<RatePeriod, u64>,
    /// Renewals per device per period.
    pub renewal_limit: RenewalLimit,
    /// Window start (RFC 3339).
    pub not_before: String,
    /// Window end (RFC 3339).
    pub not_after: String,
    /// Serial ranges.
    pub serial_ranges: Vec<SerialRange>,
    /// Sequence of the last package that touched it.
    pub last_sequence: u64,
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// A grant as [`EntitlementSummary`] shows it.
pub(crate) fn summary(site: &str, st: &GrantState) -> EntitlementSummary {
    let g = &st.grant;
    EntitlementSummary {
        entitlement_id: g.entitlement_id.clone(),
        site_id: site.to_owned(),
        status: st.status,
        product: g.product.clone(),
        quota: g.quota,
        rate_limits: g.rate_limits.clone(),
        renewal_limit: g.renewal_limit,
        not_before: rfc3339(g.not_before),
        not_after: rfc3339(g.not_after),
        serial_ranges: g.serial_ranges.clone(),
        last_sequence: st.last_sequence,
    }
}

/// A package HQ sealed, as stored: the exact bytes it wrote.
#[derive(Debug, Clone)]
pub struct SealedPackage {
    /// The site it is sealed to.
    pub site_id: String,
    /// Its sequence for the site.
    pub sequence: u64,
    /// The grant it makes or amends.
    pub entitlement_id: String,
    /// `grant` or `amend`.
    pub action: String,
    /// When HQ sealed it (RFC 3339, HQ's clock).
    pub created_at: String,
    /// The sealed package, byte-identical to the file HQ wrote.
    pub sealed: Vec<u8>,
}

/// Which sealed package: by site, or by the grant it makes or amends (whose site it is), and the
/// sequence.
#[derive(Debug, Clone, Copy)]
pub enum PackageSelector<'a> {
    /// The site's package with this sequence.
    Site(&'a SiteId, u64),
    /// The package with this sequence of the grant's site, which must make or amend that grant.
    Entitlement(&'a str, u64),
}

impl HqStore {
    /// A package HQ sealed, byte-identical to the original (HQ keeps every sealed package), so
    /// that a lost file can be sent again: the site applies packages strictly in sequence and
    /// cannot go on without it. Sending it twice is harmless (the site refuses a replay).
    pub fn sealed_package(&self, which: PackageSelector<'_>) -> Result<SealedPackage, HqError> {
        let (site, sequence, grant) = match which {
            PackageSelector::Site(site, seq) => {
                if !self.site_enrolled(site)? {
                    return Err(HqError::UnknownSite(site.clone()));
                }
                (site.as_str().to_owned(), seq, None)
            }
            PackageSelector::Entitlement(id, seq) => (self.entitlement(id)?.0, seq, Some(id)),
        };
        let row: Option<(String, String, String, Vec<u8>)> = self
            .conn()
            .query_row(
                "SELECT entitlement_id, action, created_at, sealed FROM packages WHERE site_id = ?1 AND sequence = ?2",
                params![site, i64::try_from(sequence).unwrap_or(-1)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((entitlement_id, action, created_at, sealed)) = row else {
            return Err(HqError::UnknownPackage(format!(
                "HQ never sealed a package with sequence {sequence} for site {site} (see `stamp hq entitlements`: last_sequence)"
            )));
        };
        if let Some(id) = grant {
            if id != entitlement_id {
                return Err(HqError::UnknownPackage(format!(
                    "package {sequence} of site {site} is the {action} of {entitlement_id}, not a package of {}",
                    id.chars().take(64).collect::<String>()
                )));
            }
        }
        Ok(SealedPackage {
            site_id: site,
            sequence,
            entitlement_id,
            action,
            created_at,
            sealed,
        })
    }

    /// A grant's site and state.
    pub fn entitlement(&self, id: &str) -> Result<(String, GrantState), HqError> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT site_id, state_json FROM entitlements WHERE entitlement_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (site, json) = row.ok_or_else(|| HqError::UnknownEntitlement(id.chars().take(64).collect()))?;
        Ok((site, serde_json::from_str(&json)?))
    }

    /// Every grant, optionally for one site, in creation order.
    pub fn entitlements(&self, site: Option<&SiteId>) -> Result<Vec<EntitlementSummary>, HqError> {
        let mut stmt = self.conn().prepare(
            "SELECT site_id, state_json FROM entitlements WHERE ?1 IS NULL OR site_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt
            .query_map([site.map(SiteId::as_str)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(s, json)| Ok(summary(&s, &serde_json::from_str::<GrantState>(&json)?)))
            .collect()
    }
}
