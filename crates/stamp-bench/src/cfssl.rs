//! The peer: `cfssl serve` signing the same CSRs over HTTP (`POST /api/v1/cfssl/sign`).
//!
//! A minimal HTTP/1.1 client on std's `TcpStream` (keep-alive, one connection per client),
//! so that the client's own cost stays small next to the server's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;
use stamp_bench::{loadavg, quantile_ms, CsrReader};

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr).with_context(|| format!("cannot connect to cfssl at {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one request and reads the response: (status, body, server keeps the connection).
    fn post(&mut self, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>, bool)> {
        self.writer.write_all(request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut len, mut chunked, mut keep) = (None, false, true);
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => len = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => keep = !v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
                if n == 0 {
                    line.clear();
                    self.reader.read_line(&mut line)?;
                    break;
                }
                let start = body.len();
                body.resize(start + n, 0);
                self.reader.read_exact(&mut body[start..])?;
                line.clear();
                self.reader.read_line(&mut line)?;
            }
        } else if let Some(n) = len {
            body.resize(n, 0);
            self.reader.read_exact(&mut body)?;
        } else {
            self.reader.read_to_end(&mut body)?;
            keep = false;
        }
        Ok((status, body, keep))
    }
}

/// Runs `count` sign requests with `clients` concurrent connections; prints the JSON result.
pub fn run(addr: &str, csrs: &Path, clients: usize, count: usize) -> anyhow::Result<()> {
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
                let mut conn = match Conn::open(addr) {
                    Ok(c) => c,
                    Err(e) => return fail(e.to_string()),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = requests.get(i) else { break };
                    let t0 = Instant::now();
                    match conn.post(req) {
                        Ok((200, body, keep)) if contains(&body, b"\"success\":true") => {
                            mine.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                            if !keep {
                                match Conn::open(addr) {
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
    println!(
        "{}",
        json!({
            "clients": clients,
            "signed": lat.len(),
            "seconds": seconds,
            "per_second": lat.len() as f64 / seconds.max(1e-9),
            "p50_ms": quantile_ms(&lat, 0.50),
            "p99_ms": quantile_ms(&lat, 0.99),
            "load_before": load_before,
            "load_after": loadavg(),
        })
    );
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
