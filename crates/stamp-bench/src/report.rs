//! The table: every figure of a `bench/run` results directory beside its bound and target.

use std::path::Path;

use serde_json::Value;

fn load(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    // The last line holding a JSON object (tools may print more before it).
    text.lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l.trim())
                .ok()
                .filter(Value::is_object)
        })
        .or_else(|| serde_json::from_str(&text).ok())
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn text(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .map_or_else(|| "?".into(), str::to_owned)
}

/// Thousands separators.
fn n0(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(x: f64, of: f64) -> String {
    if of > 0.0 {
        format!("{:.0}%", 100.0 * x / of)
    } else {
        "?".into()
    }
}

/// `/usr/bin/time -v` output: wall seconds, peak RSS in KiB, CPU seconds (user + system).
fn time_v(dir: &Path, name: &str) -> Option<(f64, u64, f64)> {
    let t = std::fs::read_to_string(dir.join(name)).ok()?;
    let mut wall = None;
    let mut rss = None;
    let mut cpu = 0.0;
    for l in t.lines() {
        let l = l.trim();
        if let Some(v) = l.strip_prefix("Elapsed (wall clock) time (h:mm:ss or m:ss):") {
            let parts: Vec<f64> = v.trim().split(':').filter_map(|p| p.parse().ok()).collect();
            wall = Some(parts.iter().fold(0.0, |acc, p| acc * 60.0 + p));
        }
        if let Some(v) = l.strip_prefix("Maximum resident set size (kbytes):") {
            rss = v.trim().parse().ok();
        }
        for p in ["User time (seconds):", "System time (seconds):"] {
            if let Some(v) = l.strip_prefix(p) {
                cpu += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    Some((wall?, rss?, cpu))
}

fn mib(kib: f64) -> String {
    format!("{:.0} MB", kib * 1024.0 / 1e6)
}

struct Table {
    rows: Vec<[String; 6]>,
}

impl Table {
    fn row(&mut self, what: &str, result: String, bound: String, ratio: String, target: &str, load: String) {
        self.rows
            .push([what.into(), result, bound, ratio, target.into(), load]);
    }
}

/// Prints the table for the results in `dir`.
pub fn print(dir: &Path) -> anyhow::Result<()> {
    let meta = load(dir, "meta.json").unwrap_or(Value::Null);
    let mut t = Table { rows: Vec::new() };
    let bound = load(dir, "bound.json");
    let raw = bound.as_ref().and_then(|b| num(b, "raw_n")).unwrap_or(0.0);
    let raw_cpu = bound.as_ref().and_then(|b| num(b, "raw_n_cpu_us")).unwrap_or(0.0);
    let threads = bound.as_ref().and_then(|b| num(b, "threads")).unwrap_or(2.0);
    if let Some(b) = &bound {
        let load = text(b, "load_before");
        t.row(
            &format!("**bound**: verify P-256 CSR signature + sign P-256 certificate, aws-lc-rs, {threads:.0} threads"),
            format!(
                "{} ops/s (1 thread: {}); CPU {:.0} µs/op",
                n0(raw),
                n0(num(b, "raw_1").unwrap_or(0.0)),
                raw_cpu
            ),
            "—".into(),
            "100%".into(),
            "",
            load.clone(),
        );
        let s = num(b, "stamp_n").unwrap_or(0.0);
        let s_cpu = num(b, "stamp_n_cpu_us").unwrap_or(0.0);
        t.row(
            &format!(
                "bound through stamp's code (`csr::verify` + `DeviceIssuer::issue`), {threads:.0} threads"
            ),
            format!(
                "{} ops/s (1 thread: {}); CPU {s_cpu:.0} µs/op",
                n0(s),
                n0(num(b, "stamp_1").unwrap_or(0.0))
            ),
            n0(raw),
            format!("{} (CPU: {})", pct(s, raw), pct(raw_cpu, s_cpu)),
            "",
            load,
        );
    }
    // Software-key engine rates by worker count, for the ratio to cfssl.
    let mut engine_rates: Vec<(u64, f64)> = Vec::new();
    for (key, label) in [("soft", "software key"), ("hsm", "issuing key in SoftHSM2")] {
        let mut files: Vec<(u64, String)> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name
                    .strip_prefix(&format!("engine-{key}-"))?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((n, name))
            })
            .collect();
        files.sort();
        for (n, name) in files {
            let Some(e) = load(dir, &name) else { continue };
            let rate = num(&e, "per_second").unwrap_or(0.0);
            if key == "soft" {
                engine_rates.push((n, rate));
            }
            t.row(
                &format!(
                    "site engine in process, durable log, all checks, {label}, {n} workers ({} devices)",
                    n0(num(&e, "issued").unwrap_or(0.0))
                ),
                format!(
                    "{} devices/s, p50 {:.2} ms, p99 {:.2} ms; CPU {:.0} µs/device; peak RSS {}",
                    n0(rate),
                    num(&e, "p50_ms").unwrap_or(0.0),
                    num(&e, "p99_ms").unwrap_or(0.0),
                    num(&e, "cpu_us_per_device").unwrap_or(0.0),
                    mib(num(&e, "peak_rss_kib").unwrap_or(0.0))
                ),
                n0(raw),
                format!(
                    "{} (CPU: {})",
                    pct(rate, raw),
                    pct(raw_cpu, num(&e, "cpu_us_per_device").unwrap_or(0.0))
                ),
                if key == "soft" { "≥ 85%" } else { "" },
                text(&e, "load_before"),
            );
        }
    }
    let mut cfssl: Vec<(u64, String)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("cfssl-")?.strip_suffix(".json")?.parse().ok()?;
            Some((n, name))
        })
        .collect();
    cfssl.sort();
    if cfssl.is_empty() {
        t.row(
            "peer: `cfssl serve` over HTTP",
            "not run (cfssl not installed: apt-get install golang-cfssl)".into(),
            String::new(),
            String::new(),
            "",
            String::new(),
        );
    }
    // (clients, devices/s, CPU µs per device of the cfssl process)
    let mut cfssl_rates: Vec<(u64, f64, Option<f64>)> = Vec::new();
    for (n, name) in cfssl {
        let Some(c) = load(dir, &name) else { continue };
        let rate = num(&c, "per_second").unwrap_or(0.0);
        cfssl_rates.push((n, rate, num(&c, "server_cpu_us_per_device")));
        t.row(
            &format!(
                "peer: `cfssl serve` over HTTP/1.1 keep-alive, {n} client{}, same CSRs",
                if n == 1 { "" } else { "s" }
            ),
            format!(
                "{} devices/s, p50 {:.2} ms, p99 {:.2} ms",
                n0(rate),
                num(&c, "p50_ms").unwrap_or(0.0),
                num(&c, "p99_ms").unwrap_or(0.0)
            ),
            n0(raw),
            format!(
                "{}; stamp in process / cfssl = {}",
                pct(rate, raw),
                // The engine run with as many workers as cfssl had clients (or the next larger).
                engine_rates
                    .iter()
                    .find(|(w, _)| *w >= n)
                    .or(engine_rates.last())
                    .map_or("?".into(), |(w, e)| format!(
                        "{:.1}× ({w} workers)",
                        e / rate.max(1e-9)
                    ))
            ),
            "",
            text(&c, "load_before"),
        );
    }
    let peak = service_rows(dir, &mut t, raw, raw_cpu, &cfssl_rates)?;
    let count = meta.get("reconcile_count").and_then(Value::as_f64).unwrap_or(0.0);
    if let Some(e) = load(dir, "bulk-issue.json") {
        let rate = num(&e, "per_second").unwrap_or(0.0);
        t.row(
            &format!(
                "issuing the {} devices of the reconciliation bundle (engine, {} workers)",
                n0(num(&e, "issued").unwrap_or(0.0)),
                num(&e, "threads").unwrap_or(0.0)
            ),
            format!(
                "{} devices/s in {:.1} s, p99 {:.2} ms; CPU {:.0} µs/device; peak RSS {}",
                n0(rate),
                num(&e, "seconds").unwrap_or(0.0),
                num(&e, "p99_ms").unwrap_or(0.0),
                num(&e, "cpu_us_per_device").unwrap_or(0.0),
                mib(num(&e, "peak_rss_kib").unwrap_or(0.0))
            ),
            n0(raw),
            format!(
                "{} (CPU: {})",
                pct(rate, raw),
                pct(raw_cpu, num(&e, "cpu_us_per_device").unwrap_or(0.0))
            ),
            "≥ 85%",
            text(&e, "load_before"),
        );
    }
    if let (Some(x), Some((wall, rss, cpu))) = (load(dir, "export.json"), time_v(dir, "export.time")) {
        let entries = num(&x, "entries").unwrap_or(0.0);
        t.row(
            &format!("`stamp site export-audit`, {} entries", n0(entries)),
            format!(
                "{} entries/s ({wall:.1} s; CPU {cpu:.1} s), peak RSS {}",
                n0(entries / wall.max(1e-9)),
                mib(rss as f64)
            ),
            String::new(),
            String::new(),
            "",
            std::fs::read_to_string(dir.join("export.load"))
                .unwrap_or_default()
                .trim()
                .into(),
        );
    }
    if let Some((wall, rss, cpu)) = time_v(dir, "reconcile.time") {
        let r = load(dir, "reconcile.json").unwrap_or(Value::Null);
        let entries = num(&r, "entries").unwrap_or(count);
        let ok = r.get("ok").and_then(Value::as_bool).unwrap_or(false);
        let scaled = wall * 1e6 / entries.max(1.0);
        t.row(
            &format!(
                "`stamp hq reconcile`, {} entries end to end{}",
                n0(entries),
                if ok {
                    ""
                } else {
                    " (**not ok**: see reconcile.json)"
                }
            ),
            format!(
                "{} entries/s ({wall:.1} s; {:.0} s per 1M); CPU {cpu:.1} s ({:.0} µs/entry); peak RSS {}",
                n0(entries / wall.max(1e-9)),
                scaled,
                cpu * 1e6 / entries.max(1.0),
                mib(rss as f64)
            ),
            String::new(),
            format!(
                "{:.0}% of 60 s/1M; {:.0}% of 256 MB",
                100.0 * scaled / 60.0,
                100.0 * rss as f64 * 1024.0 / (256.0 * 1024.0 * 1024.0)
            ),
            "< 60 s and < 256 MB for 1M",
            std::fs::read_to_string(dir.join("reconcile.load"))
                .unwrap_or_default()
                .trim()
                .into(),
        );
    }
    if let (Some(x), Some((wall, rss, _))) = (load(dir, "export2.json"), time_v(dir, "export2.time")) {
        let (rwall, rrss) = time_v(dir, "reconcile2.time").map_or((0.0, 0), |(w, r, _)| (w, r));
        let ok = load(dir, "reconcile2.json")
            .and_then(|r| r.get("ok").and_then(Value::as_bool))
            .unwrap_or(false);
        t.row(
            &format!(
                "second bundle: {} new entries on a log of {} (consistency proof from the stored log)",
                n0(num(&x, "entries").unwrap_or(0.0)),
                n0(num(&x, "previous_size").unwrap_or(0.0))
            ),
            format!(
                "export {wall:.1} s (peak RSS {}); reconcile {rwall:.1} s (peak RSS {}){}",
                mib(rss as f64),
                mib(rrss as f64),
                if ok { "" } else { " (**reconcile not ok**)" }
            ),
            String::new(),
            String::new(),
            "",
            std::fs::read_to_string(dir.join("export2.load"))
                .unwrap_or_default()
                .trim()
                .into(),
        );
    }
    match peak {
        Some((kib, what, load)) => t.row(
            "site service peak RSS under the heaviest load",
            format!("{} ({what}; `VmHWM` of the `stamp site serve` process)", mib(kib)),
            String::new(),
            pct(kib * 1024.0, 100e6),
            "< 100 MB",
            load,
        ),
        None => t.row(
            "site service peak RSS under the heaviest load",
            "not run (`BENCH_SERVICE_CLIENTS` empty)".into(),
            String::new(),
            String::new(),
            "< 100 MB",
            String::new(),
        ),
    }

    println!(
        "stamp benchmarks — {} — commit {} — {} — load at start {}",
        text(&meta, "date"),
        text(&meta, "commit"),
        text(&meta, "machine"),
        text(&meta, "load_start")
    );
    println!();
    println!(
        "| measurement | result | bound (ops/s) | ratio to bound: wall (CPU) | target | load 1/5/15 min |"
    );
    println!("|---|---|---:|---:|---|---|");
    for r in &t.rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r[0], r[1], r[2], r[3], r[4], r[5]
        );
    }
    Ok(())
}

/// The target for the site service: this many times cfssl's rate at the same concurrency.
const SERVICE_VS_CFSSL: f64 = 3.0;
/// The target for the site service's p99 latency at 64 stations, milliseconds.
const SERVICE_P99_MS: f64 = 5.0;

/// The site service's rows (`service-PROTOCOL-CLIENTS.json`); returns the largest peak RSS seen
/// (KiB, which run, its load).
fn service_rows(
    dir: &Path,
    t: &mut Table,
    raw: f64,
    raw_cpu: f64,
    cfssl_rates: &[(u64, f64, Option<f64>)],
) -> anyhow::Result<Option<(f64, String, String)>> {
    let mut files: Vec<(usize, u64, String, &str)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (proto, n) = name
                .strip_prefix("service-")?
                .strip_suffix(".json")?
                .split_once('-')?;
            let (order, label) = match proto {
                "json" => (0, "JSON API"),
                "est" => (1, "EST"),
                _ => return None,
            };
            Some((order, n.parse().ok()?, name, label))
        })
        .collect();
    files.sort();
    let mut peak: Option<(f64, String, String)> = None;
    for (_, n, name, label) in files {
        let Some(v) = load(dir, &name) else { continue };
        let rate = num(&v, "per_second").unwrap_or(0.0);
        let p99 = num(&v, "p99_ms").unwrap_or(0.0);
        let server_cpu = num(&v, "server_cpu_us_per_device");
        let rss = num(&v, "server_peak_rss_kib").unwrap_or(0.0);
        let stations = num(&v, "stations").unwrap_or(0.0);
        let cfssl = cfssl_rates.iter().find(|(c, _, _)| *c == n);
        let vs_cfssl = cfssl.map_or_else(
            || "service / cfssl: ? (no cfssl run at this concurrency)".into(),
            |(_, c, c_cpu)| {
                let x = rate / c.max(1e-9);
                // By CPU: devices per CPU-second of each server process.
                let by_cpu = match (server_cpu, c_cpu) {
                    (Some(s), Some(c)) if s > 0.0 => format!(", by CPU {:.2}×", c / s),
                    _ => String::new(),
                };
                format!(
                    "service / cfssl = **{x:.2}×**{by_cpu} (cfssl {}/s in this run; {:.0}% of the 3× target)",
                    n0(*c),
                    100.0 * x / SERVICE_VS_CFSSL
                )
            },
        );
        let mut ratio = format!(
            "{} (CPU: {}); {vs_cfssl}",
            pct(rate, raw),
            server_cpu.map_or("?".into(), |c| pct(raw_cpu, c))
        );
        if n == 64 {
            ratio.push_str(&format!(
                "; p99 {:.0}% of {SERVICE_P99_MS:.0} ms",
                100.0 * p99 / SERVICE_P99_MS
            ));
        }
        let load = text(&v, "load_before");
        t.row(
            &format!(
                "**site service** (`stamp site serve`) over mutual TLS, {label}, {n} concurrent station connection{} ({stations:.0} station certificate{}), keep-alive ({} devices)",
                if n == 1 { "" } else { "s" },
                if stations == 1.0 { "" } else { "s" },
                n0(num(&v, "issued").unwrap_or(0.0))
            ),
            format!(
                "{} devices/s, p50 {:.2} ms, p99 {p99:.2} ms; service CPU {} µs/device (client {:.0}); peak RSS {}",
                n0(rate),
                num(&v, "p50_ms").unwrap_or(0.0),
                server_cpu.map_or("?".into(), |c| format!("{c:.0}")),
                num(&v, "client_cpu_us_per_device").unwrap_or(0.0),
                mib(rss)
            ),
            n0(raw),
            ratio,
            if n == 64 {
                "≥ 3× cfssl, p99 < 5 ms"
            } else {
                "≥ 3× cfssl"
            },
            load.clone(),
        );
        if peak.as_ref().is_none_or(|(k, _, _)| rss > *k) {
            peak = Some((rss, format!("{label}, {n} stations"), load));
        }
    }
    Ok(peak)
}
