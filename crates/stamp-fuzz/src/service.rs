//! The site service target: raw HTTP/1.1 bytes through the service's real router, handlers and
//! provisioning engine (`stamp_service::Server::serve_stream`, an in-memory stream in place of a
//! TLS connection), as line station `line-1` of a real site: HQ and the site made with
//! stamp-hq and stamp-site, enrolled, installed, entitled and the station added, once per
//! process, in a temporary directory (in /dev/shm where there is one, so the audit log's fsyncs
//! are cheap).

use std::sync::OnceLock;
use std::time::Duration;

use stamp_core::entitlement::{DeviceKeyType, DeviceProfile, Product, RatePeriod};
use stamp_core::key::SignatureAlgorithm;
use stamp_core::site_id::SiteId;
use stamp_keys::{KeyConfig, Passphrase};
use stamp_service::tls::Peer;
use stamp_service::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::finding;

/// The entitlement the service's default is (the only grant of the site).
pub const ENTITLEMENT: &str = "plant-7.1";
/// The longest one input may take (every engine call included).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

struct Harness {
    rt: tokio::runtime::Runtime,
    server: Server,
    peer: Peer,
    _dir: tempfile::TempDir,
}

fn keys() -> KeyConfig {
    Passphrase::new("stamp-fuzz-passphrase (not a secret)".to_owned()).into()
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| match build() {
        Ok(h) => h,
        Err(e) => finding(&format!("the service target's site could not be made: {e:#}")),
    })
}

fn build() -> Result<Harness, Box<dyn std::error::Error>> {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new().prefix("stamp-fuzz-").tempdir_in(shm)?
    } else {
        tempfile::Builder::new().prefix("stamp-fuzz-").tempdir()?
    };
    let (hq_dir, site_dir) = (dir.path().join("hq"), dir.path().join("site"));
    let (request, creds, package) = (
        dir.path().join("request.json"),
        dir.path().join("credentials.json"),
        dir.path().join("entitlement.cose"),
    );
    let now = time::OffsetDateTime::now_utc();
    let site_id = SiteId::new(crate::fixture::SITE)?;
    let opts = stamp_hq::InitOptions {
        org: crate::fixture::ORG.to_owned(),
        root_algorithm: SignatureAlgorithm::EcdsaP256Sha256,
    };
    stamp_hq::init(&hq_dir, &opts, keys(), now)?;
    let init = stamp_site::init(&site_dir, &site_id, keys(), &request, now)?;
    let mut hq = stamp_hq::Hq::open(&hq_dir, keys())?;
    let verified = stamp_hq::read_request(&std::fs::read(&request)?)?;
    hq.enroll_site(&verified, Some(&init.request_fingerprint), &creds, now)?;
    let mut site = stamp_site::Site::open(&site_dir, keys())?;
    let v = site.verify_credentials(&std::fs::read(&creds)?, None, now)?;
    site.install(&v, now)?;
    let grant = stamp_hq::entitle::GrantRequest {
        site: site_id.clone(),
        product: Product {
            oem_id: "fuzz".into(),
            product_id: "thermo-2".into(),
            name: "Thermostat 2".into(),
        },
        quota: 1_000_000_000,
        rate_limits: [(RatePeriod::Day, 1_000_000_000)].into_iter().collect(),
        not_before: now.unix_timestamp() - 60,
        not_after: (now + time::Duration::days(365)).unix_timestamp(),
        device_profile: DeviceProfile {
            validity_days: 365,
            key_types: vec![DeviceKeyType::P256, DeviceKeyType::Ed25519],
            organization: crate::fixture::ORG.to_owned(),
        },
        stations: vec![],
        hq_keys: None,
        firmware: vec![],
        device_data: Default::default(),
        renewal_limit: Default::default(),
    };
    let report = hq.entitle(&grant, &package, now)?;
    if report.entitlement.entitlement_id != ENTITLEMENT {
        return Err(format!("the grant is {}", report.entitlement.entitlement_id).into());
    }
    let v = site.verify_entitlement(&std::fs::read(&package)?, now)?;
    site.apply_entitlement(v, now)?;
    let station = site.add_station("line-1", now)?;
    drop(site);
    let site = stamp_site::Site::open(&site_dir, keys())?;
    let config = Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        default_entitlement: ENTITLEMENT.to_owned(),
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = Server::new(site, config)?;
    let peer = Peer::from_certificate(
        Some(&station.certificate),
        &site_id,
        std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
    );
    if peer.station.as_deref() != Some("line-1") {
        return Err("the station certificate is not read as station line-1".into());
    }
    Ok(Harness {
        rt,
        server,
        peer,
        _dir: dir,
    })
}

/// Site service: the input is what a station sends on one connection (HTTP/1.1 requests); the
/// service must answer and close within [`ANSWER_WITHIN`] once the client stops sending, and
/// never panic.
pub fn service(data: &[u8]) {
    let _ = service_answer(data);
}

/// What the service answers on a connection that sends `data`, then closes its side.
pub fn service_answer(data: &[u8]) -> Vec<u8> {
    let h = harness();
    let answered = h.rt.block_on(async {
        let (client, server_io) = tokio::io::duplex(64 * 1024);
        let serve = h.server.serve_stream(server_io, h.peer.clone());
        let talk = async move {
            let (mut r, mut w) = tokio::io::split(client);
            let send = async {
                let _ = w.write_all(data).await;
                let _ = w.shutdown().await;
            };
            let mut answer = Vec::new();
            let receive = r.read_to_end(&mut answer);
            let (_, _) = tokio::join!(send, receive);
            answer
        };
        tokio::time::timeout(ANSWER_WITHIN, async { tokio::join!(serve, talk) }).await
    });
    match answered {
        Ok((_, answer)) => answer,
        Err(_) => finding("the service did not answer and close the connection in time"),
    }
}
