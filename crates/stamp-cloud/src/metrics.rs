//! The gateway's Prometheus metrics (text exposition format), kept with atomics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The gateway's counters.
#[derive(Default)]
pub struct GatewayMetrics {
    admitted: Mutex<BTreeMap<String, u64>>,
    refused: Mutex<BTreeMap<String, u64>>,
    concurrent_use: AtomicU64,
    handshake_failures: AtomicU64,
    connections: AtomicU64,
    connections_open: AtomicU64,
    reloads: [AtomicU64; 2],
}

fn bump(m: &Mutex<BTreeMap<String, u64>>, key: &str) {
    let mut m = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match m.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            m.insert(key.to_owned(), 1);
        }
    }
}

impl GatewayMetrics {
    pub(crate) fn admitted(&self, standing: &str) {
        bump(&self.admitted, standing);
    }

    pub(crate) fn refused(&self, reason: &str) {
        bump(&self.refused, reason);
    }

    pub(crate) fn concurrent_use(&self) {
        self.concurrent_use.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Device connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// Counts a changed registry file: taken into use (`accepted`) or refused.
    pub fn registry_reload(&self, accepted: bool) {
        self.reloads[usize::from(!accepted)].fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format; `sequence` and `devices` describe the registry in use.
    pub fn render(&self, sequence: u64, devices: usize) -> String {
        let labelled = |m: &Mutex<BTreeMap<String, u64>>, name: &str, label: &str| {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(k, n)| format!("{name}{{{label}=\"{}\"}} {n}", escape(k)))
                .collect::<Vec<_>>()
        };
        let families: [(&str, &str, &str, Vec<String>); 10] = [
            (
                "stamp_gateway_up",
                "gauge",
                "The cloud gateway is running.",
                vec!["stamp_gateway_up 1".to_owned()],
            ),
            (
                "stamp_gateway_admitted_total",
                "counter",
                "Devices admitted, by standing (registered, provisional).",
                labelled(&self.admitted, "stamp_gateway_admitted_total", "standing"),
            ),
            (
                "stamp_gateway_refused_total",
                "counter",
                "Devices refused (possible counterfeits), by reason code.",
                labelled(&self.refused, "stamp_gateway_refused_total", "reason"),
            ),
            (
                "stamp_gateway_concurrent_use_total",
                "counter",
                "Admissions of a device serial already connected (flagged concurrent-use).",
                vec![format!(
                    "stamp_gateway_concurrent_use_total {}",
                    self.concurrent_use.load(Ordering::Relaxed)
                )],
            ),
            (
                "stamp_gateway_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed or timed out.",
                vec![format!(
                    "stamp_gateway_tls_handshake_failures_total {}",
                    self.handshake_failures.load(Ordering::Relaxed)
                )],
            ),
            (
                "stamp_gateway_connections_total",
                "counter",
                "Device connections that completed the TLS handshake.",
                vec![format!(
                    "stamp_gateway_connections_total {}",
                    self.connections.load(Ordering::Relaxed)
                )],
            ),
            (
                "stamp_gateway_connections_open",
                "gauge",
                "Device connections open now.",
                vec![format!(
                    "stamp_gateway_connections_open {}",
                    self.connections_open.load(Ordering::Relaxed)
                )],
            ),
            (
                "stamp_gateway_registry_sequence",
                "gauge",
                "Sequence of the registry in use.",
                vec![format!("stamp_gateway_registry_sequence {sequence}")],
            ),
            (
                "stamp_gateway_registry_devices",
                "gauge",
                "Devices the registry in use registers.",
                vec![format!("stamp_gateway_registry_devices {devices}")],
            ),
            (
                "stamp_gateway_registry_reloads_total",
                "counter",
                "Changed registry files, by result (accepted, refused).",
                vec![
                    format!(
                        "stamp_gateway_registry_reloads_total{{result=\"accepted\"}} {}",
                        self.reloads[0].load(Ordering::Relaxed)
                    ),
                    format!(
                        "stamp_gateway_registry_reloads_total{{result=\"refused\"}} {}",
                        self.reloads[1].load(Ordering::Relaxed)
                    ),
                ],
            ),
        ];
        let mut o = String::new();
        for (name, kind, help, lines) in families {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(o, "{l}");
            }
        }
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
    fn renders_counters_by_label() {
        let m = GatewayMetrics::default();
        m.admitted("registered");
        m.admitted("registered");
        m.refused("unknown-device");
        m.registry_reload(false);
        let text = m.render(3, 10);
        assert!(text.contains("stamp_gateway_admitted_total{standing=\"registered\"} 2"));
        assert!(text.contains("stamp_gateway_refused_total{reason=\"unknown-device\"} 1"));
        assert!(text.contains("stamp_gateway_registry_reloads_total{result=\"refused\"} 1"));
        assert!(text.contains("stamp_gateway_registry_sequence 3"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
