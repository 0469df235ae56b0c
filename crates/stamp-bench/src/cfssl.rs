//! The peer: `cfssl serve` signing the same CSRs over HTTP (`POST /api/v1/cfssl/sign`).
//!
//! The minimal HTTP/1.1 client of [`crate::http1`] on std's `TcpStream` (keep-alive, one
//! connection per client), so that the client's own cost stays small next to the server's.

use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;
use stamp_bench::{loadavg, quantile_ms, CsrReader, ProcStat};

use crate::http1::{contains, Conn};

fn open(addr: &str) -> anyhow::Result<Conn<TcpStream>> {
    let s = TcpStream::connect(addr).with_context(|| format!("cannot connect to cfssl at {addr}"))?;
    s.set_nodelay(true)?;
    Ok(Conn::new(s))
}

/// Runs `count` sign requests with `clients` concurrent connections; prints the JSON result.
pub fn run(
    addr: &str,
    csrs: &Path,
    clients: usize,
    count: usize,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    let ders = CsrReader::read_all(csrs, count)?;
    // Requests are built before the clock starts.
    let requests: Vec<Vec<u8>> = ders
        .iter()
        .map(|der| {
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.clone()));
            let body = json!({ "certificate_request": pem }).to_string();
            format!(
                "POST /api/v1/cfssl/sign HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect();
    let next = AtomicUsize::new(0);
    let latencies: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let load_before = loadavg();
    let server_before = server_pid.and_then(ProcStat::read);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients.max(1) {
            s.spawn(|| {
                let mut mine = Vec::new();
                let fail = |e: String| {
                    failures
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(e)
                };
                let mut conn = match open(addr) {
                    Ok(c) => c,
                    Err(e) => return fail(e.to_string()),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = requests.get(i) else { break };
                    let t0 = Instant::now();
                    match conn.send(req) {
                        Ok((200, body, keep)) if contains(&body, b"\"success\":true") => {
                            mine.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                            if !keep {
                                match open(addr) {
                                    Ok(c) => conn = c,
                                    Err(e) => return fail(e.to_string()),
                                }
                            }
                        }
                        Ok((status, body, _)) => {
                            return fail(format!(
                                "HTTP {status}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(300)])
                            ))
                        }
                        Err(e) => return fail(e.to_string()),
                    }
                }
                latencies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(mine);
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let server_after = server_pid.and_then(ProcStat::read);
    let failures = failures
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(f) = failures.first() {
        bail!("{} cfssl client(s) failed; first: {f}", failures.len());
    }
    let mut lat = latencies
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    lat.sort_unstable();
    let server_cpu = match (&server_before, &server_after) {
        (Some(b), Some(a)) => Some((a.cpu_seconds - b.cpu_seconds) * 1e6 / (lat.len() as f64).max(1.0)),
        _ => None,
    };
    println!(
        "{}",
        json!({
            "clients": clients,
            "signed": lat.len(),
            "seconds": seconds,
            "per_second": lat.len() as f64 / seconds.max(1e-9),
            "p50_ms": quantile_ms(&lat, 0.50),
            "p99_ms": quantile_ms(&lat, 0.99),
            "server_cpu_us_per_device": server_cpu,
            "server_peak_rss_kib": server_after.as_ref().map(|s| s.peak_rss_kib),
            "load_before": load_before,
            "load_after": loadavg(),
        })
    );
    Ok(())
}
