//! The site service through the real binary: `stamp site serve` in a child process, stations
//! talking to it over mutual TLS, EST and the JSON API, bad input, crashes and the simulator.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use base64::Engine as _;
use stamp_station::client::{Connection, Endpoint, Reply, StationIdentity};

// ---- helpers ----------------------------------------------------------------------------------

/// A running `stamp site serve`.
pub(crate) struct Service {
    child: Option<Child>,
    pub(crate) url: String,
    /// The operations listener's address (`/healthz`, `/metrics` over plain HTTP).
    pub(crate) ops: String,
}

impl Service {
    pub(crate) fn start(c: &Ceremony, extra: &[&str]) -> Service {
        let cmd = stamp(&c.pass).env("STAMP_LOG", "warn");
        Service::start_with(cmd, c, extra, Stdio::inherit())
    }

    /// Starts `cmd` (a builder with the passphrase and environment set) as `site serve` for
    /// `c`'s site on free ports, its standard error going to `stderr`.
    pub(crate) fn start_with(cmd: Stamp, c: &Ceremony, extra: &[&str], stderr: Stdio) -> Service {
        let mut cmd = cmd
            .arg("--json")
            .site("serve")
            .dir(&c.site)
            .args(&["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
            .args(extra)
            .command();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("no ready line from serve: {line:?}"));
        Service {
            child: Some(child),
            url: v["url"].as_str().unwrap().to_owned(),
            ops: v["ops"].as_str().unwrap().to_owned(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then wait; returns the exit code.
    pub(crate) fn stop(mut self) -> Option<i32> {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        self.child.take().unwrap().wait().unwrap().code()
    }

    /// SIGKILL, then wait.
    fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let _ = child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Ceremony, an entitlement with `extra` options imported, and station `line-1` in `<tmp>/st1`.
pub(crate) fn setup(extra: &[&str]) -> (Ceremony, PathBuf) {
    let c = ceremony(true);
    entitle(&c, "e1", extra);
    let st = add_station(&c, &c.site, "line-1", "st1");
    (c, st)
}

fn entitle(c: &Ceremony, name: &str, extra: &[&str]) {
    c.entitle(
        name,
        &[&["--device-data", "cloud=mqtts://iot.example:8883"], extra].concat(),
    );
}

pub(crate) fn add_station(c: &Ceremony, site: &Path, name: &str, dir: &str) -> PathBuf {
    let out = c.tmp.path().join(dir);
    let v = stamp(&c.pass)
        .site("add-station")
        .dir(site)
        .args(&["--name", name, "-o", s(&out)])
        .json();
    assert_eq!(v["name"], name);
    out
}

pub(crate) async fn connect(url: &str, station: &Path) -> Connection {
    let id = StationIdentity::load(station).unwrap();
    Endpoint::for_station(url, &id).unwrap().connect().await.unwrap()
}

pub(crate) fn p256_csr() -> Vec<u8> {
    csr_der_with(&rcgen::PKCS_ECDSA_P256_SHA256, |_| {})
}

/// The device's proof of possession: its key `key` signs the renewal from its certificate
/// `current` to the key of `new_csr`.
fn possession_proof(key: &rcgen::KeyPair, current: &[u8], new_csr: &[u8]) -> String {
    use rcgen::SigningKey as _;
    let new_spki = stamp_core::csr::verify(new_csr).unwrap().spki_der().to_vec();
    let msg = stamp_core::device::renewal_message(
        &stamp_core::fingerprint::sha256(current),
        &stamp_core::fingerprint::sha256(&new_spki),
    );
    b64(&key.sign(&msg).unwrap())
}

/// The device serial's subject, as the site issues it (for renewal requests).
pub(crate) fn device_subject(serial: &str) -> impl FnOnce(&mut rcgen::CertificateParams) + '_ {
    move |p: &mut rcgen::CertificateParams| {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Acme Sensors");
        dn.push(rcgen::DnType::OrganizationalUnitName, "acme-sensors");
        dn.push(rcgen::DnType::CommonName, "thermo-2");
        dn.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), serial);
        p.distinguished_name = dn;
    }
}

pub(crate) fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

pub(crate) async fn provision(conn: &mut Connection, entitlement: &str, csr: &[u8]) -> Reply {
    conn.post_json(
        "/api/v1/provision",
        &serde_json::json!({ "entitlement": entitlement, "csr": b64(csr) }),
    )
    .await
    .unwrap()
}

async fn est_enroll(conn: &mut Connection, path: &str, csr: &[u8]) -> Reply {
    conn.send(
        hyper::Method::POST,
        path,
        Some("application/pkcs10"),
        stamp_core::pkcs7::base64_lines(csr).into_bytes(),
    )
    .await
    .unwrap()
}

fn log_events(site: &Path) -> Vec<stamp_core::audit::Event> {
    let db = rusqlite::Connection::open(site.join("stamp-site.db")).unwrap();
    let mut stmt = db.prepare("SELECT entry FROM log_entries ORDER BY idx").unwrap();
    let rows: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.iter()
        .map(|b| stamp_core::audit::Entry::from_cbor(b).unwrap().event)
        .collect()
}

pub(crate) fn refusals(site: &Path) -> Vec<(String, String)> {
    log_events(site)
        .into_iter()
        .filter_map(|e| match e {
            stamp_core::audit::Event::RequestRefused { reason, station, .. } => {
                Some((reason.code().to_owned(), station))
            }
            _ => None,
        })
        .collect()
}

/// (serial, certificate SHA-256) of every device-issued and key-handed-out entry (of one grant).
fn issued_in_log_of(site: &Path, entitlement: Option<&str>) -> BTreeMap<u64, Vec<u8>> {
    log_events(site)
        .into_iter()
        .filter_map(|e| match e {
            stamp_core::audit::Event::DeviceIssued(r) | stamp_core::audit::Event::KeyHandedOut(r)
                if entitlement.is_none_or(|e| e == r.entitlement_id) =>
            {
                Some((r.device_serial, r.certificate_sha256.to_vec()))
            }
            _ => None,
        })
        .collect()
}

pub(crate) fn issued_in_log(site: &Path) -> BTreeMap<u64, Vec<u8>> {
    issued_in_log_of(site, None)
}

fn devices_in_db(site: &Path) -> BTreeMap<u64, Vec<u8>> {
    let db = rusqlite::Connection::open(site.join("stamp-site.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT device_serial, cert_sha256 FROM devices")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The log verifies, and the devices table, the log and the status agree.
pub(crate) fn check_consistent(c: &Ceremony, entitlement: &str) -> usize {
    let log = stamp(&c.pass).site("verify-log").dir(&c.site).json();
    assert_eq!(log["ok"], true);
    assert_eq!(
        devices_in_db(&c.site),
        issued_in_log(&c.site),
        "devices table and log agree"
    );
    let in_log = issued_in_log_of(&c.site, Some(entitlement));
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    let ent = st["entitlements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entitlement_id"] == entitlement)
        .unwrap()
        .clone();
    assert_eq!(ent["issued"].as_u64().unwrap() as usize, in_log.len());
    in_log.len()
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).unwrap();
    path.to_owned()
}

// ---- tests ------------------------------------------------------------------------------------

#[test]
fn stations_provision_over_json_and_est_and_renew() {
    let (c, st) = setup(&[
        "--quota",
        "10",
        "--key-types",
        "p256,ed25519",
        "--renewals",
        "100/day",
    ]);
    entitle(
        &c,
        "hq",
        &["--quota", "2", "--hq-keys", "p256", "--secret", "flash:16"],
    );
    let svc = Service::start(&c, &["--default-entitlement", "plant-7.1"]);
    let root = std::fs::read_to_string(c.root_cert()).unwrap();
    let renewals = rt().block_on(async {
        let mut conn = connect(&svc.url, &st).await;
        // JSON provision: a certificate, the chain up to the root, the device data.
        let k1 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let r = provision(&mut conn, "plant-7.1", &csr_der_for(&k1, |_| {})).await;
        assert_eq!(r.status, 200, "{:?}", r);
        let v = r.json().unwrap();
        assert_eq!(v["entitlement_id"], "plant-7.1");
        assert_eq!(v["device_serial"], 1);
        assert_eq!(v["device_data"]["cloud"], "mqtts://iot.example:8883");
        assert_eq!(v["chain"].as_array().unwrap().len(), 2);
        assert_eq!(v["chain"][1].as_str().unwrap(), root);
        let cert_pem = c.tmp.path().join("d1.pem");
        std::fs::write(&cert_pem, v["certificate"].as_str().unwrap()).unwrap();
        let chain = write(
            &c.tmp.path().join("chain.pem"),
            v["chain"][0].as_str().unwrap().as_bytes(),
        );
        let o = openssl(&[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&c.root_cert()),
            "-untrusted",
            s(&chain),
            s(&cert_pem),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // A PEM CSR works too; no entitlement given: the default.
        let pem_csr = stamp_core::ceremony::pem("CERTIFICATE REQUEST", &p256_csr());
        let r = conn
            .post_json("/api/v1/provision", &serde_json::json!({ "csr": pem_csr }))
            .await
            .unwrap();
        assert_eq!(r.json().unwrap()["device_serial"], 2);
        // EST: label and default; certs-only PKCS#7 with the new certificate.
        for path in [
            "/.well-known/est/plant-7.1/simpleenroll",
            "/.well-known/est/simpleenroll",
        ] {
            let r = est_enroll(&mut conn, path, &csr_der_with(&rcgen::PKCS_ED25519, |_| {})).await;
            assert_eq!(r.status, 200, "{path}: {r:?}");
            assert_eq!(r.content_type, "application/pkcs7-mime; smime-type=certs-only");
            let der = stamp_core::pkcs7::base64_decode(&r.body, 1 << 20).unwrap();
            assert_eq!(stamp_core::pkcs7::read_certs_only(&der).unwrap().len(), 1);
        }
        // cacerts: issuing CA and root; csrattrs: the allowed algorithms.
        let r = conn.get("/.well-known/est/cacerts").await.unwrap();
        let der = stamp_core::pkcs7::base64_decode(&r.body, 1 << 20).unwrap();
        assert_eq!(stamp_core::pkcs7::read_certs_only(&der).unwrap().len(), 2);
        let r = conn.get("/.well-known/est/plant-7.1/csrattrs").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "application/csrattrs");
        // Renewal: the same subject as a certificate this site issued; not counted against quota.
        // Keeping its key, the device's request is its own proof of possession.
        let issued = stamp_core::cert::from_pem(v["certificate"].as_str().unwrap(), "CERTIFICATE").unwrap();
        let same_key = csr_der_for(&k1, device_subject("1"));
        // Check the subject we built matches what the site issued (else the test is wrong).
        let parsed = stamp_core::csr::verify(&same_key).unwrap();
        assert!(
            stamp_core::device::subject_matches(&issued, parsed.subject_der()),
            "{}",
            stamp_core::cert::parse(&issued).unwrap().subject()
        );
        let r = est_enroll(&mut conn, "/.well-known/est/simplereenroll", &same_key).await;
        assert_eq!(r.status, 200, "{r:?}");
        let der = stamp_core::pkcs7::base64_decode(&r.body, 1 << 20).unwrap();
        let renewed = stamp_core::pkcs7::read_certs_only(&der).unwrap().remove(0);
        let r = est_enroll(
            &mut conn,
            "/.well-known/est/simplereenroll",
            &csr_der_with(&rcgen::PKCS_ECDSA_P256_SHA256, device_subject("9")),
        )
        .await;
        assert_eq!((r.status, r.error.as_deref()), (404, Some("unknown-device")));
        // A new key: a station alone (no proof, or a proof by the old certificate) cannot renew.
        let k2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let renew_csr = csr_der_for(&k2, device_subject("1"));
        for body in [
            serde_json::json!({ "csr": b64(&renew_csr) }),
            serde_json::json!({ "csr": b64(&renew_csr), "proof": possession_proof(&k1, &issued, &renew_csr) }),
            serde_json::json!({ "csr": b64(&renew_csr), "proof": "not base64!" }),
        ] {
            let r = conn.post_json("/api/v1/renew", &body).await.unwrap();
            assert_eq!((r.status, r.error.as_deref()), (403, Some("possession-not-proven")), "{body}");
        }
        // The device signs for its new key with its current one (the renewed certificate's).
        let r = conn
            .post_json(
                "/api/v1/renew",
                &serde_json::json!({ "csr": b64(&renew_csr), "proof": possession_proof(&k1, &renewed, &renew_csr) }),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        // The old key cannot come back: its certificate is superseded.
        let r = conn
            .post_json("/api/v1/renew", &serde_json::json!({ "csr": b64(&same_key) }))
            .await
            .unwrap();
        assert_eq!((r.status, r.error.as_deref()), (403, Some("possession-not-proven")));
        // HQ revokes device 1; once the site imports the update (the service reloads within
        // seconds), its renewals are refused and logged as such.
        let update = c.tmp.path().join("revoke-1.cose");
        stamp(&c.pass).hq("revoke-device").dir(&c.hq).args(&["--serial", "1", "--reason", "stolen"]).args(&["--site-update", s(&update)]).json();
        stamp(&c.pass).site("import").dir(&c.site).arg(&update).json();
        let (mut refused, mut renewed_meanwhile) = (None, 0);
        for _ in 0..60 {
            let r = conn
                .post_json("/api/v1/renew", &serde_json::json!({ "csr": b64(&renew_csr) }))
                .await
                .unwrap();
            if r.status != 200 {
                refused = Some(r);
                break;
            }
            renewed_meanwhile += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = refused.expect("renewals of the revoked device never stopped");
        assert_eq!(
            (r.status, r.error.as_deref()),
            (403, Some("device-revoked")),
            "{r:?}"
        );
        let renewals = 2 + renewed_meanwhile;
        // Hand-out of an HQ-generated key with its secrets.
        let r = conn
            .post_json(
                "/api/v1/hand-out",
                &serde_json::json!({ "entitlement": "plant-7.2" }),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let h = r.json().unwrap();
        assert!(h["private_key"].as_str().unwrap().contains("BEGIN PRIVATE KEY"));
        assert_eq!(h["secrets"]["flash"].as_str().unwrap().len(), 32);
        // Status and metrics.
        let st = conn.get("/api/v1/status").await.unwrap().json().unwrap();
        assert_eq!(st["station"], "line-1");
        assert_eq!(st["entitlements"][0]["issued"], 4, "renewals are not counted");
        let m = String::from_utf8(conn.get("/metrics").await.unwrap().body.to_vec()).unwrap();
        assert!(m.contains("stamp_site_issued_total{kind=\"device\"} 4"), "{m}");
        assert!(
            m.contains(&format!("stamp_site_issued_total{{kind=\"renewal\"}} {renewals}")),
            "{m}"
        );
        assert!(
            m.contains("stamp_site_refused_total{reason=\"device-revoked\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("stamp_site_refused_total{reason=\"possession-not-proven\"} 4"),
            "{m}"
        );
        assert!(
            m.contains("stamp_site_refused_total{reason=\"unknown-device\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("stamp_site_quota_remaining{entitlement=\"plant-7.1\"} 6"),
            "{m}"
        );
        assert!(m.contains("stamp_site_provision_seconds_count"), "{m}");
        assert_eq!(conn.get("/healthz").await.unwrap().status, 200);
        renewals
    });
    assert_eq!(svc.stop(), Some(0));
    let renewed = log_events(&c.site)
        .iter()
        .filter(|e| matches!(e, stamp_core::audit::Event::DeviceRenewed(r) if r.device_serial == 1 && r.station == "line-1"))
        .count();
    assert_eq!(renewed, renewals);
    assert_eq!(check_consistent(&c, "plant-7.1"), 4);
    // HQ accepts every renewal the site made (proofs checked again) and keeps one live
    // certificate for device 1.
    let bundle = c.tmp.path().join("audit.bundle");
    stamp(&c.pass)
        .site("export-audit")
        .dir(&c.site)
        .args(&["-o", s(&bundle)])
        .json();
    let r = stamp(&c.pass).hq("reconcile").dir(&c.hq).arg(&bundle).json();
    assert_eq!(r["ok"], true, "{r:#}");
    let d = stamp(&c.pass).hq("devices").dir(&c.hq).json();
    let live: Vec<&serde_json::Value> = d["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["device_serial"] == 1 && x["superseded"] == false)
        .collect();
    assert_eq!(live.len(), 1, "{d:#}");
}

#[test]
fn renewals_are_limited_per_device() {
    let (c, st) = setup(&["--quota", "2"]);
    let svc = Service::start(&c, &["--default-entitlement", "plant-7.1"]);
    rt().block_on(async {
        let mut conn = connect(&svc.url, &st).await;
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(
            provision(&mut conn, "plant-7.1", &csr_der_for(&k, |_| {}))
                .await
                .status,
            200
        );
        let again = csr_der_for(&k, device_subject("1"));
        // The default limit: two renewals per device per day.
        for want in [(200, None), (200, None), (429, Some("renewal-limit"))] {
            let r = conn
                .post_json("/api/v1/renew", &serde_json::json!({ "csr": b64(&again) }))
                .await
                .unwrap();
            assert_eq!((r.status, r.error.as_deref()), want, "{r:?}");
        }
    });
    assert_eq!(svc.stop(), Some(0));
    assert!(
        refusals(&c.site).iter().any(|(r, _)| r == "renewal-limit"),
        "{:?}",
        refusals(&c.site)
    );
}

#[test]
fn interop_curl_and_openssl_enroll_over_est() {
    let (c, st) = setup(&["--quota", "5"]);
    let svc = Service::start(&c, &[]);
    let t = c.tmp.path();
    let o = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&t.join("dev.key")),
        "-subj",
        "/CN=made by openssl",
        "-outform",
        "DER",
        "-out",
        s(&t.join("dev.der")),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(openssl(&[
        "base64",
        "-in",
        s(&t.join("dev.der")),
        "-out",
        s(&t.join("dev.b64"))
    ])
    .status
    .success());
    let curl = |path: &str, out: &Path, data: Option<&Path>| {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--fail", "--cert"])
            .arg(st.join("station.crt"))
            .arg("--key")
            .arg(st.join("station.key"))
            .arg("--cacert")
            .arg(st.join("ca.pem"))
            .arg("-o")
            .arg(out);
        if let Some(d) = data {
            cmd.args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
                .arg(format!("@{}", d.display()));
        }
        let o = cmd
            .arg(format!("{}{path}", svc.url))
            .output()
            .unwrap_or_else(|e| {
                panic!("curl is required by this test ({e}); run scripts/test, which installs it")
            });
        assert!(
            o.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    curl(
        "/.well-known/est/plant-7.1/simpleenroll",
        &t.join("resp.b64"),
        Some(&t.join("dev.b64")),
    );
    curl("/.well-known/est/cacerts", &t.join("ca.b64"), None);
    // base64 PKCS#7 certs-only out: openssl decodes it, prints the certificates, verifies.
    for (b64file, p7, pem) in [("resp.b64", "resp.p7", "dev.crt"), ("ca.b64", "ca.p7", "cas.pem")] {
        let o = openssl(&["base64", "-d", "-in", s(&t.join(b64file)), "-out", s(&t.join(p7))]);
        assert!(o.status.success());
        let o = openssl(&[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            s(&t.join(p7)),
            "-print_certs",
            "-out",
            s(&t.join(pem)),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-CAfile",
        s(&st.join("ca.pem")),
        "-untrusted",
        s(&t.join("cas.pem")),
        s(&t.join("dev.crt")),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The certificate is for openssl's key, and names the product, not what the CSR asked.
    let text = String::from_utf8(openssl(&["x509", "-in", s(&t.join("dev.crt")), "-noout", "-text"]).stdout)
        .unwrap();
    assert!(
        text.contains("thermo-2") && !text.contains("made by openssl"),
        "{text}"
    );
    let key_pub = openssl(&["pkey", "-in", s(&t.join("dev.key")), "-pubout"]).stdout;
    let cert_pub = openssl(&["x509", "-in", s(&t.join("dev.crt")), "-noout", "-pubkey"]).stdout;
    assert_eq!(key_pub, cert_pub);
    assert_eq!(svc.stop(), Some(0));
    assert_eq!(check_consistent(&c, "plant-7.1"), 1);
}

#[test]
fn only_active_stations_of_this_site_are_served() {
    let (c, st) = setup(&["--quota", "20"]);
    let st2 = add_station(&c, &c.site, "line-2", "st2");
    // A second site under the same HQ and root, with its own station.
    let site8 = c.tmp.path().join("site8");
    let req8 = c.tmp.path().join("req8.json");
    let creds8 = c.tmp.path().join("creds8.json");
    let init8 = stamp(&c.pass)
        .site("init")
        .dir(&site8)
        .args(&["--site-id", "plant-8", "-o", s(&req8)])
        .json();
    stamp(&c.pass)
        .hq("enroll-site")
        .dir(&c.hq)
        .arg(&req8)
        .args(&["-o", s(&creds8)])
        .args(&["--fingerprint", init8["request_fingerprint"].as_str().unwrap()])
        .json();
    stamp(&c.pass)
        .site("install")
        .dir(&site8)
        .arg(&creds8)
        .args(&["--root-fingerprint", &c.root_fingerprint()])
        .json();
    let foreign = add_station(&c, &site8, "line-1", "st-foreign");
    let svc = Service::start(&c, &[]);
    let root = std::fs::read(st.join("ca.pem")).unwrap();
    let root = stamp_core::cert::from_pem(std::str::from_utf8(&root).unwrap(), "CERTIFICATE").unwrap();
    rt().block_on(async {
        // No client certificate: the handshake is refused, no request gets through.
        let anon = Endpoint::new(&svc.url, &root, None).unwrap();
        let r = match anon.connect().await {
            Ok(mut conn) => conn.get("/healthz").await.map(|r| r.status),
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "no client certificate was served: {r:?}");
        // Another site's station (same root, other issuing CA): refused at the handshake.
        let id = StationIdentity::load(&foreign).unwrap();
        let r = match Endpoint::for_station(&svc.url, &id).unwrap().connect().await {
            Ok(mut conn) => conn.get("/healthz").await.map(|r| r.status),
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "a station of another site was served: {r:?}");
        // A device certificate of this site (right CA, not a station): TLS yes, service no.
        let mut conn = connect(&svc.url, &st).await;
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, "d");
        let csr = p.serialize_request(&key).unwrap().der().to_vec();
        let v = provision(&mut conn, "plant-7.1", &csr).await.json().unwrap();
        let dev_dir = c.tmp.path().join("as-device");
        std::fs::create_dir_all(&dev_dir).unwrap();
        let dev = StationIdentity {
            chain: vec![
                stamp_core::cert::from_pem(v["certificate"].as_str().unwrap(), "CERTIFICATE").unwrap(),
            ],
            key_pkcs8: zeroize::Zeroizing::new(key.serialize_der()),
            root: root.clone(),
        };
        let mut as_device = Endpoint::for_station(&svc.url, &dev)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let r = provision(&mut as_device, "plant-7.1", &p256_csr()).await;
        assert_eq!((r.status, r.error.as_deref()), (403, Some("not-a-station")));
        let r = as_device.get("/api/v1/status").await.unwrap();
        assert_eq!(r.status, 403);
        // Revoke line-2 while the service runs: its next request is refused.
        let mut conn2 = connect(&svc.url, &st2).await;
        assert_eq!(provision(&mut conn2, "plant-7.1", &p256_csr()).await.status, 200);
        stamp(&c.pass)
            .site("revoke-station")
            .dir(&c.site)
            .args(&["--name", "line-2"])
            .json();
        let r = provision(&mut conn2, "plant-7.1", &p256_csr()).await;
        assert_eq!((r.status, r.error.as_deref()), (403, Some("station-revoked")));
        let r = est_enroll(&mut conn2, "/.well-known/est/plant-7.1/simpleenroll", &p256_csr()).await;
        assert_eq!((r.status, r.error.as_deref()), (403, Some("station-revoked")));
        assert!(r.content_type.starts_with("text/plain"));
        assert_eq!(
            connect(&svc.url, &st2)
                .await
                .get("/metrics")
                .await
                .unwrap()
                .status,
            403
        );
        // line-1 is unaffected.
        assert_eq!(provision(&mut conn, "plant-7.1", &p256_csr()).await.status, 200);
    });
    assert_eq!(svc.stop(), Some(0));
    let r = refusals(&c.site);
    assert!(r.contains(&("not-a-station".into(), "thermo-2".into())), "{r:?}");
    assert_eq!(
        r.iter()
            .filter(|(code, st)| code == "station-revoked" && st == "line-2")
            .count(),
        3
    );
    // The audit log records who could ask for devices: both stations added, line-2 revoked.
    let stations: Vec<String> = log_events(&c.site)
        .iter()
        .filter_map(|e| match e {
            stamp_core::audit::Event::StationAdded { station, .. } => Some(format!("+{station}")),
            stamp_core::audit::Event::StationRevoked { station } => Some(format!("-{station}")),
            _ => None,
        })
        .collect();
    assert_eq!(stations, ["+line-1", "+line-2", "-line-2"]);
    // Station names are never reused; the list shows the revocation.
    let l = stamp(&c.pass).site("stations").dir(&c.site).json();
    assert_eq!(l["stations"][1]["name"], "line-2");
    assert!(l["stations"][1]["revoked_ms"].is_i64());
    stamp(&c.pass)
        .site("add-station")
        .dir(&c.site)
        .args(&["--name", "line-2", "-o", s(&c.tmp.path().join("x"))])
        .fails_with("station-exists");
    stamp(&c.pass)
        .site("add-station")
        .dir(&c.site)
        .args(&["--name", "Line 3", "-o", s(&c.tmp.path().join("y"))])
        .fails("invalid station name");
    check_consistent(&c, "plant-7.1");
}

#[test]
fn station_files_are_what_a_station_needs() {
    use std::os::unix::fs::PermissionsExt;
    let (c, st) = setup(&["--quota", "1"]);
    let mode = |f: &str| std::fs::metadata(st.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("station.key"), 0o600);
    let text =
        String::from_utf8(openssl(&["x509", "-in", s(&st.join("station.crt")), "-noout", "-text"]).stdout)
            .unwrap();
    assert!(
        text.contains("CN = line-1") && text.contains("OU = site plant-7"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    let o = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-CAfile",
        s(&st.join("ca.pem")),
        "-untrusted",
        s(&c.site.join("certs/site-issuing-ca.pem")),
        s(&st.join("station.crt")),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The key matches the certificate.
    let a = openssl(&["pkey", "-in", s(&st.join("station.key")), "-pubout"]).stdout;
    let b = openssl(&["x509", "-in", s(&st.join("station.crt")), "-noout", "-pubkey"]).stdout;
    assert_eq!(a, b);
    // A directory that already holds a station key is refused before anything changes.
    stamp(&c.pass)
        .site("add-station")
        .dir(&c.site)
        .args(&["--name", "line-9", "-o", s(&st)])
        .fails("station.key already exists");
    stamp(&c.pass)
        .site("revoke-station")
        .dir(&c.site)
        .args(&["--name", "nope"])
        .fails_with("unknown-station");
}

#[test]
fn bad_requests_are_refused_with_stable_codes() {
    let (c, st) = setup(&["--quota", "10", "--key-types", "p256"]);
    let svc = Service::start(&c, &[]);
    let t = c.tmp.path();
    let rsa1024 = {
        let o = openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            s(&t.join("r.key")),
            "-subj",
            "/CN=x",
            "-outform",
            "DER",
            "-out",
            s(&t.join("r.der")),
        ]);
        assert!(o.status.success());
        std::fs::read(t.join("r.der")).unwrap()
    };
    rt().block_on(async {
        let mut conn = connect(&svc.url, &st).await;
        let post = |body: Vec<u8>, ct: &'static str| (body, ct);
        let mut bad_sig = p256_csr();
        let n = bad_sig.len();
        bad_sig[n - 3] ^= 1;
        let cert_as_csr = stamp_core::cert::from_pem(
            &std::fs::read_to_string(st.join("station.crt")).unwrap(),
            "CERTIFICATE",
        )
        .unwrap();
        let cases: Vec<(&str, (Vec<u8>, &str), u16, &str)> = vec![
            ("not json", post(b"{\"csr\": ".to_vec(), "application/json"), 400, "bad-request"),
            ("unknown field", post(br#"{"csr":"x","evil":1}"#.to_vec(), "application/json"), 400, "bad-request"),
            ("oversized", post(vec![b' '; 70 * 1024], "application/json"), 413, "body-too-large"),
            (
                "certificate, not CSR",
                post(serde_json::to_vec(&serde_json::json!({"entitlement": "plant-7.1", "csr": b64(&cert_as_csr)})).unwrap(), "application/json"),
                422,
                "malformed-csr",
            ),
            (
                "not base64",
                post(br#"{"entitlement":"plant-7.1","csr":"%%%"}"#.to_vec(), "application/json"),
                422,
                "malformed-csr",
            ),
            (
                "bad signature",
                post(serde_json::to_vec(&serde_json::json!({"entitlement": "plant-7.1", "csr": b64(&bad_sig)})).unwrap(), "application/json"),
                422,
                "bad-csr-signature",
            ),
            (
                "weak key",
                post(serde_json::to_vec(&serde_json::json!({"entitlement": "plant-7.1", "csr": b64(&rsa1024)})).unwrap(), "application/json"),
                422,
                "weak-key",
            ),
            (
                "key type",
                post(
                    serde_json::to_vec(&serde_json::json!({"entitlement": "plant-7.1", "csr": b64(&csr_der_with(&rcgen::PKCS_ECDSA_P384_SHA384, |_| {}))})).unwrap(),
                    "application/json",
                ),
                422,
                "key-type-not-allowed",
            ),
            (
                "unknown entitlement",
                post(serde_json::to_vec(&serde_json::json!({"entitlement": "nope.1", "csr": b64(&p256_csr())})).unwrap(), "application/json"),
                404,
                "unknown-entitlement",
            ),
        ];
        for (name, (body, ct), status, code) in cases {
            let mut conn = connect(&svc.url, &st).await;
            let r = conn.send(hyper::Method::POST, "/api/v1/provision", Some(ct), body).await.unwrap();
            assert_eq!((r.status, r.error.as_deref()), (status, Some(code)), "{name}: {r:?}");
            assert_eq!(r.json().unwrap()["error"], code, "{name}");
        }
        // A duplicate key.
        let csr = p256_csr();
        assert_eq!(provision(&mut conn, "plant-7.1", &csr).await.status, 200);
        let r = provision(&mut conn, "plant-7.1", &csr).await;
        assert_eq!((r.status, r.error.as_deref()), (409, Some("duplicate-key")));
        // EST: wrong media type, garbage body, oversized body, no default entitlement.
        let est = "/.well-known/est/plant-7.1/simpleenroll";
        let r = conn.send(hyper::Method::POST, est, Some("application/json"), b64(&p256_csr()).into_bytes()).await.unwrap();
        assert_eq!((r.status, r.error.as_deref()), (415, Some("unsupported-media-type")));
        let r = conn.send(hyper::Method::POST, est, Some("application/pkcs10"), b"garbage!".to_vec()).await.unwrap();
        assert_eq!((r.status, r.error.as_deref()), (422, Some("malformed-csr")));
        let r = conn.send(hyper::Method::POST, est, Some("application/pkcs10"), vec![b'A'; 200_000]).await.unwrap();
        assert_eq!((r.status, r.error.as_deref()), (413, Some("body-too-large")));
        let r = est_enroll(&mut conn, "/.well-known/est/simpleenroll", &p256_csr()).await;
        assert_eq!((r.status, r.error.as_deref()), (404, Some("unknown-entitlement")));
        let r = conn.get("/api/v1/nothing").await.unwrap();
        assert_eq!((r.status, r.error.as_deref()), (404, Some("not-found")));
        // An oversized body without a length (chunked) is cut off at the limit, too.
        // After all that, the same connection still provisions.
        assert_eq!(provision(&mut conn, "plant-7.1", &p256_csr()).await.status, 200);
    });
    assert_eq!(svc.stop(), Some(0));
    let codes: Vec<String> = refusals(&c.site).into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        codes,
        vec![
            "malformed-csr",
            "malformed-csr",
            "bad-csr-signature",
            "weak-key",
            "key-type-not-allowed",
            "unknown-entitlement",
            "duplicate-key",
            "malformed-csr",
            "unknown-entitlement"
        ],
        "every policy refusal is logged; malformed HTTP is not a provisioning request"
    );
    assert_eq!(check_consistent(&c, "plant-7.1"), 2);
}

#[test]
fn quota_window_and_rate_are_enforced_over_the_network() {
    let (c, st) = setup(&["--quota", "2"]);
    let tomorrow = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .date()
        .to_string();
    entitle(&c, "later", &["--quota", "5", "--not-before", &tomorrow]);
    entitle(&c, "slow", &["--quota", "5", "--rate", "2/minute"]);
    let svc = Service::start(&c, &[]);
    rt().block_on(async {
        let mut conn = connect(&svc.url, &st).await;
        for _ in 0..2 {
            assert_eq!(provision(&mut conn, "plant-7.1", &p256_csr()).await.status, 200);
        }
        let r = provision(&mut conn, "plant-7.1", &p256_csr()).await;
        assert_eq!((r.status, r.error.as_deref()), (403, Some("quota-exhausted")));
        let r = est_enroll(&mut conn, "/.well-known/est/plant-7.1/simpleenroll", &p256_csr()).await;
        assert_eq!((r.status, r.error.as_deref()), (403, Some("quota-exhausted")));
        let r = provision(&mut conn, "plant-7.2", &p256_csr()).await;
        assert_eq!((r.status, r.error.as_deref()), (403, Some("outside-window")));
        for _ in 0..2 {
            assert_eq!(provision(&mut conn, "plant-7.3", &p256_csr()).await.status, 200);
        }
        let r = provision(&mut conn, "plant-7.3", &p256_csr()).await;
        assert_eq!((r.status, r.error.as_deref()), (429, Some("rate-exceeded")));
        let st = conn.get("/api/v1/status").await.unwrap().json().unwrap();
        assert_eq!(st["entitlements"][0]["remaining"], 0);
    });
    assert_eq!(svc.stop(), Some(0));
    assert_eq!(check_consistent(&c, "plant-7.1"), 2);
    assert_eq!(check_consistent(&c, "plant-7.3"), 2);
}

#[test]
fn a_flood_at_the_last_units_of_quota_never_over_issues() {
    let (c, st) = setup(&["--quota", "25"]);
    let svc = Service::start(&c, &[]);
    let statuses: Arc<Mutex<Vec<(u16, Option<String>, Option<u64>)>>> = Arc::default();
    rt().block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..24 {
            let (url, st, statuses) = (svc.url.clone(), st.clone(), statuses.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = connect(&url, &st).await;
                for _ in 0..5 {
                    let r = provision(&mut conn, "plant-7.1", &p256_csr()).await;
                    let serial = r.json().ok().and_then(|v| v["device_serial"].as_u64());
                    statuses.lock().unwrap().push((r.status, r.error.clone(), serial));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let statuses = statuses.lock().unwrap().clone();
    assert_eq!(statuses.len(), 120);
    let ok: Vec<u64> = statuses
        .iter()
        .filter(|s| s.0 == 200)
        .map(|s| s.2.unwrap())
        .collect();
    assert_eq!(ok.len(), 25, "exactly the quota");
    assert_eq!(ok.iter().collect::<HashSet<_>>().len(), 25, "unique serials");
    assert!(ok.iter().all(|s| (1..=25).contains(s)));
    assert!(statuses
        .iter()
        .filter(|s| s.0 != 200)
        .all(|s| s.0 == 403 && s.1.as_deref() == Some("quota-exhausted")));
    assert_eq!(svc.stop(), Some(0));
    assert_eq!(check_consistent(&c, "plant-7.1"), 25);
    assert_eq!(refusals(&c.site).len(), 95);
}

#[test]
fn clients_dropping_mid_request_leave_every_issuance_logged_or_not_done() {
    let (c, st) = setup(&["--quota", "1000"]);
    let svc = Service::start(&c, &[]);
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    rt().block_on(async {
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let (url, st, acked) = (svc.url.clone(), st.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..12u64 {
                    let mut conn = connect(&url, &st).await;
                    // Give up after 0-5 ms: the connection is dropped with the request in flight.
                    let wait = Duration::from_micros((w * 7 + i * 13) % 6000);
                    let csr = p256_csr();
                    match tokio::time::timeout(wait, provision(&mut conn, "plant-7.1", &csr)).await {
                        Ok(r) if r.status == 200 => acked
                            .lock()
                            .unwrap()
                            .push(r.json().unwrap()["device_serial"].as_u64().unwrap()),
                        Ok(r) => panic!("{r:?}"),
                        Err(_) => drop(conn),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // The service is still healthy.
        let mut conn = connect(&svc.url, &st).await;
        assert_eq!(provision(&mut conn, "plant-7.1", &p256_csr()).await.status, 200);
    });
    assert_eq!(svc.stop(), Some(0), "graceful stop after abandoned requests");
    let n = check_consistent(&c, "plant-7.1");
    let in_log = issued_in_log(&c.site);
    for s in acked.lock().unwrap().iter() {
        assert!(in_log.contains_key(s), "acknowledged serial {s} is logged");
    }
    assert!(
        n > acked.lock().unwrap().len(),
        "the last request and abandoned ones that were issued are logged"
    );
}

/// Runs provisioning load from `workers` connections until the service goes away; returns every
/// acknowledged (serial, certificate SHA-256).
pub(crate) fn load_until_gone(
    url: &str,
    st: &Path,
    workers: usize,
) -> (
    std::thread::JoinHandle<Vec<(u64, Vec<u8>)>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (url, st, count2) = (url.to_owned(), st.to_owned(), count.clone());
    let h = std::thread::spawn(move || {
        rt().block_on(async move {
            let acked: Arc<Mutex<Vec<(u64, Vec<u8>)>>> = Arc::default();
            let mut tasks = Vec::new();
            for _ in 0..workers {
                let (url, st, acked, count) = (url.clone(), st.clone(), acked.clone(), count2.clone());
                tasks.push(tokio::spawn(async move {
                    let Ok(mut conn) = Endpoint::for_station(&url, &StationIdentity::load(&st).unwrap())
                        .unwrap()
                        .connect()
                        .await
                    else {
                        return;
                    };
                    for _ in 0..10_000 {
                        let csr = p256_csr();
                        let body = serde_json::json!({ "entitlement": "plant-7.1", "csr": b64(&csr) });
                        match conn.post_json("/api/v1/provision", &body).await {
                            Ok(r) if r.status == 200 => {
                                let v = r.json().unwrap();
                                let der = stamp_core::cert::from_pem(
                                    v["certificate"].as_str().unwrap(),
                                    "CERTIFICATE",
                                )
                                .unwrap();
                                acked.lock().unwrap().push((
                                    v["device_serial"].as_u64().unwrap(),
                                    stamp_core::fingerprint::sha256(&der).to_vec(),
                                ));
                                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            _ => return,
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            let v = acked.lock().unwrap().clone();
            v
        })
    });
    (h, count)
}

pub(crate) fn wait_for(count: &std::sync::atomic::AtomicUsize, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(std::time::Instant::now() < deadline, "load did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigkill_under_load_loses_nothing_acknowledged_and_sigterm_drains() {
    let (c, st) = setup(&["--quota", "100000"]);
    // SIGKILL while 8 stations provision as fast as they can.
    let svc = Service::start(&c, &[]);
    let (load, count) = load_until_gone(&svc.url, &st, 8);
    wait_for(&count, 60);
    svc.kill();
    let acked = load.join().unwrap();
    assert!(acked.len() >= 60);
    let in_log = issued_in_log(&c.site);
    for (serial, sha) in &acked {
        assert_eq!(
            in_log.get(serial),
            Some(sha),
            "acknowledged device {serial} is in the log"
        );
    }
    check_consistent(&c, "plant-7.1");
    // Restarted, it goes on where the log ends (no serial handed out twice).
    let svc = Service::start(&c, &[]);
    let (load, count) = load_until_gone(&svc.url, &st, 8);
    wait_for(&count, 40);
    // SIGTERM under load: stops cleanly, and everything acknowledged is logged.
    assert_eq!(svc.stop(), Some(0));
    let acked2 = load.join().unwrap();
    let in_log = issued_in_log(&c.site);
    for (serial, sha) in acked.iter().chain(&acked2) {
        assert_eq!(
            in_log.get(serial),
            Some(sha),
            "acknowledged device {serial} is in the log"
        );
    }
    let first: HashSet<u64> = acked.iter().map(|a| a.0).collect();
    assert!(acked2.iter().all(|a| !first.contains(&a.0)));
    check_consistent(&c, "plant-7.1");
}

#[test]
fn the_simulator_provisions_thousands_over_est_and_json() {
    // 2000 devices in all (1000 per protocol) over mutual TLS.
    let (c, st) = setup(&["--quota", "2100", "--key-types", "p256,ed25519,p384"]);
    let svc = Service::start(&c, &["--default-entitlement", "plant-7.1"]);
    let mut total = 0;
    for (protocol, key, n) in [
        ("est", "p256", "1000"),
        ("json", "ed25519", "1000"),
        ("est", "p384", "20"),
    ] {
        let out = c.tmp.path().join(format!("devices-{protocol}-{key}"));
        let v = stamp(&c.pass)
            .device("simulate")
            .args(&["--server", &svc.url, "--station-dir", s(&st), "--count", n])
            .args(&["--concurrency", "16", "--protocol", protocol, "--key-type", key])
            .args(&["-o", s(&out)])
            .json();
        let n: u64 = n.parse().unwrap();
        assert_eq!(v["provisioned"], n, "{v}");
        assert!(v["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
        assert!(v["devices_per_second"].as_f64().unwrap() > 0.0);
        assert_eq!(std::fs::read_dir(&out).unwrap().count() as u64, n);
        total += n;
        // One device's stamp, checked by openssl.
        let one = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
        let stamp: serde_json::Value =
            serde_json::from_slice(&std::fs::read(one.join("stamp.json")).unwrap()).unwrap();
        assert_eq!(stamp["device_data"]["cloud"], "mqtts://iot.example:8883");
        assert_eq!(stamp["entitlement_id"], "plant-7.1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(one.join("device.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let o = openssl(&[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&c.root_cert()),
            "-untrusted",
            s(&one.join("chain.pem")),
            s(&one.join("device.crt")),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Over quota: the simulator reports the refusals and fails.
    let o = stamp(&c.pass)
        .arg("--json")
        .device("simulate")
        .args(&["--server", &svc.url, "--station-dir", s(&st), "--count", "100"])
        .args(&["--protocol", "json", "-o", s(&c.tmp.path().join("over"))])
        .output();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["provisioned"], 2100 - total);
    assert_eq!(v["refused"]["quota-exhausted"], 100 - (2100 - total));
    assert_eq!(svc.stop(), Some(0));
    assert_eq!(check_consistent(&c, "plant-7.1"), 2100);
}

#[test]
fn configuration_is_printed_checked_and_applied() {
    let o = stamp_bare().site("serve").arg("--print-config").output();
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        stamp_service::Config::parse(&text).unwrap(),
        stamp_service::Config::default()
    );
    let (c, st) = setup(&["--quota", "3"]);
    let bad = write(&c.tmp.path().join("bad.toml"), b"max_body_bytes = \"big\"\n");
    stamp(&c.pass)
        .site("serve")
        .dir(&c.site)
        .args(&["--config", s(&bad)])
        .fails("invalid configuration");
    let unknown = write(&c.tmp.path().join("unknown.toml"), b"lisen = \"127.0.0.1:1\"\n");
    stamp(&c.pass)
        .site("serve")
        .dir(&c.site)
        .args(&["--config", s(&unknown)])
        .fails("unknown field");
    // A config with a default entitlement, a small body limit and a name list.
    let good = write(
        &c.tmp.path().join("good.toml"),
        b"default_entitlement = \"plant-7.1\"\nmax_body_bytes = 2048\nserver_names = [\"127.0.0.1\", \"site.example\"]\nlog_format = \"json\"\n",
    );
    let served = c.tmp.path().join("served.pem");
    let svc = Service::start(&c, &["--config", s(&good), "--write-cert", s(&served)]);
    rt().block_on(async {
        let mut conn = connect(&svc.url, &st).await;
        let r = est_enroll(&mut conn, "/.well-known/est/simpleenroll", &p256_csr()).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = conn
            .send(
                hyper::Method::POST,
                "/api/v1/provision",
                Some("application/json"),
                vec![b' '; 4096],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 413);
    });
    // The service's certificate names what the configuration says, and nothing else.
    assert_eq!(
        sans(&served),
        vec!["ip 127.0.0.1".to_owned(), "dns site.example".to_owned()]
    );
    // A station reaching it as localhost checks it for the loopback address it reached.
    localhost_connects(&svc, &st);
    assert_eq!(svc.stop(), Some(0));

    // The default names: `localhost` stands for the loopback addresses; no single-label dNSName
    // (pkilint: pkix.invalid_domain_name_syntax) is in the certificate, and stations reaching
    // the service as localhost or 127.0.0.1 both connect.
    let served = c.tmp.path().join("served-default.pem");
    let svc = Service::start(&c, &["--write-cert", s(&served)]);
    assert_eq!(
        sans(&served),
        vec!["ip 127.0.0.1".to_owned(), "ip ::1".to_owned()]
    );
    localhost_connects(&svc, &st);
    rt().block_on(async {
        let mut conn = connect(&svc.url, &st).await;
        let r = conn.get("/healthz").await.unwrap();
        assert_eq!(r.status, 200);
    });
    assert_eq!(svc.stop(), Some(0));
    // A single-label name is refused in the configuration, saying why.
    let single = write(
        &c.tmp.path().join("single.toml"),
        b"server_names = [\"stampsite\"]\n",
    );
    stamp(&c.pass)
        .site("serve")
        .dir(&c.site)
        .args(&["--config", s(&single)])
        .fails("a single-label name is not a valid dNSName");
}

/// The subject alternative names of a PEM certificate, as "dns NAME" or "ip ADDRESS".
fn sans(pem: &Path) -> Vec<String> {
    let der = stamp_core::cert::from_pem(&std::fs::read_to_string(pem).unwrap(), "CERTIFICATE").unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => format!("dns {d}"),
            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                4 => format!(
                    "ip {}",
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap())
                ),
                _ => format!(
                    "ip {}",
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap())
                ),
            },
            other => format!("{other:?}"),
        })
        .collect()
}

/// A station connects to `svc` as `https://localhost:PORT` and is served.
fn localhost_connects(svc: &Service, st: &Path) {
    let root = stamp_core::cert::from_pem(
        &std::fs::read_to_string(st.join("ca.pem")).unwrap(),
        "CERTIFICATE",
    )
    .unwrap();
    let port = svc.url.rsplit(':').next().unwrap().to_owned();
    rt().block_on(async {
        let id = StationIdentity::load(st).unwrap();
        let by_name = Endpoint::new(
            &format!("https://localhost:{port}"),
            &root,
            Some((&id.chain, &id.key_pkcs8)),
        )
        .unwrap();
        let mut conn = by_name.connect().await.unwrap();
        let r = conn.get("/healthz").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    });
}

#[test]
fn demo_runs_the_whole_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let v = stamp_bare()
        .arg("demo")
        .dir(&dir)
        .args(&["--devices", "150"])
        .json();
    for key in ["dir", "root_cert", "entitlement", "audit_bundle"] {
        assert!(Path::new(v[key].as_str().unwrap()).exists(), "{key}");
    }
    assert_eq!(v["devices_requested"], 150);
    assert_eq!(v["devices_issued"], 150);
    assert_eq!(v["refused_over_quota"], 1);
    assert!(v["issuance_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["reconcile"].get("ok").is_some() && v["reconcile"]["violations"].is_array());
    // 1 entitlement applied + 1 station added + 150 issued + 1 refused + the export itself.
    // 154 entries before, and the renewal clone's refusal.
    assert_eq!(v["audit_log_size"], 155);
    assert_eq!(v["renewal_clone"]["reason"], "possession-not-proven", "{v:#}");
    assert_eq!(v["renewal_clone"]["status"], 403);
    let devices = std::fs::read_dir(v["devices_dir"].as_str().unwrap())
        .unwrap()
        .count();
    assert_eq!(devices, 150);

    // The cloud: HQ revoked one device and exported the registry; genuine devices were admitted
    // by the gateway, and each attacker was refused for its own reason.
    let cloud = &v["cloud"];
    assert!(
        Path::new(cloud["registry"].as_str().unwrap()).is_file(),
        "{cloud}"
    );
    // The 150, and the one the site issued after hiding a serial from its engine.
    assert_eq!(cloud["registry_devices"], 151, "{cloud}");
    assert_eq!(cloud["registry_revocations"], 1, "{cloud}");
    let genuine = cloud["genuine_connected"].as_u64().unwrap();
    assert!(genuine > 0, "{cloud}");
    assert_eq!(cloud["admitted"], genuine, "{cloud}");
    let refused: Vec<(&str, &str)> = cloud["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["attacker"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        refused,
        [
            ("counterfeit", "chain-invalid"),
            ("clone", "clone"),
            ("over-range", "serial-out-of-range"),
            ("revoked", "revoked"),
            ("provisional-clone", "clone"),
            ("log-skipped", "not-in-log"),
        ],
        "{cloud}"
    );
    let revoked = cloud["revoked_serial"].as_u64().unwrap();
    assert_eq!(cloud["refused"][3]["device_serial"], revoked, "{cloud}");
    // The clone carries a genuine device's serial; the over-range serial is in no allocated range.
    let over = cloud["refused"][2]["device_serial"].as_u64().unwrap();
    for r in v["serial_ranges"].as_array().unwrap() {
        let (first, last) = (r["first"].as_u64().unwrap(), r["last"].as_u64().unwrap());
        assert!(!(first..=last).contains(&over), "{over} in {r}");
        assert!((first..=last).contains(&cloud["refused"][1]["device_serial"].as_u64().unwrap()));
    }
    // The attackers' stamps stay on disk: the verifier refuses them on its own too.
    let clone = Path::new(cloud["attackers_dir"].as_str().unwrap()).join("clone/device.crt");
    let (code, verdict) = stamp_bare()
        .cloud("verify")
        .args(&["--registry", cloud["registry"].as_str().unwrap(), s(&clone)])
        .args(&["--root-fingerprint", v["root_fingerprint"].as_str().unwrap()])
        .code_json();
    assert_eq!(code, Some(1), "{verdict}");
    assert_eq!(verdict["reason"], "clone", "{verdict}");
    // The site applied HQ's revocation: its CRL lists the revoked device, and openssl agrees.
    assert_eq!(cloud["site_crl_report"]["revoked"], 1, "{cloud}");
    let sites = Path::new(v["dir"].as_str().unwrap()).join("hq/sites");
    let site_dir = std::fs::read_dir(&sites).unwrap().next().unwrap().unwrap().path();
    let site_ca = site_dir.join("site-issuing-ca.pem");
    let crl = cloud["site_crl"].as_str().unwrap();
    let o = openssl(&["crl", "-in", crl, "-CAfile", s(&site_ca), "-verify", "-noout"]);
    assert!(
        o.status.success(),
        "{site_ca:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let revoked_cert = Path::new(v["devices_dir"].as_str().unwrap()).join(format!("{revoked}/device.crt"));
    let o = openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        v["root_cert"].as_str().unwrap(),
        "-untrusted",
        s(&site_ca),
        "-CRLfile",
        crl,
        s(&revoked_cert),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("certificate revoked")
            || String::from_utf8_lossy(&o.stderr).contains("certificate revoked")
    );

    // The saved stamps replay with `stamp device connect` against a gateway on the registry.
    use std::io::BufRead;
    let gw_cert = Path::new(v["dir"].as_str().unwrap()).join("gw.pem");
    let mut gw = stamp_bare()
        .arg("--json")
        .cloud("gateway")
        .args(&["--registry", cloud["registry"].as_str().unwrap()])
        .args(&["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
        .args(&["--write-server-cert", s(&gw_cert)])
        .args(&["--root-fingerprint", v["root_fingerprint"].as_str().unwrap()])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(gw.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let listening: serde_json::Value = serde_json::from_str(&first).unwrap();
    let port = listening["listening"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    let connect = |dir: &Path| {
        let o = stamp_bare()
            .arg("--json")
            .device("connect")
            .args(&[
                "--stamp",
                s(dir),
                "--gateway",
                &format!("localhost:{port}"),
                "--ca-file",
                s(&gw_cert),
            ])
            .output();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.code(), v)
    };
    let genuine_dir = Path::new(v["devices_dir"].as_str().unwrap()).join("1");
    let (code, answer) = connect(&genuine_dir);
    let (code2, answer2) = connect(clone.parent().unwrap());
    let _ = gw.kill();
    let _ = gw.wait();
    assert_eq!(
        (code, answer["standing"].as_str()),
        (Some(0), Some("registered")),
        "{answer}"
    );
    assert_eq!(
        (code2, answer2["reason"].as_str()),
        (Some(1), Some("clone")),
        "{answer2}"
    );
}

#[test]
fn entitlements_imported_while_serving_take_effect_between_requests() {
    let (c, st) = setup(&["--quota", "1000"]);
    let svc = Service::start(&c, &[]);
    let amend = |name: &str, args: &[&str]| {
        let pkg = c.tmp.path().join(format!("{name}.cose"));
        stamp(&c.pass)
            .hq("amend")
            .dir(&c.hq)
            .args(&["-o", s(&pkg)])
            .args(args)
            .json();
        stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    };
    // While the service runs, no other engine may issue for the site.
    let before = snapshot(&c.site);
    let csr_dir = c.tmp.path().join("batch");
    std::fs::create_dir_all(&csr_dir).unwrap();
    std::fs::write(csr_dir.join("d.der"), p256_csr()).unwrap();
    stamp(&c.pass)
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.1", "--csr", s(&csr_dir)])
        .args(&["-o", s(&c.tmp.path().join("batch-out"))])
        .fails_with("engine-busy");
    assert_eq!(snapshot(&c.site), before);
    let url = svc.url.clone();
    rt().block_on(async {
        let mut conn = connect(&url, &st).await;
        assert_eq!(provision(&mut conn, "plant-7.1", &p256_csr()).await.status, 200);
        // A new grant: `site import` returns once the running service has applied it.
        entitle(&c, "e2", &["--quota", "2"]);
        assert_eq!(provision(&mut conn, "plant-7.2", &p256_csr()).await.status, 200);
        assert_eq!(provision(&mut conn, "plant-7.2", &p256_csr()).await.status, 200);
        let r = provision(&mut conn, "plant-7.2", &p256_csr()).await;
        assert_eq!(r.error.as_deref(), Some("quota-exhausted"));
        // A top-up of the used-up grant: new serials from the new range.
        amend("top-up", &["--entitlement", "plant-7.2", "--add-quota", "2"]);
        let r = provision(&mut conn, "plant-7.2", &p256_csr()).await;
        let serial = r.json().unwrap()["device_serial"].as_u64().unwrap();
        assert!(serial > 1002, "serial {serial} comes from the new range");
    });
    // A suspension imported while stations keep provisioning: every device is logged before
    // the suspension's entry or refused after it, so HQ finds nothing issued while suspended.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, st, stop) = (url.clone(), st.clone(), stop.clone());
        std::thread::spawn(move || {
            rt().block_on(async {
                let mut conn = connect(&url, &st).await;
                let (mut issued, mut suspended) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = provision(&mut conn, "plant-7.1", &p256_csr()).await;
                    match (r.status, r.error.as_deref()) {
                        (200, _) => issued += 1,
                        (403, Some("suspended")) => suspended += 1,
                        other => panic!("{other:?}"),
                    }
                }
                (issued, suspended)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    amend("suspend", &["--entitlement", "plant-7.1", "--suspend"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (issued, suspended) = load.join().unwrap();
    assert!(
        issued > 0 && suspended > 0,
        "issued {issued}, refused as suspended {suspended}"
    );
    // Packages apply strictly in sequence through the running engine too. HQ seals 5 (resume
    // plant-7.1) and 6 (top up plant-7.2); the site skips 5. `site import` refuses 6 before it
    // reaches the engine; 6 dropped into the inbox by hand is refused by the engine itself.
    let seal = |name: &str, args: &[&str]| {
        let pkg = c.tmp.path().join(format!("{name}.cose"));
        stamp(&c.pass)
            .hq("amend")
            .dir(&c.hq)
            .args(&["-o", s(&pkg)])
            .args(args)
            .json();
        pkg
    };
    let p5 = seal("resume", &["--entitlement", "plant-7.1", "--resume"]);
    let p6 = seal("more", &["--entitlement", "plant-7.2", "--add-quota", "1"]);
    stamp(&c.pass)
        .site("import")
        .dir(&c.site)
        .arg(&p6)
        .fails("package 5 is missing: import it first");
    let inbox = c.site.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(&p6, inbox.join(format!("{:020}.cose", 6))).unwrap();
    let refused = inbox.join(format!("{:020}.refused.txt", 6));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !refused.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never decided on package 6"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let why = std::fs::read_to_string(&refused).unwrap();
    assert!(why.contains("package 5 is missing: import it first"), "{why}");
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    assert_eq!(st["last_sequence"], 4, "{st}");
    // The honest path: 5, then 6.
    stamp(&c.pass).site("import").dir(&c.site).arg(&p5).json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&p6).json();
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    assert_eq!(st["last_sequence"], 6, "{st}");
    assert_eq!(svc.stop(), Some(0));
    check_consistent(&c, "plant-7.1");
    check_consistent(&c, "plant-7.2");
    let bundle = c.tmp.path().join("b.bundle");
    stamp(&c.pass)
        .site("export-audit")
        .dir(&c.site)
        .args(&["-o", s(&bundle)])
        .json();
    let r = stamp(&c.pass).hq("reconcile").dir(&c.hq).arg(&bundle).json();
    assert_eq!(r["violations"], serde_json::json!([]), "{r}");
}
