//! The admission rule: what a grant allows, decided by one function for every kind of request.
//!
//! The site engine asks [`check`] before it issues a certificate, hands out an HQ-generated key or
//! renews a device, and refuses with the first [`Breach`]; HQ asks the same function for every
//! entry of a site's log when it reconciles, and reports every breach. One rule in one place: a
//! request the site must refuse is exactly an entry HQ must flag. Pure: the time, the station,
//! the counts and the rate windows are inputs.
//!
//! What the rule does not cover, because only one side can see it: the site picks serials (HQ
//! checks they lie in the grant's ranges) and looks up keys it certified before (HQ checks
//! uniqueness across every site through its claims).

use std::collections::{BTreeMap, VecDeque};

use crate::audit::RefusalReason;
use crate::entitlement::{DeviceKeyType, GrantState, RatePeriod, Status};

/// What is asked of a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A certificate for a device's own key: counted against quota and rates.
    Issue,
    /// An HQ-generated key with its certificate: counted against quota and rates.
    HandOut,
    /// A new certificate for a device the site issued before (same serial, not counted against
    /// quota or rates, limited per device by the grant's renewal limit).
    Renew {
        /// The new certificate certifies the device's current key (no new key enters).
        keeps_key: bool,
    },
}

/// One request (or one log entry, at HQ).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// What is asked.
    pub ask: Ask,
    /// When (Unix milliseconds).
    pub time_ms: i64,
    /// The station that asked.
    pub station: &'a str,
    /// The type of the key to certify, where the caller knows it (`None`: checked elsewhere, as
    /// HQ does through the device profile check).
    pub key_type: Option<DeviceKeyType>,
    /// The device serial (renewals: to check device revocations).
    pub device_serial: Option<u64>,
    /// The site certified this key before for another request (only the site can tell).
    pub key_known: bool,
}

/// What the grant has used so far, as the caller tracks it.
#[derive(Clone, Copy, Debug)]
pub struct Usage<'a> {
    /// Devices issued under the grant so far (first certificates and hand-outs).
    pub issued: u64,
    /// The grant's rate windows, by period (periods without a window are not limited).
    pub rates: &'a BTreeMap<RatePeriod, RateWindow>,
    /// Renewals of this device in the renewal limit's period before `time_ms` (renewals only).
    pub device_renewals: u64,
}

/// One rule a request breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Breach {
    /// The grant is suspended or revoked.
    NotActive(Status),
    /// HQ revoked the device (renewals).
    DeviceRevoked,
    /// The grant's devices carry HQ-generated keys; this would certify another key.
    HqKeysOnly,
    /// The grant names its stations and this is not one of them.
    StationNotAllowed,
    /// Outside `[not_before, not_after)` (Unix seconds).
    OutsideWindow {
        /// Window start.
        not_before: i64,
        /// Window end.
        not_after: i64,
    },
    /// The key type is not in the device profile.
    KeyTypeNotAllowed,
    /// The key was certified before.
    DuplicateKey,
    /// The quota is used up.
    OverQuota {
        /// The quota in force.
        quota: u64,
    },
    /// One too many for a rate limit.
    Rate {
        /// The period.
        period: RatePeriod,
        /// The limit.
        limit: u64,
        /// Start of the interval of the period's length that holds `limit` issuances before it.
        window_start_ms: i64,
    },
    /// One renewal too many for this device.
    RenewalLimit {
        /// Renewals allowed per period.
        count: u32,
        /// The period.
        period: RatePeriod,
    },
}

impl Breach {
    /// The refusal a site answers with.
    pub fn refusal(self) -> RefusalReason {
        match self {
            Breach::NotActive(Status::Revoked) => RefusalReason::Revoked,
            Breach::NotActive(_) => RefusalReason::Suspended,
            Breach::DeviceRevoked => RefusalReason::DeviceRevoked,
            Breach::HqKeysOnly => RefusalReason::HqKeysOnly,
            Breach::StationNotAllowed => RefusalReason::StationNotAllowed,
            Breach::OutsideWindow { .. } => RefusalReason::OutsideWindow,
            Breach::KeyTypeNotAllowed => RefusalReason::KeyTypeNotAllowed,
            Breach::DuplicateKey => RefusalReason::DuplicateKey,
            Breach::OverQuota { .. } => RefusalReason::QuotaExhausted,
            Breach::Rate { .. } => RefusalReason::RateExceeded,
            Breach::RenewalLimit { .. } => RefusalReason::RenewalLimit,
        }
    }
}

/// Every rule of `state`'s grant that `req` breaks, in the order a site checks them (it refuses
/// with the first).
pub fn check(state: &GrantState, usage: &Usage<'_>, req: &Request<'_>) -> Vec<Breach> {
    let g = &state.grant;
    let mut found = Vec::new();
    let hq_keys = !g.device_keys.is_empty();
    match req.ask {
        Ask::Issue if hq_keys => found.push(Breach::HqKeysOnly),
        Ask::Renew { keeps_key: false } if hq_keys => found.push(Breach::HqKeysOnly),
        _ => {}
    }
    if state.status != Status::Active {
        found.push(Breach::NotActive(state.status));
    }
    if matches!(req.ask, Ask::Renew { .. })
        && req
            .device_serial
            .is_some_and(|s| state.device_revoked_at(s).is_some())
    {
        found.push(Breach::DeviceRevoked);
    }
    if !g.stations.is_empty() && !g.stations.iter().any(|s| s == req.station) {
        found.push(Breach::StationNotAllowed);
    }
    let t = i128::from(req.time_ms);
    if t < i128::from(g.not_before) * 1000 || t >= i128::from(g.not_after) * 1000 {
        found.push(Breach::OutsideWindow {
            not_before: g.not_before,
            not_after: g.not_after,
        });
    }
    if req
        .key_type
        .is_some_and(|k| !g.device_profile.key_types.contains(&k))
    {
        found.push(Breach::KeyTypeNotAllowed);
    }
    if req.key_known {
        found.push(Breach::DuplicateKey);
    }
    match req.ask {
        Ask::Issue | Ask::HandOut => {
            if usage.issued >= g.quota {
                found.push(Breach::OverQuota { quota: g.quota });
            }
            for (&period, &limit) in &g.rate_limits {
                if let Some(window_start_ms) =
                    usage.rates.get(&period).and_then(|w| w.exceeded_at(req.time_ms))
                {
                    found.push(Breach::Rate {
                        period,
                        limit,
                        window_start_ms,
                    });
                }
            }
        }
        Ask::Renew { .. } => {
            let l = g.renewal_limit;
            if usage.device_renewals >= u64::from(l.count) {
                found.push(Breach::RenewalLimit {
                    count: l.count,
                    period: l.period,
                });
            }
        }
    }
    found
}

/// Rate windows for every rate limit of a grant, empty.
pub fn rate_windows(limits: &BTreeMap<RatePeriod, u64>) -> BTreeMap<RatePeriod, RateWindow> {
    limits
        .iter()
        .map(|(&p, &limit)| (p, RateWindow::new(limit, p.seconds() * 1000)))
        .collect()
}

// ---- The sliding-window rate check ------------------------------------------------------------
//
// No more than `limit` issuances in any interval of the period's length. Two issuance times
// `a <= b` (Unix milliseconds) fall in one interval of length `P` exactly when `b - a < P`. So
// `limit + 1` issuances fit in one interval exactly when the newest and the one `limit` places
// before it are less than `P` apart, and the check needs only the last `limit` issuance times,
// and of those only the ones less than `P` before the newest (times never decrease along a log).
// They are kept run-length encoded (`(time, count)`), so the state is at most
// `min(limit, distinct milliseconds in one period)` pairs, whatever the number of entries.

/// The recent issuance times of one grant for one rate period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateWindow {
    limit: u64,
    period_ms: i64,
    /// `(time_ms, count)`, oldest first, times strictly increasing.
    recent: VecDeque<(i64, u64)>,
    /// Sum of the counts: never more than `limit`.
    total: u64,
}

impl RateWindow {
    /// An empty window for `limit` issuances per `period_ms`.
    pub fn new(limit: u64, period_ms: i64) -> Self {
        RateWindow {
            limit,
            period_ms,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// Restores a window from [`RateWindow::tail`]: pairs that are out of order, empty or beyond
    /// the limit are dropped (the stored tail is HQ's own data, but nothing here trusts it).
    pub fn restore(limit: u64, period_ms: i64, tail: &[(i64, u64)]) -> Self {
        let mut w = RateWindow::new(limit, period_ms);
        for &(t, n) in tail {
            if n == 0 || w.recent.back().is_some_and(|&(last, _)| t <= last) {
                continue;
            }
            w.recent.push_back((t, n));
            w.total = w.total.saturating_add(n);
        }
        w.trim_to_limit();
        w
    }

    /// The state to persist, oldest first.
    pub fn tail(&self) -> Vec<(i64, u64)> {
        self.recent.iter().copied().collect()
    }

    /// What [`RateWindow::record`] would return for an issuance at `time_ms`, without recording
    /// it: the site asks this before it admits a request, and records only what it admits.
    pub fn exceeded_at(&self, time_ms: i64) -> Option<i64> {
        if self.limit == 0 {
            return Some(time_ms);
        }
        let mut in_window = self
            .recent
            .iter()
            .filter(|&&(t, _)| time_ms.saturating_sub(t) < self.period_ms)
            .peekable();
        let start = in_window.peek().map(|&&(t, _)| t)?;
        let total: u64 = in_window.map(|&(_, n)| n).sum();
        (total >= self.limit).then_some(start)
    }

    /// Records an issuance at `time_ms` (not before any earlier one). Returns `Some(start)` when
    /// it is one too many: the `limit` issuances before it all lie in the interval of the period's
    /// length that starts at `start` and contains it.
    pub fn record(&mut self, time_ms: i64) -> Option<i64> {
        // Issuances a period or more before this one can never share an interval with it or with
        // any later one.
        while let Some(&(t, n)) = self.recent.front() {
            if time_ms.saturating_sub(t) >= self.period_ms {
                self.recent.pop_front();
                self.total -= n;
            } else {
                break;
            }
        }
        let exceeded = if self.limit > 0 && self.total >= self.limit {
            self.recent.front().map(|&(t, _)| t)
        } else if self.limit == 0 {
            Some(time_ms)
        } else {
            None
        };
        match self.recent.back_mut() {
            Some((t, n)) if *t == time_ms => *n += 1,
            _ => self.recent.push_back((time_ms, 1)),
        }
        self.total += 1;
        self.trim_to_limit();
        exceeded
    }

    /// Keeps only the last `limit` issuances.
    fn trim_to_limit(&mut self) {
        while self.total > self.limit {
            let excess = self.total - self.limit;
            let Some(front) = self.recent.front_mut() else {
                self.total = 0;
                break;
            };
            if front.1 > excess {
                front.1 -= excess;
                self.total -= excess;
            } else {
                self.total -= front.1;
                self.recent.pop_front();
            }
        }
    }

    /// Pairs held (for tests of the memory bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    /// The definition, by brute force: indexes of issuances that make some interval of length
    /// `period` hold more than `limit`.
    fn brute(times: &[i64], limit: u64, period: i64) -> Vec<usize> {
        (0..times.len())
            .filter(|&i| {
                let in_window = times[..=i].iter().filter(|&&t| times[i] - t < period).count();
                in_window as u64 > limit
            })
            .collect()
    }

    fn run(w: &mut RateWindow, times: &[i64]) -> Vec<usize> {
        times
            .iter()
            .enumerate()
            .filter_map(|(i, &t)| w.record(t).map(|_| i))
            .collect()
    }

    #[test]
    fn at_most_limit_in_any_interval_of_the_period() {
        let mut w = RateWindow::new(3, MINUTE);
        // Three in the first minute are fine; the fourth within 60 s of the first is not.
        assert_eq!(w.record(0), None);
        assert_eq!(w.record(10_000), None);
        assert_eq!(w.record(59_999), None);
        assert_eq!(w.record(59_999), Some(0), "4 in [0, 60000)");
        // At 60 000 the issuance at 0 has left every interval that contains 60 000, but three
        // issuances (10 000, 59 999, 59 999) are still within 60 s: a fourth is one too many.
        assert_eq!(w.record(60_000), Some(10_000));
        // 130 000: every issuance at or before 70 000 has left the window.
        assert_eq!(w.record(130_000), None);
    }

    #[test]
    fn a_window_spans_bundles_through_the_persisted_tail() {
        let mut first = RateWindow::new(2, MINUTE);
        assert_eq!(first.record(1_000), None);
        assert_eq!(first.record(2_000), None);
        let tail = first.tail();
        // The next bundle starts 30 s later: still in the same minute as both.
        let mut second = RateWindow::restore(2, MINUTE, &tail);
        assert_eq!(second.record(31_000), Some(1_000));
        // A fresh window (no tail) would have missed it.
        assert_eq!(RateWindow::new(2, MINUTE).record(31_000), None);
    }

    #[test]
    fn matches_the_definition_on_random_sequences() {
        // A small deterministic generator (no dependency): xorshift.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let limit = 1 + next() % 6;
            let period = 1 + (next() % 50) as i64;
            let mut t = 0i64;
            let times: Vec<i64> = (0..60)
                .map(|_| {
                    t += (next() % 12) as i64; // often equal times
                    t
                })
                .collect();
            let mut w = RateWindow::new(limit, period);
            assert_eq!(run(&mut w, &times), brute(&times, limit, period), "round {round}");
            // Split anywhere, persisted and restored in between: the same answer.
            let cut = (next() % 60) as usize;
            let mut a = RateWindow::new(limit, period);
            let mut got = run(&mut a, &times[..cut]);
            let mut b = RateWindow::restore(limit, period, &a.tail());
            got.extend(run(&mut b, &times[cut..]).into_iter().map(|i| i + cut));
            assert_eq!(got, brute(&times, limit, period), "round {round} cut {cut}");
        }
    }

    #[test]
    fn state_is_bounded_by_the_limit_not_the_entries() {
        let mut w = RateWindow::new(100, 86_400_000);
        for i in 0..100_000i64 {
            w.record(i * 10);
        }
        assert!(w.len() <= 100, "{} pairs kept", w.len());
        // Equal times collapse into one pair.
        let mut same = RateWindow::new(1_000_000, MINUTE);
        for _ in 0..50_000 {
            assert_eq!(same.record(5), None);
        }
        assert_eq!(same.len(), 1);
    }

    #[test]
    fn restore_ignores_nonsense() {
        let w = RateWindow::restore(2, MINUTE, &[(5, 1), (3, 4), (7, 0), (9, 5)]);
        assert_eq!(w.tail(), vec![(9, 2)]);
    }

    // --- the rule --------------------------------------------------------------------------------

    use crate::entitlement::{
        self, Amend, DeviceProfile, Grant, HqDeviceKey, Product, RenewalLimit, SerialRange,
    };

    fn grant() -> GrantState {
        GrantState::new(
            Grant {
                entitlement_id: "s.1".into(),
                product: Product {
                    oem_id: "acme".into(),
                    product_id: "p".into(),
                    name: "P".into(),
                },
                quota: 2,
                rate_limits: BTreeMap::from([(RatePeriod::Minute, 1)]),
                not_before: 100,
                not_after: 1_000,
                serial_ranges: vec![SerialRange { first: 10, last: 11 }],
                device_profile: DeviceProfile {
                    validity_days: 1,
                    key_types: vec![DeviceKeyType::P256],
                    organization: "Acme".into(),
                },
                stations: vec!["line-1".into()],
                device_data: BTreeMap::new(),
                device_keys: vec![],
                firmware: vec![],
                renewal_limit: RenewalLimit::default(),
            },
            1,
        )
    }

    fn ask(ask: Ask, time_ms: i64) -> Request<'static> {
        Request {
            ask,
            time_ms,
            station: "line-1",
            key_type: Some(DeviceKeyType::P256),
            device_serial: Some(10),
            key_known: false,
        }
    }

    fn usage(rates: &BTreeMap<RatePeriod, RateWindow>, issued: u64, renewals: u64) -> Usage<'_> {
        Usage {
            issued,
            rates,
            device_renewals: renewals,
        }
    }

    #[test]
    fn a_clean_request_breaks_nothing_and_each_rule_is_its_own_breach() {
        let g = grant();
        let none = rate_windows(&g.grant.rate_limits);
        assert_eq!(check(&g, &usage(&none, 0, 0), &ask(Ask::Issue, 200_000)), vec![]);
        let mut r = ask(Ask::Issue, 200_000);
        r.station = "line-9";
        assert_eq!(
            check(&g, &usage(&none, 0, 0), &r),
            vec![Breach::StationNotAllowed]
        );
        let mut r = ask(Ask::Issue, 200_000);
        r.key_type = Some(DeviceKeyType::Ed25519);
        assert_eq!(
            check(&g, &usage(&none, 0, 0), &r),
            vec![Breach::KeyTypeNotAllowed]
        );
        // Unknown to the caller: checked elsewhere (HQ's profile check).
        r.key_type = None;
        assert_eq!(check(&g, &usage(&none, 0, 0), &r), vec![]);
        let mut r = ask(Ask::Issue, 200_000);
        r.key_known = true;
        assert_eq!(check(&g, &usage(&none, 0, 0), &r), vec![Breach::DuplicateKey]);
        assert_eq!(
            check(&g, &usage(&none, 2, 0), &ask(Ask::Issue, 200_000)),
            vec![Breach::OverQuota { quota: 2 }]
        );
        for t in [99_999, 1_000_000] {
            assert_eq!(
                check(&g, &usage(&none, 0, 0), &ask(Ask::Issue, t)),
                vec![Breach::OutsideWindow {
                    not_before: 100,
                    not_after: 1_000
                }],
                "{t}"
            );
        }
        let mut busy = rate_windows(&g.grant.rate_limits);
        for w in busy.values_mut() {
            w.record(150_000);
        }
        assert_eq!(
            check(&g, &usage(&busy, 1, 0), &ask(Ask::HandOut, 200_000)),
            vec![Breach::Rate {
                period: RatePeriod::Minute,
                limit: 1,
                window_start_ms: 150_000
            }]
        );
        assert_eq!(check(&g, &usage(&busy, 1, 0), &ask(Ask::Issue, 210_000)), vec![]);
    }

    #[test]
    fn breaches_come_in_the_order_the_site_refuses_them() {
        let g = entitlement::amend(
            &grant(),
            &Amend {
                entitlement_id: "s.1".into(),
                add_quota: 0,
                add_serial_ranges: vec![],
                not_before: None,
                not_after: None,
                status: Some(Status::Suspended),
                revoke: None,
            },
            2,
        )
        .unwrap();
        let none = rate_windows(&g.grant.rate_limits);
        let mut r = ask(Ask::Issue, 2_000_000);
        r.station = "line-9";
        r.key_known = true;
        assert_eq!(
            check(&g, &usage(&none, 5, 0), &r),
            vec![
                Breach::NotActive(Status::Suspended),
                Breach::StationNotAllowed,
                Breach::OutsideWindow {
                    not_before: 100,
                    not_after: 1_000
                },
                Breach::DuplicateKey,
                Breach::OverQuota { quota: 2 },
            ]
        );
        assert_eq!(
            Breach::NotActive(Status::Suspended).refusal(),
            RefusalReason::Suspended
        );
        assert_eq!(
            Breach::NotActive(Status::Revoked).refusal(),
            RefusalReason::Revoked
        );
    }

    #[test]
    fn renewals_skip_quota_and_rates_but_obey_the_rest_and_their_limit() {
        let g = grant();
        let mut busy = rate_windows(&g.grant.rate_limits);
        for w in busy.values_mut() {
            w.record(199_000);
        }
        let renew = |keeps_key| ask(Ask::Renew { keeps_key }, 200_000);
        // Quota used up and the rate window full: a renewal adds no device.
        assert_eq!(check(&g, &usage(&busy, 2, 1), &renew(false)), vec![]);
        assert_eq!(
            check(&g, &usage(&busy, 2, 2), &renew(true)),
            vec![Breach::RenewalLimit {
                count: 2,
                period: RatePeriod::Day
            }]
        );
        assert_eq!(
            check(
                &g,
                &usage(&busy, 0, 0),
                &ask(Ask::Renew { keeps_key: true }, 5_000_000)
            ),
            vec![Breach::OutsideWindow {
                not_before: 100,
                not_after: 1_000
            }]
        );
        // A device HQ revoked, and a grant of HQ-generated keys moving a device to its own key.
        let mut revoked = g.clone();
        revoked.revoked_devices = BTreeMap::from([(10, 0)]);
        assert_eq!(
            check(&revoked, &usage(&busy, 0, 0), &renew(true)),
            vec![Breach::DeviceRevoked]
        );
        let mut hq = g.clone();
        hq.grant.device_keys = vec![HqDeviceKey {
            spki_sha256: serde_bytes::ByteBuf::from(vec![0u8; 32]),
            private_key: serde_bytes::ByteBuf::new(),
            secrets: BTreeMap::new(),
        }];
        assert_eq!(
            check(&hq, &usage(&busy, 0, 0), &renew(false)),
            vec![Breach::HqKeysOnly]
        );
        assert_eq!(check(&hq, &usage(&busy, 0, 0), &renew(true)), vec![]);
        assert_eq!(
            check(&hq, &usage(&busy, 0, 0), &ask(Ask::Issue, 200_000)).first(),
            Some(&Breach::HqKeysOnly)
        );
    }

    #[test]
    fn exceeded_at_is_what_record_would_say() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let (limit, period) = (1 + next() % 5, 1 + (next() % 40) as i64);
            let mut w = RateWindow::new(limit, period);
            let mut t = 0i64;
            for _ in 0..50 {
                t += (next() % 9) as i64;
                let predicted = w.exceeded_at(t);
                assert_eq!(predicted, w.record(t), "limit {limit} period {period} at {t}");
            }
        }
    }
}
