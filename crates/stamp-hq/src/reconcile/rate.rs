//! The sliding-window rate check: no more than `limit` issuances in any interval of the period's
//! length, across bundles.
//!
//! Two issuance times `a <= b` (Unix milliseconds) fall in one interval of length `P` exactly when
//! `b - a < P`. So `limit + 1` issuances fit in one interval exactly when the newest and the one
//! `limit` places before it are less than `P` apart, and the check needs only the last `limit`
//! issuance times, and of those only the ones less than `P` before the newest (times never
//! decrease along a log). They are kept run-length encoded (`(time, count)`), so the state is at
//! most `min(limit, distinct milliseconds in one period)` pairs, whatever the number of entries.

use std::collections::VecDeque;

/// The recent issuance times of one grant for one rate period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RateWindow {
    limit: u64,
    period_ms: i64,
    /// `(time_ms, count)`, oldest first, times strictly increasing.
    recent: VecDeque<(i64, u64)>,
    /// Sum of the counts: never more than `limit`.
    total: u64,
}

impl RateWindow {
    /// An empty window for `limit` issuances per `period_ms`.
    pub(crate) fn new(limit: u64, period_ms: i64) -> Self {
        RateWindow {
            limit,
            period_ms,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// Restores a window from [`RateWindow::tail`]: pairs that are out of order, empty or beyond
    /// the limit are dropped (the stored tail is HQ's own data, but nothing here trusts it).
    pub(crate) fn restore(limit: u64, period_ms: i64, tail: &[(i64, u64)]) -> Self {
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
    pub(crate) fn tail(&self) -> Vec<(i64, u64)> {
        self.recent.iter().copied().collect()
    }

    /// Records an issuance at `time_ms` (not before any earlier one). Returns `Some(start)` when
    /// it is one too many: the `limit` issuances before it all lie in the interval of the period's
    /// length that starts at `start` and contains it.
    pub(crate) fn record(&mut self, time_ms: i64) -> Option<i64> {
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
}
