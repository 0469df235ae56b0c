//! What reconciliation reports: the bundle's numbers and every policy violation, grouped and
//! bounded so that the report's size does not grow with the number of entries.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use stamp_core::SiteId;

/// Most violations listed in one report; further ones are only counted
/// ([`ReconcileReport::violations_omitted`]).
pub const MAX_VIOLATIONS: usize = 1000;
/// Most entry indexes listed in one violation; [`Violation::entry_count`] has the total.
pub const MAX_LISTED_ENTRIES: usize = 100;

/// A kind of policy violation, with a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ViolationKind {
    /// More devices than the grant's quota (as amended at the time).
    OverQuota,
    /// A renewal for a device serial the site never issued.
    RenewalOfUnknownDevice,
    /// A renewal for a device HQ revoked, after the site applied the revocation.
    RenewalOfRevokedDevice,
    /// More devices than a rate limit allows in some interval of the period's length.
    RateExceeded,
    /// A device issued outside the grant's production window (as amended at the time).
    OutsideWindow,
    /// A device issued while the grant was suspended.
    IssuedWhileSuspended,
    /// A device issued after the grant was revoked.
    IssuedWhileRevoked,
    /// A device serial outside the grant's serial ranges.
    SerialOutsideRange,
    /// A device serial issued before (in this or an earlier bundle, by any site).
    SerialReused,
    /// A public key certified before.
    KeyReused,
    /// An HQ-generated key handed out before.
    HqKeyReused,
    /// A hand-out of a key HQ did not generate for the grant at that index.
    UnknownHqKey,
    /// A device's own key certified under a grant whose devices get HQ-generated keys.
    OwnKeyUnderHqKeys,
    /// A certificate not issued by the site's issuing CA (or not a certificate).
    WrongIssuer,
    /// A certificate that does not match the grant's device profile.
    ProfileMismatch,
    /// An entry whose serial, hashes or HQ key index disagree with its certificate or kind.
    CertificateMismatch,
    /// A device under an entitlement the site's log never applied.
    UnknownEntitlement,
    /// An entitlement-applied entry for a package HQ never made for this site, or that differs
    /// from HQ's (entitlement, action or package hash).
    UnknownPackage,
    /// An entitlement-applied entry whose sequence is not above the last one applied.
    PackageOutOfOrder,
    /// An entitlement-applied entry for a package more than one above the last one applied: the
    /// log skipped the packages in between (a site applies them strictly in sequence).
    PackageSkipped,
    /// A package HQ sealed for the site that the reconciled log has not applied more than the
    /// grace period ([`ReconcileOptions::package_grace`](super::ReconcileOptions)) after HQ sealed
    /// it (HQ's clock for both). No log entry is behind it.
    PackageNotApplied,
    /// An amendment applied to a grant the log never applied, or that cannot apply to it.
    InvalidAmendment,
    /// A device issued or renewed for a station the grant does not name.
    StationNotAllowed,
    /// A renewal for a new key without a valid proof of possession by the device's key until
    /// then (HQ's registered certificate for the serial).
    PossessionNotProven,
    /// More renewals of one device than the grant's renewal limit allows in its period.
    RenewalLimit,
    /// An entry earlier than HQ made the package it runs under (less the allowed clock skew):
    /// the site's clock is behind, or was set back.
    TimeBeforePackage,
    /// An entry later than the bundle's arrival at HQ (plus the allowed clock skew): the site's
    /// clock is ahead.
    TimeInFuture,
    /// A certificate whose notBefore is not its entry's time (to the second).
    NotBeforeMismatch,
}

impl ViolationKind {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            ViolationKind::OverQuota => "over-quota",
            ViolationKind::RateExceeded => "rate-exceeded",
            ViolationKind::OutsideWindow => "outside-window",
            ViolationKind::IssuedWhileSuspended => "issued-while-suspended",
            ViolationKind::IssuedWhileRevoked => "issued-while-revoked",
            ViolationKind::SerialOutsideRange => "serial-outside-range",
            ViolationKind::SerialReused => "serial-reused",
            ViolationKind::RenewalOfUnknownDevice => "renewal-of-unknown-device",
            ViolationKind::RenewalOfRevokedDevice => "renewal-of-revoked-device",
            ViolationKind::KeyReused => "key-reused",
            ViolationKind::HqKeyReused => "hq-key-reused",
            ViolationKind::UnknownHqKey => "unknown-hq-key",
            ViolationKind::OwnKeyUnderHqKeys => "own-key-under-hq-keys",
            ViolationKind::StationNotAllowed => "station-not-allowed",
            ViolationKind::PossessionNotProven => "possession-not-proven",
            ViolationKind::RenewalLimit => "renewal-limit",
            ViolationKind::TimeBeforePackage => "time-before-package",
            ViolationKind::TimeInFuture => "time-in-future",
            ViolationKind::NotBeforeMismatch => "not-before-mismatch",
            ViolationKind::WrongIssuer => "wrong-issuer",
            ViolationKind::ProfileMismatch => "profile-mismatch",
            ViolationKind::CertificateMismatch => "certificate-mismatch",
            ViolationKind::UnknownEntitlement => "unknown-entitlement",
            ViolationKind::UnknownPackage => "unknown-package",
            ViolationKind::PackageOutOfOrder => "package-out-of-order",
            ViolationKind::PackageSkipped => "package-skipped",
            ViolationKind::PackageNotApplied => "package-not-applied",
            ViolationKind::InvalidAmendment => "invalid-amendment",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One policy violation and the log entries behind it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// What was violated.
    pub kind: ViolationKind,
    /// The grant concerned, if any.
    pub entitlement_id: Option<String>,
    /// What happened, for people.
    pub detail: String,
    /// Log indexes of the entries behind it (the first [`MAX_LISTED_ENTRIES`]).
    pub entries: Vec<u64>,
    /// How many entries are behind it in all.
    pub entry_count: u64,
}

/// A tree size and root.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TreeHeadSummary {
    /// Number of entries.
    pub size: u64,
    /// Merkle root, lower-case hex.
    pub root: String,
}

/// The result of reconciling one bundle that verified. `ok` is false when there are violations.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReconcileReport {
    /// True when no policy was violated.
    pub ok: bool,
    /// The site whose log it is.
    pub site_id: SiteId,
    /// The bundle's ID, lower-case hex.
    pub bundle_id: String,
    /// Index of the bundle's first entry.
    pub first_index: u64,
    /// Entries in the bundle.
    pub entries: u64,
    /// Device certificates the entries record (issued or handed out).
    pub devices_issued: u64,
    /// Genuine devices recorded in HQ's registry (those that passed every check).
    pub devices_recorded: u64,
    /// Entitlement packages the entries show applied.
    pub entitlements_applied: u64,
    /// Refused requests, by reason code.
    pub refusals_by_reason: BTreeMap<String, u64>,
    /// Where HQ's copy of the log ended before (absent for the site's first bundle).
    pub previous: Option<TreeHeadSummary>,
    /// The checkpoint HQ accepted.
    pub checkpoint: TreeHeadSummary,
    /// Violations, in the order first seen.
    pub violations: Vec<Violation>,
    /// Violations beyond [`MAX_VIOLATIONS`], counted but not listed.
    pub violations_omitted: u64,
}

/// Collects violations, grouping repeated ones (one group per kind, grant and `group` key), with
/// bounded memory.
#[derive(Default)]
pub(crate) struct Violations {
    list: Vec<Violation>,
    groups: HashMap<(ViolationKind, Option<String>, String), usize>,
    omitted: u64,
}

impl Violations {
    /// Adds entry `index` to the violation of `kind` for `grant` and `group`, creating it if
    /// needed; `detail` gets the number of entries behind the violation so far and returns its
    /// description.
    pub(crate) fn add(
        &mut self,
        kind: ViolationKind,
        grant: Option<&str>,
        group: &str,
        index: u64,
        detail: impl FnOnce(u64) -> String,
    ) {
        let key = (kind, grant.map(str::to_owned), group.to_owned());
        if let Some(&i) = self.groups.get(&key) {
            if let Some(v) = self.list.get_mut(i) {
                v.entry_count += 1;
                if v.entries.len() < MAX_LISTED_ENTRIES {
                    v.entries.push(index);
                }
                v.detail = detail(v.entry_count);
            }
            return;
        }
        if self.list.len() >= MAX_VIOLATIONS {
            self.omitted += 1;
            return;
        }
        self.groups.insert(key, self.list.len());
        self.list.push(Violation {
            kind,
            entitlement_id: grant.map(str::to_owned),
            detail: detail(1),
            entries: vec![index],
            entry_count: 1,
        });
    }

    /// Adds a violation no log entry is behind (e.g. a package the log has not applied).
    pub(crate) fn add_unlogged(&mut self, kind: ViolationKind, grant: Option<&str>, detail: String) {
        if self.list.len() >= MAX_VIOLATIONS {
            self.omitted += 1;
            return;
        }
        self.list.push(Violation {
            kind,
            entitlement_id: grant.map(str::to_owned),
            detail,
            entries: vec![],
            entry_count: 0,
        });
    }

    /// Adds an earlier entry (e.g. the first use of a reused serial) to the last violation
    /// added, without counting it as a new occurrence.
    pub(crate) fn note_earlier(&mut self, kind: ViolationKind, index: u64) {
        if let Some(v) = self.list.last_mut() {
            if v.kind == kind && v.entries.len() < MAX_LISTED_ENTRIES && !v.entries.contains(&index) {
                v.entries.insert(0, index);
            }
        }
    }

    /// Whether nothing was violated.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty() && self.omitted == 0
    }

    /// The violations and the number omitted.
    pub(crate) fn finish(self) -> (Vec<Violation>, u64) {
        (self.list, self.omitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_bounds() {
        let mut v = Violations::default();
        for i in 0..500 {
            v.add(ViolationKind::OverQuota, Some("s.1"), "", i, |n| {
                format!("{n} over")
            });
        }
        v.add(ViolationKind::OverQuota, Some("s.2"), "", 7, |n| {
            format!("{n} over")
        });
        let (list, omitted) = v.finish();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].entry_count, 500);
        assert_eq!(list[0].entries.len(), MAX_LISTED_ENTRIES);
        assert_eq!(list[0].detail, "500 over");
        assert_eq!(omitted, 0);

        let mut many = Violations::default();
        for i in 0..(MAX_VIOLATIONS as u64 + 10) {
            many.add(ViolationKind::SerialReused, None, &i.to_string(), i, |_| {
                String::new()
            });
        }
        assert!(!many.is_empty());
        let (list, omitted) = many.finish();
        assert_eq!(list.len(), MAX_VIOLATIONS);
        assert_eq!(omitted, 10);
    }

    #[test]
    fn codes_are_the_serialized_names() {
        for k in [
            ViolationKind::OverQuota,
            ViolationKind::IssuedWhileSuspended,
            ViolationKind::HqKeyReused,
            ViolationKind::PackageSkipped,
            ViolationKind::PackageNotApplied,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.code());
        }
    }
}
