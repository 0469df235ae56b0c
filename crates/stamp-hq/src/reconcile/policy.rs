//! The per-grant policy checks at HQ: a grant as the site's log has applied it (amendments in
//! force from their entry onward), its device count and its rate windows, judged entry by entry
//! with the rule the site itself applies ([`stamp_core::admission::check`]).

use std::collections::BTreeMap;

use stamp_core::admission::{self, Ask, Breach, RateWindow, Request, Usage};
use stamp_core::entitlement::{DeviceKeyType, GrantState, RatePeriod};

/// What one entry broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Finding {
    /// A rule of the grant (the one rule the site applies).
    Rule(Breach),
    /// One too many for a rate limit, with the run of excess issuances it belongs to (for
    /// grouping in the report).
    Rate {
        /// The period.
        period: RatePeriod,
        /// The limit.
        limit: u64,
        /// Where the run of excess issuances began: the start of the first interval of the
        /// period's length that held `limit + 1` of them.
        window_start_ms: i64,
        /// Which run of consecutive excess issuances this belongs to.
        episode: u64,
    },
    /// The serial is in none of the grant's ranges.
    SerialOutsideRange,
}

/// A grant as the site's log shows it, with what HQ tracks between bundles.
#[derive(Clone, Debug)]
pub(crate) struct GrantTrack {
    /// The grant with the amendments the log applied so far.
    pub(crate) state: GrantState,
    /// Device certificates issued under it so far (every one, violating or not).
    pub(crate) issued: u64,
    rates: BTreeMap<RatePeriod, RateWindow>,
    /// Per period: the current run of excess issuances (its number and start), if the last
    /// issuance was one.
    open_episode: BTreeMap<RatePeriod, (u64, i64)>,
    episodes: u64,
    /// The reconciled serial frontier: the highest serial, within the grant's ranges, of a
    /// device first issued (issued or handed out, never renewed) under it so far.
    pub(crate) frontier: Option<u64>,
}

impl GrantTrack {
    /// A grant just applied: nothing issued yet.
    pub(crate) fn new(state: GrantState) -> Self {
        Self::restore(state, 0, &BTreeMap::new())
    }

    /// A grant restored from HQ's database.
    pub(crate) fn restore(
        state: GrantState,
        issued: u64,
        tails: &BTreeMap<RatePeriod, Vec<(i64, u64)>>,
    ) -> Self {
        let rates = state
            .grant
            .rate_limits
            .iter()
            .map(|(&p, &limit)| {
                let period_ms = p.seconds() * 1000;
                let tail = tails.get(&p).map(Vec::as_slice).unwrap_or(&[]);
                (p, RateWindow::restore(limit, period_ms, tail))
            })
            .collect();
        GrantTrack {
            state,
            issued,
            rates,
            open_episode: BTreeMap::new(),
            episodes: 0,
            frontier: None,
        }
    }

    /// The rate windows' tails, to persist.
    pub(crate) fn tails(&self) -> BTreeMap<RatePeriod, Vec<(i64, u64)>> {
        self.rates.iter().map(|(&p, w)| (p, w.tail())).collect()
    }

    /// Moves the serial frontier up to `serial`, a device-issued or key-handed-out entry's (not
    /// a renewal's), if it is in one of the grant's ranges: a serial outside them proves nothing
    /// about the grant's own serials.
    pub(crate) fn first_issued(&mut self, serial: u64) {
        let in_range = self
            .state
            .grant
            .serial_ranges
            .iter()
            .any(|r| r.first <= serial && serial <= r.last);
        if in_range && self.frontier.is_none_or(|f| serial > f) {
            self.frontier = Some(serial);
        }
    }

    /// Judges a first certificate (issue or hand-out) logged at `time_ms` with `serial`, counts
    /// it (the log shows it happened, allowed or not), and returns every rule it broke.
    pub(crate) fn issue(
        &mut self,
        ask: Ask,
        time_ms: i64,
        station: &str,
        key_type: Option<DeviceKeyType>,
        serial: u64,
    ) -> Vec<Finding> {
        let req = Request {
            ask,
            time_ms,
            station,
            key_type,
            device_serial: Some(serial),
            key_known: false,
        };
        let usage = Usage {
            issued: self.issued,
            rates: &self.rates,
            device_renewals: 0,
        };
        let mut found: Vec<Finding> = admission::check(&self.state, &usage, &req)
            .into_iter()
            .filter(|b| !matches!(b, Breach::Rate { .. }))
            .map(Finding::Rule)
            .collect();
        self.issued = self.issued.saturating_add(1);
        if !self
            .state
            .grant
            .serial_ranges
            .iter()
            .any(|r| r.first <= serial && serial <= r.last)
        {
            found.push(Finding::SerialOutsideRange);
        }
        // The rate windows record every issuance; the rule's rate breaches are these.
        let limits = &self.state.grant.rate_limits;
        for (&period, window) in &mut self.rates {
            match window.record(time_ms) {
                Some(start) => {
                    let (episode, window_start_ms) = *self.open_episode.entry(period).or_insert_with(|| {
                        self.episodes += 1;
                        (self.episodes, start)
                    });
                    found.push(Finding::Rate {
                        period,
                        limit: limits.get(&period).copied().unwrap_or(0),
                        window_start_ms,
                        episode,
                    });
                }
                None => {
                    self.open_episode.remove(&period);
                }
            }
        }
        found
    }

    /// Judges a renewal of `serial` logged at `time_ms`; `device_renewals` is how many renewals
    /// of it HQ saw less than the renewal limit's period before.
    pub(crate) fn renew(
        &self,
        keeps_key: bool,
        time_ms: i64,
        station: &str,
        key_type: Option<DeviceKeyType>,
        serial: u64,
        device_renewals: u64,
    ) -> Vec<Breach> {
        let req = Request {
            ask: Ask::Renew { keeps_key },
            time_ms,
            station,
            key_type,
            device_serial: Some(serial),
            key_known: false,
        };
        let usage = Usage {
            issued: self.issued,
            rates: &self.rates,
            device_renewals,
        };
        admission::check(&self.state, &usage, &req)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use stamp_core::entitlement::{self, Amend, DeviceProfile, Grant, Product, SerialRange, Status};

    use super::*;

    fn state() -> GrantState {
        GrantState::new(
            Grant {
                entitlement_id: "s.1".into(),
                product: Product {
                    oem_id: "acme".into(),
                    product_id: "p".into(),
                    name: "P".into(),
                },
                quota: 3,
                rate_limits: BTreeMap::from([(RatePeriod::Minute, 2)]),
                not_before: 100,
                not_after: 1_000,
                serial_ranges: vec![SerialRange { first: 10, last: 12 }],
                device_profile: DeviceProfile {
                    validity_days: 1,
                    key_types: vec![DeviceKeyType::P256],
                    organization: "Acme".into(),
                },
                stations: vec![],
                device_data: BTreeMap::new(),
                device_keys: vec![],
                firmware: vec![],
                renewal_limit: Default::default(),
            },
            1,
        )
    }

    #[test]
    fn frontier_follows_first_issues_in_range() {
        let mut g = GrantTrack::new(state());
        assert_eq!(g.frontier, None);
        g.first_issued(9);
        g.first_issued(13);
        assert_eq!(g.frontier, None, "outside 10..=12");
        g.first_issued(11);
        assert_eq!(g.frontier, Some(11));
        g.first_issued(10);
        assert_eq!(g.frontier, Some(11), "never down");
        g.first_issued(12);
        assert_eq!(g.frontier, Some(12));
    }

    #[test]
    fn each_rule() {
        let mut g = GrantTrack::new(state());
        assert_eq!(g.issue(Ask::Issue, 100_000, "line-1", None, 10), vec![]);
        assert_eq!(
            g.issue(Ask::Issue, 99_999, "line-1", None, 11),
            vec![Finding::Rule(Breach::OutsideWindow {
                not_before: 100,
                not_after: 1_000
            })]
        );
        // Third within a minute: rate; serial 13 is outside 10..=12.
        let f = g.issue(Ask::Issue, 100_500, "line-1", None, 13);
        assert!(f.contains(&Finding::SerialOutsideRange), "{f:?}");
        assert!(
            matches!(
                f.as_slice(),
                [
                    _,
                    Finding::Rate {
                        period: RatePeriod::Minute,
                        limit: 2,
                        episode: 1,
                        ..
                    }
                ]
            ),
            "{f:?}"
        );
        // Fourth: over the quota of 3, and still the same rate episode.
        let f = g.issue(Ask::Issue, 100_600, "line-1", None, 12);
        assert!(
            f.contains(&Finding::Rule(Breach::OverQuota { quota: 3 })),
            "{f:?}"
        );
        assert!(
            f.iter().any(|x| matches!(x, Finding::Rate { episode: 1, .. })),
            "{f:?}"
        );
        // Window end is exclusive.
        let mut g = GrantTrack::new(state());
        assert!(g
            .issue(Ask::Issue, 1_000_000, "line-1", None, 10)
            .iter()
            .any(|f| matches!(f, Finding::Rule(Breach::OutsideWindow { .. }))));
        assert_eq!(g.issue(Ask::Issue, 999_999, "line-1", None, 11), vec![]);
    }

    #[test]
    fn stations_key_types_and_renewals_follow_the_sites_rule() {
        let mut st = state();
        st.grant.stations = vec!["line-1".into()];
        let mut g = GrantTrack::new(st);
        assert_eq!(
            g.issue(Ask::Issue, 100_000, "line-9", Some(DeviceKeyType::Ed25519), 10),
            vec![
                Finding::Rule(Breach::StationNotAllowed),
                Finding::Rule(Breach::KeyTypeNotAllowed)
            ]
        );
        // Renewals: not counted, limited per device (default 2 a day), inside the window.
        assert_eq!(g.renew(false, 200_000, "line-1", None, 10, 1), vec![]);
        assert_eq!(
            g.renew(false, 200_000, "line-1", None, 10, 2),
            vec![Breach::RenewalLimit {
                count: 2,
                period: RatePeriod::Day
            }]
        );
        assert_eq!(
            g.renew(true, 2_000_000, "line-1", None, 10, 0),
            vec![Breach::OutsideWindow {
                not_before: 100,
                not_after: 1_000
            }]
        );
        assert_eq!(g.issued, 1);
    }

    #[test]
    fn amendments_apply_from_their_entry_onward() {
        let mut g = GrantTrack::new(state());
        let suspend = Amend {
            entitlement_id: "s.1".into(),
            add_quota: 0,
            add_serial_ranges: vec![],
            not_before: None,
            not_after: None,
            status: Some(Status::Suspended),
            revoke: None,
        };
        assert_eq!(g.issue(Ask::Issue, 200_000, "line-1", None, 10), vec![]);
        g.state = entitlement::amend(&g.state, &suspend, 2).unwrap();
        assert_eq!(
            g.issue(Ask::Issue, 300_000, "line-1", None, 11),
            vec![Finding::Rule(Breach::NotActive(Status::Suspended))]
        );
        let top_up = Amend {
            add_quota: 5,
            add_serial_ranges: vec![SerialRange { first: 50, last: 54 }],
            status: Some(Status::Active),
            revoke: None,
            ..suspend
        };
        g.state = entitlement::amend(&g.state, &top_up, 3).unwrap();
        assert_eq!(g.issue(Ask::Issue, 400_000, "line-1", None, 12), vec![]);
        assert_eq!(
            g.issue(Ask::Issue, 500_000, "line-1", None, 50),
            vec![],
            "4th device, quota now 8, new range"
        );
    }

    #[test]
    fn counters_and_windows_survive_a_restore() {
        let mut g = GrantTrack::new(state());
        g.issue(Ask::Issue, 200_000, "line-1", None, 10);
        g.issue(Ask::Issue, 201_000, "line-1", None, 11);
        let mut again = GrantTrack::restore(g.state.clone(), g.issued, &g.tails());
        let f = again.issue(Ask::Issue, 202_000, "line-1", None, 12);
        assert!(
            f.iter().any(|x| matches!(
                x,
                Finding::Rate {
                    window_start_ms: 200_000,
                    ..
                }
            )),
            "{f:?}"
        );
        assert!(again
            .issue(Ask::Issue, 400_000, "line-1", None, 12)
            .contains(&Finding::Rule(Breach::OverQuota { quota: 3 })));
    }
}
