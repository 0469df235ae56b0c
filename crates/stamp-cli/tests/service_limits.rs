//! The site service's limits under attack (issue #14), through the real `stamp site serve`: peers
//! that vanish mid-request, slowloris clients (at the TLS handshake, the headers and the body),
//! 10,000 idle connections, a 1 GB body, a station flooding renewals. Each time another station
//! keeps being served and the service's memory (VmRSS) stays bounded. The limits are stated in
//! docs/service.md, the figures in docs/reliability.md.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::service::{
    add_station, b64, check_consistent, connect, p256_csr, provision, rt, setup, write, Service,
};
use stamp_station::client::{Endpoint, StationIdentity};

/// The service's resident memory (VmRSS), in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The metric `name`'s value from `/metrics`.
async fn metric(url: &str, st: &Path, name: &str) -> f64 {
    let mut conn = connect(url, st).await;
    let r = conn.get("/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// A configuration with short timeouts, so the attacks end quickly.
fn short_timeouts(c: &Ceremony) -> std::path::PathBuf {
    write(
        &c.tmp.path().join("serve.toml"),
        b"handshake_timeout_secs = 2\nheader_timeout_secs = 2\nrequest_timeout_secs = 3\n",
    )
}

/// Reads until the peer closes (or `limit` passes); returns what was read and whether it closed.
async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(r: &mut R, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Writes `bytes` to `conn` one at a time, `every` apart, while reading: returns whether the
/// service closed the connection and when (from `t`), as the reader saw it.
async fn dribble<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static>(
    conn: S,
    t: Instant,
    bytes: Vec<u8>,
    every: Duration,
) -> (bool, Duration) {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let writer = tokio::spawn(async move {
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
        // Hold the connection open: only the service may end it.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let (_, closed) = read_until_closed(&mut rd, Duration::from_secs(10)).await;
    let took = t.elapsed();
    writer.abort();
    (closed, took)
}

/// A station provisions `n` devices, each over a new connection; returns the slowest, asserting
/// each was served.
async fn served(url: &str, st: &Path, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        let mut conn = connect(url, st).await;
        let r = provision(&mut conn, "plant-7.1", &p256_csr()).await;
        assert_eq!(r.status, 200, "{r:?}");
        slowest = slowest.max(t.elapsed());
    }
    slowest
}

#[test]
fn slowloris_and_vanishing_peers_are_cut_off_while_stations_are_served() {
    let (c, st) = setup(&["--quota", "1000"]);
    let st2 = add_station(&c, &c.site, "line-2", "st2");
    let cfg = short_timeouts(&c);
    let svc = Service::start(&c, &["--config", s(&cfg)]);
    let url = svc.url.clone();
    let addr = url.trim_start_matches("https://").to_owned();
    rt().block_on(async {
        served(&url, &st2, 2).await;
        let rss_before = rss_kib(svc.pid());
        let ep = Endpoint::for_station(&url, &StationIdentity::load(&st).unwrap()).unwrap();
        let mut attacks = Vec::new();
        // 200 peers that never finish the TLS handshake, one byte every 500 ms, from addresses
        // other than the stations'.
        let target: std::net::SocketAddr = addr.parse().unwrap();
        for i in 0..200u8 {
            attacks.push(tokio::spawn(async move {
                let t = Instant::now();
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(std::net::SocketAddr::from(([127, 0, 1, i % 60], 0))).unwrap();
                let tcp = sock.connect(target).await.unwrap();
                let bytes = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
                let (closed, took) = dribble(tcp, t, bytes.to_vec(), Duration::from_millis(500)).await;
                ("handshake", closed, took)
            }));
        }
        // 20 stations that send their headers one byte every 300 ms.
        for _ in 0..20 {
            let ep = ep.clone();
            attacks.push(tokio::spawn(async move {
                let tls = ep.connect_tls().await.unwrap();
                let t = Instant::now();
                let bytes = b"POST /api/v1/provision HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                let (closed, took) = dribble(tls, t, bytes.to_vec(), Duration::from_millis(300)).await;
                ("headers", closed, took)
            }));
        }
        // 20 stations that send a body one byte every 300 ms: answered 503 timeout.
        for _ in 0..20 {
            let ep = ep.clone();
            attacks.push(tokio::spawn(async move {
                let mut tls = ep.connect_tls().await.unwrap();
                let t = Instant::now();
                tls.write_all(
                    b"POST /api/v1/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
                )
                .await
                .unwrap();
                let (mut rd, mut wr) = tokio::io::split(tls);
                let writer = tokio::spawn(async move {
                    for _ in 0..100 {
                        if wr.write_all(b" ").await.is_err() || wr.flush().await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                });
                let (resp, _) = read_until_closed(&mut rd, Duration::from_secs(10)).await;
                writer.abort();
                let text = String::from_utf8_lossy(&resp).into_owned();
                assert!(text.starts_with("HTTP/1.1 503"), "{text}");
                assert!(text.contains("stamp-error: timeout"), "{text}");
                ("body", true, t.elapsed())
            }));
        }
        // 50 stations that vanish mid-request: headers and half the body, then the socket closes.
        for _ in 0..50 {
            let ep = ep.clone();
            attacks.push(tokio::spawn(async move {
                let mut tls = ep.connect_tls().await.unwrap();
                let t = Instant::now();
                let body = serde_json::json!({ "entitlement": "plant-7.1", "csr": b64(&p256_csr()) }).to_string();
                let head = format!(
                    "POST /api/v1/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                tls.write_all(head.as_bytes()).await.unwrap();
                tls.write_all(&body.as_bytes()[..body.len() / 2]).await.unwrap();
                drop(tls);
                ("vanished", true, t.elapsed())
            }));
        }
        // Meanwhile another station is served, each device over a new connection.
        let slowest = served(&url, &st2, 20).await;
        let mut worst: std::collections::BTreeMap<&str, Duration> = Default::default();
        for a in attacks {
            let (what, closed, took) = a.await.unwrap();
            assert!(closed, "a {what} slowloris was not cut off");
            let w = worst.entry(what).or_default();
            *w = (*w).max(took);
        }
        eprintln!("slowloris: longest held {worst:?}; the other station's slowest device {slowest:?}");
        // Cut off at the timeouts (2 s handshake, 2 s headers, 3 s request), with slack.
        assert!(worst["handshake"] < Duration::from_secs(5), "{worst:?}");
        assert!(worst["headers"] < Duration::from_secs(5), "{worst:?}");
        assert!(worst["body"] < Duration::from_secs(6), "{worst:?}");
        assert!(slowest < Duration::from_secs(3), "{slowest:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let open = metric(&url, &st2, "stamp_site_connections_open").await;
        assert!(open <= 2.0, "{open} connections still open");
        let rss_after = rss_kib(svc.pid());
        eprintln!("slowloris: service VmRSS {rss_before} KiB before, {rss_after} KiB after");
        assert!(rss_after < rss_before + 64 * 1024, "{rss_before} -> {rss_after} KiB");
    });
    assert_eq!(svc.stop(), Some(0));
    assert_eq!(check_consistent(&c, "plant-7.1"), 22);
}

/// How many of `conns` the service has not closed (a read neither ends nor fails at once).
async fn still_open(conns: &mut [tokio::net::TcpStream]) -> usize {
    let mut n = 0;
    for tcp in conns {
        let mut b = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut b))
            .await
            .is_err()
        {
            n += 1;
        }
    }
    n
}

#[test]
fn ten_thousand_idle_connections_are_capped_and_time_out() {
    let (c, st) = setup(&["--quota", "1000"]);
    // A short handshake timeout; the header timeout (which also closes a kept-alive connection
    // idle that long) stays at its 10 s default.
    let cfg = write(&c.tmp.path().join("serve.toml"), b"handshake_timeout_secs = 2\n");
    let svc = Service::start(&c, &["--config", s(&cfg)]);
    let url = svc.url.clone();
    let addr = url.trim_start_matches("https://").to_owned();
    // The flood's sockets are this process's files: raise its soft limit to the hard one.
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if nofile.current.is_some_and(|c| c < 12_000) {
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: nofile.maximum,
                maximum: nofile.maximum,
            },
        )
        .unwrap();
    }
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    assert!(
        nofile.is_none_or(|c| c >= 12_000),
        "10,000 connections need more open files than the hard limit allows ({nofile:?}); raise it (ulimit -Hn)"
    );
    rt().block_on(async {
        // A station connected before the flood.
        let mut early = connect(&url, &st).await;
        assert_eq!(provision(&mut early, "plant-7.1", &p256_csr()).await.status, 200);
        let rss_before = rss_kib(svc.pid());
        let t = Instant::now();
        let mut conns = Vec::new();
        // The flood comes from another address (127.0.0.2) than the stations (127.0.0.1).
        let target: std::net::SocketAddr = addr.parse().unwrap();
        for _ in 0..10_000 {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            match tokio::time::timeout(Duration::from_secs(5), sock.connect(target)).await {
                Ok(Ok(tcp)) => conns.push(tcp),
                other => panic!("connect: {other:?}"),
            }
        }
        let opened = t.elapsed();
        let rss_flood = rss_kib(svc.pid());
        // The station already connected is still served, and so are new connections: one
        // address holds at most a quarter of max_connections (256 of 1024) in the TLS handshake;
        // the service closes the others at once.
        assert_eq!(provision(&mut early, "plant-7.1", &p256_csr()).await.status, 200);
        let during = served(&url, &st, 3).await;
        let held = still_open(&mut conns).await;
        eprintln!(
            "idle flood: 10000 connections opened in {opened:?}, {held} held by the service; a station's slowest device meanwhile {during:?}; VmRSS {rss_before} -> {rss_flood} KiB"
        );
        assert!(held <= 256, "{held} idle connections held");
        // After the handshake timeout every idle connection is gone and new stations connect.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let still = still_open(&mut conns).await;
        assert_eq!(still, 0, "idle connections outlived the handshake timeout");
        drop(conns);
        served(&url, &st, 5).await;
        let refused = metric(&url, &st, "stamp_site_request_errors_total{code=\"too-many-handshakes\"}").await;
        let rss_after = rss_kib(svc.pid());
        eprintln!("idle flood: {refused} connections closed at the handshake cap; VmRSS after {rss_after} KiB");
        assert!(refused >= 5000.0, "{refused}");
        assert!(rss_flood < rss_before + 128 * 1024, "{rss_before} -> {rss_flood} KiB");
    });
    assert_eq!(svc.stop(), Some(0));
    check_consistent(&c, "plant-7.1");
}

#[test]
fn a_1_gb_body_is_refused_without_being_read() {
    let (c, st) = setup(&["--quota", "10"]);
    let svc = Service::start(&c, &[]);
    let url = svc.url.clone();
    rt().block_on(async {
        served(&url, &st, 1).await;
        let rss_before = rss_kib(svc.pid());
        let ep = Endpoint::for_station(&url, &StationIdentity::load(&st).unwrap()).unwrap();
        for chunked in [false, true] {
            let tls = ep.connect_tls().await.unwrap();
            let (mut rd, mut wr) = tokio::io::split(tls);
            let head = if chunked {
                "POST /api/v1/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned()
            } else {
                format!(
                    "POST /api/v1/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    1u64 << 30
                )
            };
            let t = Instant::now();
            wr.write_all(head.as_bytes()).await.unwrap();
            // Send the gigabyte, 64 KiB at a time, until the service stops taking it.
            let writer = tokio::spawn(async move {
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0u64;
                while sent < 1 << 30 {
                    let ok = if chunked {
                        wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_ok()
                            && wr.write_all(&chunk).await.is_ok()
                            && wr.write_all(b"\r\n").await.is_ok()
                    } else {
                        wr.write_all(&chunk).await.is_ok()
                    };
                    if !ok {
                        break;
                    }
                    sent += chunk.len() as u64;
                }
                sent
            });
            let (resp, _) = read_until_closed(&mut rd, Duration::from_secs(30)).await;
            let took = t.elapsed();
            let text = String::from_utf8_lossy(&resp).into_owned();
            drop(rd);
            let sent = tokio::time::timeout(Duration::from_secs(30), writer).await.unwrap().unwrap();
            eprintln!("1 GB body (chunked: {chunked}): answered in {took:?}; {sent} bytes sent before the service stopped reading");
            assert!(text.starts_with("HTTP/1.1 413"), "{text}");
            assert!(text.contains("stamp-error: body-too-large"), "{text}");
            assert!(sent < 64 << 20, "{sent} bytes were taken");
            assert!(took < Duration::from_secs(10), "{took:?}");
        }
        let rss_after = rss_kib(svc.pid());
        eprintln!("1 GB body: VmRSS {rss_before} -> {rss_after} KiB");
        assert!(rss_after < rss_before + 32 * 1024, "{rss_before} -> {rss_after} KiB");
        served(&url, &st, 1).await;
    });
    assert_eq!(svc.stop(), Some(0));
}

#[test]
fn a_station_flooding_renewals_is_refused_while_another_is_served() {
    let (c, st) = setup(&["--quota", "100"]);
    let st2 = add_station(&c, &c.site, "line-2", "st2");
    let svc = Service::start(&c, &["--default-entitlement", "plant-7.1"]);
    let url = svc.url.clone();
    let (flood_total, refused) = rt().block_on(async {
        let mut conn = connect(&url, &st).await;
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let r = provision(&mut conn, "plant-7.1", &csr_der_for(&k, |_| {})).await;
        assert_eq!(r.status, 200);
        let serial = r.json().unwrap()["device_serial"].as_u64().unwrap();
        let serial = serial.to_string();
        let again = csr_der_for(&k, crate::service::device_subject(&serial));
        let rss_before = rss_kib(svc.pid());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut flood = Vec::new();
        for _ in 0..16 {
            let (url, st, again, stop) = (url.clone(), st.clone(), again.clone(), stop.clone());
            flood.push(tokio::spawn(async move {
                let mut conn = connect(&url, &st).await;
                let (mut total, mut refused) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = conn
                        .post_json("/api/v1/renew", &serde_json::json!({ "csr": b64(&again) }))
                        .await
                        .unwrap();
                    total += 1;
                    if r.status == 429 && r.error.as_deref() == Some("renewal-limit") {
                        refused += 1;
                    }
                }
                (total, refused)
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let slowest = served(&url, &st2, 30).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut total, mut refused) = (0, 0);
        for f in flood {
            let (t, r) = f.await.unwrap();
            total += t;
            refused += r;
        }
        let rss_after = rss_kib(svc.pid());
        eprintln!(
            "renewal flood: {total} renewals from 16 connections, {refused} refused renewal-limit; the other station's slowest device {slowest:?}; VmRSS {rss_before} -> {rss_after} KiB"
        );
        assert!(slowest < Duration::from_secs(3), "{slowest:?}");
        assert!(rss_after < rss_before + 64 * 1024, "{rss_before} -> {rss_after} KiB");
        (total, refused)
    });
    // The default limit is 2 renewals per device per day: every other one was refused.
    assert_eq!(refused, flood_total - 2);
    assert!(
        flood_total > 50,
        "the flood was too small to mean anything: {flood_total}"
    );
    assert_eq!(svc.stop(), Some(0));
    assert_eq!(check_consistent(&c, "plant-7.1"), 31);
}

#[test]
fn a_kept_alive_connection_idle_past_the_header_timeout_is_closed() {
    let (c, st) = setup(&["--quota", "10"]);
    let cfg = write(&c.tmp.path().join("serve.toml"), b"header_timeout_secs = 2\n");
    let svc = Service::start(&c, &["--config", s(&cfg)]);
    rt().block_on(async {
        let mut idle = connect(&svc.url, &st).await;
        assert_eq!(provision(&mut idle, "plant-7.1", &p256_csr()).await.status, 200);
        let mut busy = connect(&svc.url, &st).await;
        assert_eq!(provision(&mut busy, "plant-7.1", &p256_csr()).await.status, 200);
        // Within the timeout the connection is reused; idle past it, it is gone.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(provision(&mut busy, "plant-7.1", &p256_csr()).await.status, 200);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let csr = p256_csr();
        let body = serde_json::json!({ "entitlement": "plant-7.1", "csr": b64(&csr) });
        assert!(
            idle.post_json("/api/v1/provision", &body).await.is_err(),
            "the idle connection was closed"
        );
    });
    assert_eq!(svc.stop(), Some(0));
    assert_eq!(check_consistent(&c, "plant-7.1"), 3);
}
