//! What an operator runs and scrapes, through the real binary: the operations listener (health
//! without a client certificate, Prometheus metrics checked by `promtool` and against the docs),
//! the long-running commands' logs (STAMP_LOG, --log-format, no ANSI codes in files) and their
//! graceful stop on SIGTERM. The gateway's side is in `cloud::gateway_admits_genuine_...`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;

use crate::common::*;
use crate::service::{issued_in_log, load_until_gone, setup, wait_for, Service};

/// `GET path` over plain HTTP (no TLS, no client certificate): status and body.
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {raw:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, body.to_owned())
}

/// `promtool check metrics` on `text` (the Prometheus project's own linter of the exposition
/// format: syntax, HELP and TYPE of every family, counter names, duplicate series). Fails, never
/// skips, without promtool: `scripts/test` installs Debian's `prometheus` package.
pub(crate) fn promtool_check(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("this test needs promtool ({e}): run scripts/test, which installs the prometheus package")
        });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The metric families in an exposition (`# TYPE NAME KIND` lines).
pub(crate) fn exported_metrics(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The metric names a doc's metrics table lists: the backticked names starting with `prefix`
/// in table rows (labels in braces dropped).
pub(crate) fn documented_metrics(doc: &str, prefix: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(doc);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with(&format!("| `{prefix}"))) {
        let cell = line.split(" | ").next().unwrap_or("");
        for (i, part) in cell.split('`').enumerate() {
            if i % 2 == 1 && part.starts_with(prefix) {
                names.insert(part.split('{').next().unwrap().to_owned());
            }
        }
    }
    assert!(!names.is_empty(), "no {prefix}* metrics table in {doc}");
    names
}

/// Checks a scrape: promtool accepts it, and its families are exactly those `doc` documents.
pub(crate) fn check_scrape(text: &str, doc: &str, prefix: &str) {
    promtool_check(text);
    assert_eq!(
        exported_metrics(text),
        documented_metrics(doc, prefix),
        "the metrics exported and those documented in {doc} differ"
    );
}

/// The value of the sample `series` (name with labels, as exported).
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// The `message` fields of a JSON log, one object per line (every line must be one).
fn messages(log: &[serde_json::Value]) -> Vec<&str> {
    log.iter()
        .filter_map(|v| v["fields"]["message"].as_str())
        .collect()
}

#[test]
fn site_service_serves_health_and_metrics_without_a_client_certificate_logs_and_stops_on_sigterm() {
    let (c, st) = setup(&["--quota", "100000"]);
    let log = c.tmp.path().join("serve.log");
    let svc = Service::start_with(
        stamp(&c.pass),
        &c,
        &["--log-format", "json"],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    assert!(svc.ops.starts_with("127.0.0.1:"), "{}", svc.ops);
    // A load balancer's probe: plain HTTP, no certificate.
    assert_eq!(http_get(&svc.ops, "/healthz"), (200, "ok\n".to_owned()));
    // Nothing but health and metrics there.
    assert_eq!(http_get(&svc.ops, "/api/v1/status").0, 404);
    // A reload while serving: an entitlement imported now is applied by the service.
    c.entitle("e2", &["--quota", "5"]);
    // Requests in flight, then SIGTERM.
    let (load, count) = load_until_gone(&svc.url, &st, 4);
    wait_for(&count, 20);
    let (status, metrics) = http_get(&svc.ops, "/metrics");
    assert_eq!(status, 200);
    check_scrape(&metrics, "docs/service.md", "stamp_site_");
    assert_eq!(sample(&metrics, "stamp_site_up"), 1.0);
    assert!(sample(&metrics, "stamp_site_issued_total{kind=\"device\"}") >= 20.0);
    assert_eq!(
        sample(&metrics, "stamp_site_quota{entitlement=\"plant-7.2\"}"),
        5.0
    );
    assert_eq!(svc.stop(), Some(0), "SIGTERM stops with status 0");
    let acked = load.join().unwrap();
    assert!(acked.len() >= 20);
    // Every answered request's certificate is in the audit log.
    let in_log = issued_in_log(&c.site);
    for (serial, sha) in &acked {
        assert_eq!(
            in_log.get(serial),
            Some(sha),
            "acknowledged device {serial} is in the audit log"
        );
    }
    // The service log: JSON lines only, no terminal colours, a line on start, reload and stop.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "no ANSI codes in a log file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let said = messages(&lines);
    for m in [
        "site service listening",
        "operations listener (/healthz, /metrics) listening",
        "entitlement packages applied from the inbox",
        "entitlements reloaded",
        "stop signal received",
        "stopping: no new connections; letting requests in flight finish",
        "site service stopped; every acknowledged issuance is in the audit log",
    ] {
        assert!(said.contains(&m), "the log says {m:?}: {said:?}");
    }
    assert!(lines.iter().any(|l| l["fields"]["signal"] == "SIGTERM"));
    assert_eq!(
        said.last().copied(),
        Some("site service stopped; every acknowledged issuance is in the audit log")
    );
    // Each acknowledged device has its request line.
    let logged: BTreeSet<u64> = lines
        .iter()
        .filter_map(|l| l["fields"]["device_serial"].as_u64())
        .collect();
    for (serial, _) in &acked {
        assert!(logged.contains(serial), "device {serial} has a request line");
    }
}

#[test]
fn log_settings_are_checked_before_serving() {
    let (c, _) = setup(&["--quota", "3"]);
    stamp(&c.pass)
        .env("STAMP_LOG", "stamp=loud")
        .site("serve")
        .dir(&c.site)
        .args(&["--listen", "127.0.0.1:0", "--ops-listen", "off"])
        .fails("STAMP_LOG");
    let o = stamp(&c.pass)
        .site("serve")
        .dir(&c.site)
        .args(&["--log-format", "xml"])
        .output();
    assert_eq!(o.status.code(), Some(2), "a usage error");
    stamp(&c.pass)
        .site("serve")
        .dir(&c.site)
        .args(&["--listen", "127.0.0.1:0", "--ops-listen", "localhost"])
        .fails("ops_listen");
    let o = stamp_bare()
        .cloud("gateway")
        .args(&[
            "--registry",
            "r.json",
            "--trust-registry-root",
            "--ops-listen",
            "nowhere",
        ])
        .output();
    assert_eq!(o.status.code(), Some(2), "a usage error");
}

/// The workspace root.
fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `stamp` binary the tests run.
fn stamp_exe() -> std::path::PathBuf {
    std::path::PathBuf::from(stamp_bare().command().get_program())
}

#[test]
fn example_systemd_units_verify_and_their_command_lines_parse() {
    let tmp = tempfile::tempdir().unwrap();
    for unit in ["stamp-site.service", "stamp-gateway.service"] {
        let text = std::fs::read_to_string(root().join("packaging/systemd").join(unit)).unwrap();
        for hardening in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=\n",
            "SystemCallFilter=@system-service",
            "KillSignal=SIGTERM",
        ] {
            assert!(text.contains(hardening), "{unit} sets {hardening:?}");
        }
        // systemd-analyze checks the ExecStart binary exists: point it at the one built.
        let copy = tmp.path().join(unit);
        std::fs::write(
            &copy,
            text.replace("/usr/bin/stamp", stamp_exe().to_str().unwrap()),
        )
        .unwrap();
        let o = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap_or_else(|e| {
                panic!("this test needs systemd-analyze ({e}): run scripts/test, which installs systemd")
            });
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {unit}: {said}"
        );
        // The command line is one stamp accepts: its options parse (with --help, nothing runs).
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/stamp "))
            .unwrap();
        let args: Vec<String> = exec
            .split_whitespace()
            .map(|a| a.replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/x"))
            .map(|a| if a.starts_with("${") { "x".to_owned() } else { a })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = stamp_bare().args(&args).arg("--help").output();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{unit}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn shell_completions_complete_and_manual_pages_render() {
    // bash: load the script and complete `stamp site se` and `stamp site serve --ops`.
    let script = stamp_bare().args(&["completions", "bash"]).output();
    assert!(script.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("stamp.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(stamp site se); COMP_CWORD=2; _stamp stamp se site; echo \"${{COMPREPLY[@]}}\"; \
             COMP_WORDS=(stamp site serve --ops); COMP_CWORD=3; _stamp stamp --ops serve; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "serve\n--ops-listen\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let shell = |sh: &str, script: String| {
        let o = std::process::Command::new(sh)
            .arg("-c")
            .arg(script)
            .output()
            .unwrap_or_else(|e| panic!("this test needs {sh} ({e}): run scripts/test, which installs it"));
        assert!(o.status.success(), "{sh}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    // zsh: the script parses, and compinit registers it for stamp from a directory in $fpath.
    let zdir = tmp.path().join("zsh");
    std::fs::create_dir(&zdir).unwrap();
    let zsh = stamp_bare().args(&["completions", "zsh"]).output();
    std::fs::write(zdir.join("_stamp"), &zsh.stdout).unwrap();
    let said = shell(
        "zsh",
        format!(
            "zsh -n {0}/_stamp && fpath=({0} $fpath) && autoload -U compinit && compinit -u -D && print -r -- $_comps[stamp]",
            zdir.display()
        ),
    );
    assert_eq!(said, "_stamp\n");
    // fish: completes subcommands and options, with their help.
    let fish = stamp_bare().args(&["completions", "fish"]).output();
    let fpath = tmp.path().join("stamp.fish");
    std::fs::write(&fpath, &fish.stdout).unwrap();
    let said = shell(
        "fish",
        format!(
            "source {}; complete -C 'stamp site se'; complete -C 'stamp cloud gateway --ops'",
            fpath.display()
        ),
    );
    assert!(said.starts_with("serve\tRun the site service"), "{said}");
    assert!(
        said.contains("\n--ops-listen\tAddress of the operations listener"),
        "{said}"
    );
    assert_eq!(
        stamp_bare().args(&["completions", "tcsh"]).output().status.code(),
        Some(2)
    );

    // The manual page: roff that groff renders without a warning.
    let page = stamp_bare().arg("manpage").output();
    assert!(page.status.success());
    assert!(String::from_utf8_lossy(&page.stdout).contains("\n.TH stamp 1 "));
    let groff = |file: &Path| {
        let o = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(file)
            .output()
            .unwrap_or_else(|e| {
                panic!("this test needs groff ({e}): run scripts/test, which installs groff-base")
            });
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "groff {}: {}",
            file.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let one = tmp.path().join("stamp.1");
    std::fs::write(&one, &page.stdout).unwrap();
    groff(&one);
    // One page per command.
    let man = tmp.path().join("man");
    std::fs::create_dir(&man).unwrap();
    let v = stamp_bare().arg("manpage").args(&["--dir", s(&man)]).json();
    assert!(v["pages"].as_array().unwrap().len() > 40, "{v}");
    let serve = std::fs::read_to_string(man.join("stamp-site-serve.1")).unwrap();
    assert!(
        serve.contains(".TH stamp-site-serve 1") && serve.contains("ops\\-listen"),
        "{serve}"
    );
    groff(&man.join("stamp-cloud-gateway.1"));
    stamp_bare()
        .arg("manpage")
        .args(&["--dir", s(&tmp.path().join("absent"))])
        .fails("not a directory");
}

#[test]
fn the_licenses_and_the_changelog_are_at_the_root() {
    let read = |f: &str| std::fs::read_to_string(root().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    assert!(
        read("LICENSE-APACHE").contains("Apache License\n                        Version 2.0, January 2004")
    );
    assert!(read("LICENSE-MIT").starts_with("MIT License\n"));
    assert!(read("Cargo.toml").contains("license = \"Apache-2.0 OR MIT\""));
    let changelog = read("CHANGELOG.md");
    assert!(changelog.contains("## [Unreleased]") && changelog.contains("keepachangelog.com"));
}

/// The text of a successful run.
fn text(cmd: Stamp) -> String {
    let o = cmd.output();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Whether `t` is a time as stamp prints it: RFC 3339 in UTC to the second.
fn whole_second(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 20
        && b[19] == b'Z'
        && t.chars().enumerate().all(|(i, ch)| match i {
            4 | 7 => ch == '-',
            10 => ch == 'T',
            13 | 16 => ch == ':',
            19 => ch == 'Z',
            _ => ch.is_ascii_digit(),
        })
}

#[test]
fn text_output_counts_names_rates_and_times_tidily() {
    let c = ceremony(true);
    let pkg = c.tmp.path().join("e.cose");
    let entitled = text(
        stamp(&c.pass)
            .hq("entitle")
            .dir(&c.hq)
            .args(&["--site", "plant-7", "--product", "thermo-2", "--quota", "10"])
            .args(&["--rate", "100/minute", "--rate", "5000/day", "-o", s(&pkg)]),
    );
    assert!(entitled.contains("\n  rate 100/minute, 5000/day\n"), "{entitled}");
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    // hq entitlements shows the rate limits, as site status does.
    let listed = text(stamp(&c.pass).hq("entitlements").dir(&c.hq));
    assert!(
        listed.contains("\tquota 10\trate 100/minute, 5000/day\t"),
        "{listed}"
    );
    let status = text(stamp(&c.pass).site("status").dir(&c.site));
    assert!(status.contains("\trate 100/minute, 5000/day\t"), "{status}");
    // One time precision, the second, in text and JSON.
    stamp(&c.pass)
        .site("add-station")
        .dir(&c.site)
        .args(&["--name", "line-1", "-o", s(&c.tmp.path().join("st1"))])
        .json();
    let stations = text(stamp(&c.pass).site("stations").dir(&c.site));
    let added = stations.split_whitespace().nth(2).unwrap();
    assert!(
        stations.starts_with("line-1 ") && whole_second(added),
        "{stations}"
    );
    assert!(stations.contains(" active "), "{stations}");
    let sites = text(stamp(&c.pass).hq("sites").dir(&c.hq));
    let enrolled = sites.trim_end().rsplit(' ').next().unwrap();
    assert!(whole_second(enrolled), "{sites}");
    let v = stamp(&c.pass).hq("sites").dir(&c.hq).json();
    assert!(
        whole_second(v["sites"][0]["enrolled_at"].as_str().unwrap()),
        "{v}"
    );
    // One device issued, reconciled and exported: "1 site", "1 entitlement", "1 device".
    let csrs = write_csr_dir(&c.tmp.path().join("csrs"), 1, false);
    let out = c.tmp.path().join("out");
    let issued = stamp(&c.pass)
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.1", "--csr", s(&csrs), "-o", s(&out)])
        .json();
    // Measured figures rounded: seconds to the millisecond, rates to a tenth.
    let decimals = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        ((x * f).round() - x * f).abs() < 1e-6
    };
    assert!(decimals(issued["seconds"].as_f64().unwrap(), 3), "{issued}");
    assert!(decimals(issued["per_second"].as_f64().unwrap(), 1), "{issued}");
    let bundle = c.tmp.path().join("b.bundle");
    stamp(&c.pass)
        .site("export-audit")
        .dir(&c.site)
        .args(&["-o", s(&bundle)])
        .json();
    stamp(&c.pass).hq("reconcile").dir(&c.hq).arg(&bundle).json();
    let devices = text(stamp(&c.pass).hq("devices").dir(&c.hq));
    let issued_at = devices.split('\t').nth(3).unwrap();
    assert!(whole_second(issued_at), "{devices}");
    let v = stamp(&c.pass).hq("devices").dir(&c.hq).json();
    assert!(
        whole_second(v["devices"][0]["issued_at"].as_str().unwrap()),
        "{v}"
    );
    let registry = c.tmp.path().join("registry.cose");
    let exported =
        text(
            stamp(&c.pass)
                .hq("export")
                .dir(&c.hq)
                .args(&["--format", "registry", "-o", s(&registry)]),
        );
    assert!(
        exported.contains(": 1 site, 1 entitlement, 1 device, 0 revocations\n"),
        "{exported}"
    );
    let cert = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".crt.pem"))
        .unwrap();
    let verdict = text(
        stamp_bare()
            .cloud("verify")
            .args(&[
                "--registry",
                s(&registry),
                "--root-fingerprint",
                &c.root_fingerprint(),
            ])
            .arg(&cert),
    );
    assert!(verdict.contains("\nGENUINE (registered): serial "), "{verdict}");
}

#[test]
fn on_a_terminal_logs_are_coloured_and_ctrl_c_stops_cleanly() {
    let (c, _) = setup(&["--quota", "3"]);
    // `script` gives the service a terminal; `timeout` sends it SIGINT (Ctrl-C) after 3 s and
    // passes its exit status on.
    let cmd = format!(
        "timeout --preserve-status -s INT 3 {} --passphrase-file {} site serve --dir {} --listen 127.0.0.1:0 --ops-listen off",
        stamp_exe().display(),
        c.pass.display(),
        c.site.display()
    );
    let o = std::process::Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("STAMP_LOG", "info")
        .env_remove("STAMP_PASSPHRASE_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("this test needs script (util-linux) ({e})"));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "Ctrl-C stops with status 0: {shown}");
    assert!(shown.contains('\u{1b}'), "colours on a terminal: {shown}");
    for m in [
        "site service listening",
        "stop signal received",
        "SIGINT",
        "site service stopped",
    ] {
        assert!(shown.contains(m), "the terminal shows {m:?}: {shown}");
    }
}

#[test]
fn a_taken_operations_port_stops_the_start_and_names_the_option() {
    let (c, _) = setup(&["--quota", "3"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    stamp(&c.pass)
        .site("serve")
        .dir(&c.site)
        .args(&["--listen", "127.0.0.1:0", "--ops-listen", &port])
        .fails("ops_listen");
    // The site's engine lock was released: the site issues again.
    let csrs = write_csr_dir(&c.tmp.path().join("csrs"), 1, false);
    stamp(&c.pass)
        .site("issue")
        .dir(&c.site)
        .args(&[
            "--entitlement",
            "plant-7.1",
            "--csr",
            s(&csrs),
            "-o",
            s(&c.tmp.path().join("out")),
        ])
        .json();
}
