//! Prometheus metrics in the text exposition format, kept with atomics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuedKind {
    /// A certificate for a device's own key (JSON provision or EST simpleenroll).
    Device,
    /// An HQ-generated key handed out.
    HandOut,
    /// A renewal (EST simplereenroll).
    Renewal,
}

impl IssuedKind {
    fn label(self) -> &'static str {
        match self {
            IssuedKind::Device => "device",
            IssuedKind::HandOut => "hand-out",
            IssuedKind::Renewal => "renewal",
        }
    }
}

/// The service's counters.
#[derive(Default)]
pub struct Metrics {
    issued: [AtomicU64; 3],
    refused: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    connections: AtomicU64,
    connections_open: AtomicU64,
}

fn bump(m: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *m.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(key)
        .or_insert(0) += 1;
}

impl Metrics {
    /// Counts an issuance.
    pub fn issued(&self, kind: IssuedKind) {
        let i = match kind {
            IssuedKind::Device => 0,
            IssuedKind::HandOut => 1,
            IssuedKind::Renewal => 2,
        };
        self.issued[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a policy refusal by its code.
    pub fn refused(&self, code: &'static str) {
        bump(&self.refused, code);
    }

    /// Counts a request that failed before or outside the policy (bad request, timeout...).
    pub fn error(&self, code: &'static str) {
        bump(&self.errors, code);
    }

    /// Records how long a provisioning request took.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format; `quota` is (entitlement, quota, remaining), `up`
    /// whether the service can issue (its database readable, its audit log working).
    pub fn render(&self, quota: &[(String, u64, u64)], up: bool) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP stamp_site_up Whether the site service can issue (1) or not (0: its audit log failed or its database cannot be read)."
        );
        let _ = writeln!(o, "# TYPE stamp_site_up gauge\nstamp_site_up {}", u8::from(up));
        let _ = writeln!(
            o,
            "# HELP stamp_site_issued_total Certificates issued and logged, by kind."
        );
        let _ = writeln!(o, "# TYPE stamp_site_issued_total counter");
        for kind in [IssuedKind::Device, IssuedKind::HandOut, IssuedKind::Renewal] {
            let i = match kind {
                IssuedKind::Device => 0,
                IssuedKind::HandOut => 1,
                IssuedKind::Renewal => 2,
            };
            let _ = writeln!(
                o,
                "stamp_site_issued_total{{kind=\"{}\"}} {}",
                kind.label(),
                self.issued[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP stamp_site_refused_total Requests refused by policy (and logged), by reason code."
        );
        let _ = writeln!(o, "# TYPE stamp_site_refused_total counter");
        for (code, n) in self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(o, "stamp_site_refused_total{{reason=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP stamp_site_request_errors_total Requests failed outside the policy, by error code."
        );
        let _ = writeln!(o, "# TYPE stamp_site_request_errors_total counter");
        for (code, n) in self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(o, "stamp_site_request_errors_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP stamp_site_provision_seconds Time to decide, sign and log a provisioning request."
        );
        let _ = writeln!(o, "# TYPE stamp_site_provision_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "stamp_site_provision_seconds_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(o, "stamp_site_provision_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "stamp_site_provision_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "stamp_site_provision_seconds_count {count}");
        let _ = writeln!(
            o,
            "# HELP stamp_site_quota Devices an entitlement allows.\n# TYPE stamp_site_quota gauge"
        );
        for (id, q, _) in quota {
            let _ = writeln!(o, "stamp_site_quota{{entitlement=\"{}\"}} {q}", escape(id));
        }
        let _ = writeln!(
            o,
            "# HELP stamp_site_quota_remaining Devices an entitlement still allows.\n# TYPE stamp_site_quota_remaining gauge"
        );
        for (id, _, left) in quota {
            let _ = writeln!(
                o,
                "stamp_site_quota_remaining{{entitlement=\"{}\"}} {left}",
                escape(id)
            );
        }
        let _ = writeln!(
            o,
            "# HELP stamp_site_connections_total TLS connections accepted.\n# TYPE stamp_site_connections_total counter"
        );
        let _ = writeln!(
            o,
            "stamp_site_connections_total {}",
            self.connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP stamp_site_connections_open Connections open now.\n# TYPE stamp_site_connections_open gauge"
        );
        let _ = writeln!(
            o,
            "stamp_site_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        o
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_quota() {
        let m = Metrics::default();
        m.issued(IssuedKind::Device);
        m.issued(IssuedKind::Device);
        m.refused("quota-exhausted");
        m.error("bad-request");
        m.observe(Duration::from_millis(3));
        let text = m.render(&[("f.1".into(), 10, 8)], true);
        assert!(text.contains("stamp_site_up 1"));
        assert!(m.render(&[], false).contains("stamp_site_up 0"));
        assert!(text.contains("stamp_site_issued_total{kind=\"device\"} 2"));
        assert!(text.contains("stamp_site_refused_total{reason=\"quota-exhausted\"} 1"));
        assert!(text.contains("stamp_site_request_errors_total{code=\"bad-request\"} 1"));
        assert!(text.contains("stamp_site_provision_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("stamp_site_provision_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("stamp_site_provision_seconds_count 1"));
        assert!(text.contains("stamp_site_quota_remaining{entitlement=\"f.1\"} 8"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
