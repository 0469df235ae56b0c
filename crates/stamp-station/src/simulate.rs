//! Simulated devices on a production line: each makes its own key pair and a CSR, enrolls through a
//! station's mutual-TLS connection (EST or the JSON API), checks the chain it gets back up to the
//! OEM root, and stores its stamp the way a device would.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hyper::Method;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;

use crate::client::{ClientError, Connection, Endpoint, Reply, StationIdentity};

/// Device key types the simulator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SimKey {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048 (slow to generate, as on a real device).
    Rsa2048,
}

impl SimKey {
    fn alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            SimKey::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            SimKey::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            SimKey::Ed25519 => &rcgen::PKCS_ED25519,
            SimKey::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// How devices enroll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// RFC 7030 simpleenroll (base64 PKCS#10 in, certs-only PKCS#7 out).
    Est,
    /// `POST /api/v1/provision`.
    Json,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulateOptions {
    /// `https://HOST:PORT` of the site service.
    pub server: String,
    /// The station directory (`stamp site add-station -o DIR`).
    pub station_dir: PathBuf,
    /// How many devices.
    pub count: u64,
    /// Devices enrolling at the same time (one connection each).
    pub concurrency: usize,
    /// Key type.
    pub key: SimKey,
    /// Protocol.
    pub protocol: Protocol,
    /// Entitlement (EST label); default: the service's default entitlement.
    pub entitlement: Option<String>,
    /// Where devices store their stamps: `OUT_DIR/<serial>/`.
    pub out_dir: PathBuf,
}

/// Latency percentiles, milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// What happened.
#[derive(Clone, Debug, Serialize)]
pub struct SimulationReport {
    /// The server.
    pub server: String,
    /// The protocol used.
    pub protocol: Protocol,
    /// The key type used.
    pub key: SimKey,
    /// Devices asked for.
    pub requested: u64,
    /// Devices that got a verified certificate and stored their stamp.
    pub provisioned: u64,
    /// Refusals by the service's stable code.
    pub refused: BTreeMap<String, u64>,
    /// Failures that are not refusals (transport, bad reply, chain check), by kind.
    pub failed: BTreeMap<String, u64>,
    /// Wall time.
    pub seconds: f64,
    /// Devices provisioned per second.
    pub devices_per_second: f64,
    /// Enrollment round trip per device (request sent to reply read).
    pub latency_ms: Latency,
    /// Where stamps are.
    pub out_dir: PathBuf,
    /// Serials provisioned (sorted).
    #[serde(skip)]
    pub serials: Vec<u64>,
}

/// Why a simulation could not run at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The station or the server could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The output directory could not be created.
    #[error("cannot create {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// Options out of range.
    #[error("{0}")]
    Options(&'static str),
}

enum Outcome {
    Provisioned(u64, Duration),
    Refused(String, Duration),
    Failed(&'static str, String),
}

struct Shared {
    opts: SimulateOptions,
    endpoint: Endpoint,
    root: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
    device_data: serde_json::Value,
    product: serde_json::Value,
    entitlement: Option<String>,
    next: AtomicU64,
    outcomes: Mutex<Vec<Outcome>>,
    first_error: Mutex<Option<String>>,
}

/// Runs the simulation on its own runtime; `progress` is called after each device.
pub fn simulate(
    opts: &SimulateOptions,
    progress: &(dyn Fn() + Send + Sync),
) -> Result<SimulationReport, SimError> {
    if opts.count > 10_000_000 || !(1..=1024).contains(&opts.concurrency) {
        return Err(SimError::Options(
            "count must be at most 10,000,000 and concurrency 1 to 1024",
        ));
    }
    let station = StationIdentity::load(&opts.station_dir)?;
    let endpoint = Endpoint::for_station(&opts.server, &station)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| SimError::Io(opts.out_dir.clone(), e))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("stamp-simulator")
        .enable_all()
        .build()
        .map_err(|e| SimError::Io(opts.out_dir.clone(), e))?;
    runtime.block_on(run(opts, station, endpoint, progress))
}

async fn run(
    opts: &SimulateOptions,
    station: StationIdentity,
    endpoint: Endpoint,
    progress: &(dyn Fn() + Send + Sync),
) -> Result<SimulationReport, SimError> {
    // What every device needs once: the CA certificates (EST) and its device data (status).
    let mut conn = endpoint.connect().await?;
    let label = opts.entitlement.clone();
    let status = conn.get("/api/v1/status").await?;
    let status_json = status.json().unwrap_or_default();
    let ent = label
        .clone()
        .or_else(|| status_json["default_entitlement"].as_str().map(str::to_owned));
    let grant = status_json["entitlements"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| Some(e["entitlement_id"].as_str().unwrap_or("")) == ent.as_deref())
        })
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let device_data = grant["device_data"].clone();
    let product = if grant.is_null() {
        serde_json::Value::Null
    } else {
        serde_json::json!({
            "oem_id": grant["oem_id"], "product_id": grant["product_id"], "name": grant["product_name"],
        })
    };
    let cacerts_path = match &label {
        Some(l) => format!("/.well-known/est/{l}/cacerts"),
        None => "/.well-known/est/cacerts".to_owned(),
    };
    let cacerts = conn.get(&cacerts_path).await?;
    let intermediates = if cacerts.status == 200 {
        stamp_core::pkcs7::base64_decode(&cacerts.body, crate::client::MAX_RESPONSE)
            .and_then(|der| stamp_core::pkcs7::read_certs_only(&der).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| *c != station.root)
            .collect()
    } else {
        Vec::new()
    };
    drop(conn);
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        endpoint,
        root: station.root.clone(),
        intermediates,
        device_data,
        product,
        entitlement: ent,
        next: AtomicU64::new(0),
        outcomes: Mutex::new(Vec::with_capacity(usize::try_from(opts.count).unwrap_or(0))),
        first_error: Mutex::new(None),
    });
    let started = Instant::now();
    let workers = opts
        .concurrency
        .min(usize::try_from(opts.count).unwrap_or(usize::MAX))
        .max(1);
    let (tick_tx, mut tick_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let shared = shared.clone();
        let tick = tick_tx.clone();
        handles.push(tokio::spawn(async move { worker(shared, tick).await }));
    }
    drop(tick_tx);
    while tick_rx.recv().await.is_some() {
        progress();
    }
    for h in handles {
        let _ = h.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let outcomes = std::mem::take(
        &mut *shared
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut refused = BTreeMap::new();
    let mut failed = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut serials = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Provisioned(serial, d) => {
                serials.push(serial);
                latencies.push(d);
            }
            Outcome::Refused(code, d) => {
                *refused.entry(code).or_insert(0) += 1;
                latencies.push(d);
            }
            Outcome::Failed(kind, _) => *failed.entry(kind.to_owned()).or_insert(0) += 1,
        }
    }
    serials.sort_unstable();
    latencies.sort_unstable();
    let pct = |p: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let provisioned = serials.len() as u64;
    if let Some(e) = shared
        .first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        tracing::warn!(error = %e, "first failure");
    }
    Ok(SimulationReport {
        server: opts.server.clone(),
        protocol: opts.protocol,
        key: opts.key,
        requested: opts.count,
        provisioned,
        refused,
        failed,
        seconds,
        devices_per_second: provisioned as f64 / seconds.max(1e-9),
        latency_ms: Latency {
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            max: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        },
        out_dir: opts.out_dir.clone(),
        serials,
    })
}

async fn worker(shared: Arc<Shared>, tick: tokio::sync::mpsc::UnboundedSender<()>) {
    let mut conn: Option<Connection> = None;
    loop {
        let i = shared.next.fetch_add(1, Ordering::SeqCst);
        if i >= shared.opts.count {
            break;
        }
        if conn.is_none() {
            match shared.endpoint.connect().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    record(&shared, Outcome::Failed("connect", e.to_string()));
                    let _ = tick.send(());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let outcome = device(&shared, c).await;
        if matches!(outcome, Outcome::Failed("transport", _)) {
            conn = None;
        }
        record(&shared, outcome);
        let _ = tick.send(());
    }
}

fn record(shared: &Shared, o: Outcome) {
    if let Outcome::Failed(_, msg) = &o {
        shared
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(|| msg.clone());
    }
    shared
        .outcomes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(o);
}

/// A device's key and CSR (RSA keys are generated off the async threads).
async fn key_and_csr(key: SimKey) -> Result<(rcgen::KeyPair, Vec<u8>), String> {
    let make = move || -> Result<(rcgen::KeyPair, Vec<u8>), String> {
        let kp = rcgen::KeyPair::generate_for(key.alg()).map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "simulated device");
        let csr = params.serialize_request(&kp).map_err(|e| e.to_string())?;
        Ok((kp, csr.der().to_vec()))
    };
    if key == SimKey::Rsa2048 {
        tokio::task::spawn_blocking(make)
            .await
            .map_err(|e| e.to_string())?
    } else {
        make()
    }
}

async fn device(shared: &Shared, conn: &mut Connection) -> Outcome {
    let opts = &shared.opts;
    let (key, csr) = match key_and_csr(opts.key).await {
        Ok(k) => k,
        Err(e) => return Outcome::Failed("keygen", e),
    };
    let started = Instant::now();
    let reply = match opts.protocol {
        Protocol::Json => {
            let mut body =
                serde_json::json!({ "csr": base64::engine::general_purpose::STANDARD.encode(&csr) });
            if let Some(e) = &opts.entitlement {
                body["entitlement"] = serde_json::Value::String(e.clone());
            }
            conn.post_json("/api/v1/provision", &body).await
        }
        Protocol::Est => {
            let path = match &opts.entitlement {
                Some(l) => format!("/.well-known/est/{l}/simpleenroll"),
                None => "/.well-known/est/simpleenroll".to_owned(),
            };
            conn.send(
                Method::POST,
                &path,
                Some("application/pkcs10"),
                stamp_core::pkcs7::base64_lines(&csr).into_bytes(),
            )
            .await
        }
    };
    let latency = started.elapsed();
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return Outcome::Failed("transport", e.to_string()),
    };
    if reply.status != 200 {
        let code = reply
            .error
            .clone()
            .unwrap_or_else(|| format!("http-{}", reply.status));
        return Outcome::Refused(code, latency);
    }
    match accept(shared, &key, &reply).await {
        Ok(serial) => Outcome::Provisioned(serial, latency),
        Err((kind, msg)) => Outcome::Failed(kind, msg),
    }
}

/// Checks a successful reply and stores the device's stamp; returns its serial.
async fn accept(shared: &Shared, key: &rcgen::KeyPair, reply: &Reply) -> Result<u64, (&'static str, String)> {
    let bad = |m: String| ("bad-reply", m);
    let (leaf, chain, extra) = match shared.opts.protocol {
        Protocol::Json => {
            let v = reply.json().map_err(|e| bad(e.to_string()))?;
            let cert =
                pem_der(v["certificate"].as_str().unwrap_or("")).ok_or_else(|| bad("certificate".into()))?;
            let chain: Vec<Vec<u8>> = v["chain"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| pem_der(c.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            (cert, chain, v)
        }
        Protocol::Est => {
            let der = stamp_core::pkcs7::base64_decode(&reply.body, crate::client::MAX_RESPONSE)
                .ok_or_else(|| bad("not base64".into()))?;
            let certs = stamp_core::pkcs7::read_certs_only(&der).map_err(|e| bad(e.to_string()))?;
            let leaf = certs
                .into_iter()
                .next()
                .ok_or_else(|| bad("no certificate".into()))?;
            let mut chain = shared.intermediates.clone();
            chain.push(shared.root.clone());
            (leaf, chain, serde_json::Value::Null)
        }
    };
    let serial = verify(shared, key, &leaf, &chain).map_err(|m| ("chain-check", m))?;
    let dir = shared.opts.out_dir.join(serial.to_string());
    let stamp = serde_json::json!({
        "device_serial": serial,
        "entitlement_id": extra.get("entitlement_id").cloned()
            .or_else(|| shared.entitlement.clone().map(serde_json::Value::String)),
        "product": extra.get("product").cloned().unwrap_or_else(|| shared.product.clone()),
        "device_data": if extra.is_null() { shared.device_data.clone() } else { extra["device_data"].clone() },
        "log_index": extra.get("log_index").cloned(),
        "protocol": shared.opts.protocol,
        "key_type": shared.opts.key,
        "certificate_sha256": hex::encode(stamp_core::fingerprint::sha256(&leaf)),
        "files": { "key": "device.key", "certificate": "device.crt", "chain": "chain.pem" },
    });
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    let chain_pem: String = chain.iter().map(|c| stamp_core::cert::to_pem(c)).collect();
    let leaf_pem = stamp_core::cert::to_pem(&leaf);
    tokio::task::spawn_blocking(move || save(&dir, &key_pem, &leaf_pem, &chain_pem, &stamp))
        .await
        .map_err(|e| ("store", e.to_string()))?
        .map_err(|e| ("store", e.to_string()))?;
    Ok(serial)
}

fn pem_der(text: &str) -> Option<Vec<u8>> {
    stamp_core::cert::from_pem(text, "CERTIFICATE").ok()
}

/// The device's check: the certificate is for its own key, chains to the OEM root the station
/// trusts (rustls-webpki, clientAuth), and names a device serial.
fn verify(shared: &Shared, key: &rcgen::KeyPair, leaf: &[u8], chain: &[Vec<u8>]) -> Result<u64, String> {
    use rcgen::PublicKeyData;
    let cert = stamp_core::cert::parse(leaf).map_err(|e| e.to_string())?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err("the certificate is not for this device's key".into());
    }
    let root = CertificateDer::from(shared.root.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|e| e.to_string())?;
    let inter: Vec<CertificateDer<'_>> = chain
        .iter()
        .filter(|c| **c != shared.root)
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| e.to_string())?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &inter,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| format!("chain does not verify to the OEM root: {e}"))?;
    stamp_core::device::serial_in_subject(cert.subject().as_raw())
        .ok_or_else(|| "no device serial in the subject".into())
}

fn save(
    dir: &Path,
    key_pem: &str,
    cert_pem: &str,
    chain_pem: &str,
    stamp: &serde_json::Value,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("device.key"))?;
    f.write_all(key_pem.as_bytes())?;
    std::fs::write(dir.join("device.crt"), cert_pem)?;
    std::fs::write(dir.join("chain.pem"), chain_pem)?;
    std::fs::write(
        dir.join("stamp.json"),
        serde_json::to_vec_pretty(stamp).unwrap_or_default(),
    )?;
    Ok(())
}
