//! `stamp demo`: the main job on embedded defaults, narrated.

mod cloud;
mod renewal;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use serde::Serialize;
use stamp_core::{fingerprint, SiteId};
use stamp_keys::{KeyConfig, Passphrase, StoreTarget};

use crate::output::emit;
use crate::Globals;

/// Run stamp's main job on embedded defaults, in a fresh directory, narrating each step: HQ
/// creates the OEM root and its authority; a factory site creates its keys and an enrollment
/// request; HQ checks the request and issues the site's certificates; the site verifies and
/// installs them; HQ grants the site a production run of N devices (an entitlement sealed to the
/// site) and the site verifies and applies it; the site adds a line station and starts its
/// service on a loopback port; N simulated devices enroll over mutual TLS (EST) and check their
/// chains; one more device is refused for quota; the service stops; the site exports its audit log
/// for HQ, and HQ reconciles it. Then the cloud: HQ revokes one device and exports the signed
/// registry; a TLS gateway starts on a loopback port; genuine devices connect with their own keys
/// and are admitted; a counterfeit (rogue CA), a clone and an over-range device (both signed with
/// the site's issuing key, as a compromised site could) and the revoked device are each refused
/// with their reason. Every file stays in the directory for you to inspect.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to work in (must not exist, or be empty). Default: a new temporary directory,
    /// kept after the demo.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The demo OEM's name.
    #[arg(long, default_value = "Example Devices Inc")]
    org: String,
    /// The demo site's ID.
    #[arg(long, default_value = "factory-1")]
    site_id: SiteId,
    /// Devices to make: the entitlement's quota, and the number of simulated devices (at least 2:
    /// the cloud steps revoke one).
    #[arg(long, value_name = "N", default_value = "1000", value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
    devices: u64,
    /// Devices enrolling at the same time (one station connection each).
    #[arg(long, value_name = "C", default_value = "32")]
    concurrency: usize,
    /// Where HQ and the site create their keys: `file:` (encrypted files) or a PKCS#11 token,
    /// `pkcs11:token=LABEL`, for both (module and PIN from --pkcs11-module and
    /// --pkcs11-pin-file; see docs/hsm.md).
    #[arg(long, value_name = "STORE", default_value = "file:")]
    key_store: StoreTarget,
}

#[derive(Serialize)]
struct Report {
    dir: PathBuf,
    passphrase_file: PathBuf,
    hq_dir: PathBuf,
    site_dir: PathBuf,
    root_cert: PathBuf,
    root_fingerprint: String,
    site_request: PathBuf,
    request_fingerprint: String,
    site_credentials: PathBuf,
    site_issuing_ca_cert: PathBuf,
    entitlement: PathBuf,
    entitlement_id: String,
    quota: u64,
    serial_ranges: Vec<stamp_core::entitlement::SerialRange>,
    station_dir: PathBuf,
    service_url: String,
    devices_dir: PathBuf,
    devices_requested: u64,
    devices_issued: u64,
    refused_over_quota: u64,
    /// A station's attempt to renew a genuine device to its own key, refused.
    renewal_clone: renewal::RenewalClone,
    issuance_per_second: f64,
    latency_ms: stamp_station::simulate::Latency,
    audit_bundle: PathBuf,
    audit_log_size: u64,
    reconcile: Reconcile,
    cloud: cloud::Cloud,
    steps: Vec<Step>,
    seconds: f64,
}

/// HQ's verdict on the audit bundle.
#[derive(Serialize)]
struct Reconcile {
    /// Every check passed.
    ok: bool,
    /// Violations found (kind, detail, entries).
    violations: Vec<serde_json::Value>,
    /// Genuine devices recorded in HQ's registry.
    devices_recorded: u64,
    /// Log entries in the bundle.
    entries: u64,
}

/// HQ reconciles the site's audit bundle (`stamp hq reconcile`).
fn reconcile_step(hq_dir: &Path, keys: KeyConfig, bundle: &Path) -> anyhow::Result<Reconcile> {
    let mut hq = stamp_hq::Hq::open(hq_dir, keys)?;
    let file = std::fs::File::open(bundle).with_context(|| format!("cannot open {}", bundle.display()))?;
    let report = hq.reconcile(std::io::BufReader::new(file), super::now())?;
    Ok(Reconcile {
        ok: report.ok,
        violations: report
            .violations
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?,
        devices_recorded: report.devices_recorded,
        entries: report.entries,
    })
}

#[derive(Serialize)]
struct Step {
    name: &'static str,
    seconds: f64,
}

struct Narrator {
    json: bool,
    steps: Vec<Step>,
}

impl Narrator {
    fn step<T>(&mut self, name: &'static str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        if !self.json {
            eprint!("{name} ... ");
            let _ = std::io::stderr().flush();
        }
        let t = Instant::now();
        let v = f().with_context(|| format!("demo step failed: {name}"))?;
        let seconds = t.elapsed().as_secs_f64();
        if !self.json {
            eprintln!("done ({seconds:.2} s)");
        }
        self.steps.push(Step {
            name,
            seconds: crate::output::round(seconds, 3),
        });
        Ok(v)
    }

    fn say(&self, line: impl AsRef<str>) {
        if !self.json {
            eprintln!("    {}", line.as_ref());
        }
    }
}

/// Writes a random passphrase to a new 0600 file and returns it.
fn make_passphrase(path: &Path) -> anyhow::Result<Passphrase> {
    let mut bytes = [0u8; 24];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("system random generator failed"))?;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(Passphrase::from_file(path)?)
}

/// Runs `stamp demo`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = match a.dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
            if std::fs::read_dir(&d)?.next().is_some() {
                anyhow::bail!(
                    "{} is not empty; give --dir a new or empty directory",
                    d.display()
                );
            }
            d
        }
        None => tempfile::Builder::new().prefix("stamp-demo-").tempdir()?.keep(),
    };
    let mut n = Narrator {
        json: g.json,
        steps: Vec::new(),
    };
    n.say(format!("working in {}", dir.display()));
    let pass_file = dir.join("passphrase");
    make_passphrase(&pass_file)?;
    let hq_dir = dir.join("hq");
    let site_dir = dir.join("site");
    let request_path = dir.join("site-request.json");
    let creds_path = dir.join("site-credentials.json");
    let now = super::now;
    let keys = |creating: bool| -> anyhow::Result<KeyConfig> {
        Ok(KeyConfig {
            new_keys: if creating {
                a.key_store.clone()
            } else {
                StoreTarget::File
            },
            passphrase: Passphrase::from_file(&pass_file)?.into(),
            pkcs11: super::pkcs11_config(g),
        })
    };

    let hq_init = n.step("HQ: create the OEM root CA and the HQ authority", || {
        let opts = stamp_hq::InitOptions {
            org: a.org.clone(),
            root_algorithm: stamp_core::key::SignatureAlgorithm::EcdsaP384Sha384,
        };
        Ok(stamp_hq::init(&hq_dir, &opts, keys(true)?, now())?)
    })?;
    n.say(format!(
        "OEM root {} (SHA-256 {})",
        hq_init.root_cert.display(),
        hq_init.root_fingerprint
    ));

    let site_init = n.step("Site: create site keys and the enrollment request", || {
        Ok(stamp_site::init(
            &site_dir,
            &a.site_id,
            keys(true)?,
            &request_path,
            now(),
        )?)
    })?;
    n.say(format!(
        "request {} (fingerprint {})",
        site_init.request.display(),
        site_init.request_fingerprint
    ));

    let enrolled = n.step("HQ: verify the request and issue the site's certificates", || {
        let request = stamp_hq::read_request(&std::fs::read(&request_path)?)?;
        let mut hq = stamp_hq::Hq::open(&hq_dir, keys(false)?)?;
        Ok(hq.enroll_site(&request, Some(&site_init.request_fingerprint), &creds_path, now())?)
    })?;
    n.say(format!("credentials {}", enrolled.credentials.display()));

    let pin = fingerprint::parse_sha256(&hq_init.root_fingerprint).context("root fingerprint")?;
    let installed = n.step(
        "Site: verify the credentials against the pinned root and install them",
        || {
            let mut site = stamp_site::Site::open(&site_dir, keys(false)?)?;
            let creds = site.verify_credentials(&std::fs::read(&creds_path)?, Some(&pin), now())?;
            Ok(site.install(&creds, now())?)
        },
    )?;
    n.say(format!(
        "site {} now trusts root {}",
        installed.site_id, installed.root_fingerprint
    ));

    let package = dir.join("entitlement-1.cose");
    let granted = n.step("HQ: grant the site a production run, sealed to the site", || {
        let mut hq = stamp_hq::Hq::open(&hq_dir, keys(false)?)?;
        let org = hq.store().org()?;
        let start = now();
        let req = stamp_hq::entitle::GrantRequest {
            site: a.site_id.clone(),
            product: stamp_core::entitlement::Product {
                oem_id: "example".into(),
                product_id: "thermostat-2".into(),
                name: "Thermostat 2".into(),
            },
            quota: a.devices,
            rate_limits: [(stamp_core::entitlement::RatePeriod::Day, 100_000)]
                .into_iter()
                .collect(),
            not_before: start.unix_timestamp(),
            not_after: (start + time::Duration::days(30)).unix_timestamp(),
            device_profile: stamp_core::entitlement::DeviceProfile {
                validity_days: 3650,
                key_types: vec![
                    stamp_core::entitlement::DeviceKeyType::P256,
                    stamp_core::entitlement::DeviceKeyType::Ed25519,
                ],
                organization: org,
            },
            stations: vec![],
            hq_keys: None,
            firmware: vec![],
            device_data: [(
                "cloud_endpoint".to_owned(),
                "mqtts://iot.example.com:8883".to_owned(),
            )]
            .into_iter()
            .collect(),
            renewal_limit: Default::default(),
        };
        Ok(hq.entitle(&req, &package, now())?)
    })?;
    n.say(format!(
        "entitlement {} (quota {}) in {}",
        granted.entitlement.entitlement_id,
        granted.entitlement.quota,
        package.display()
    ));
    let applied = n.step(
        "Site: verify the entitlement (HQ's signature, addressed here, in order) and apply it",
        || {
            let mut site = stamp_site::Site::open(&site_dir, keys(false)?)?;
            let v = site.verify_entitlement(&std::fs::read(&package)?, now())?;
            Ok(site.apply_entitlement(v, now())?)
        },
    )?;
    n.say(format!(
        "{} active at the site: {} devices may be made until {}",
        applied.entitlement.entitlement_id, applied.entitlement.remaining, applied.entitlement.not_after
    ));

    let station_dir = dir.join("station-1");
    let station = n.step(
        "Site: add line station line-1 (its TLS key and station certificate)",
        || {
            super::site::add_station::prepare_out_dir(&station_dir, false)?;
            let mut site = stamp_site::Site::open(&site_dir, keys(false)?)?;
            let creds = site.add_station("line-1", now())?;
            super::site::add_station::write_station_files(&station_dir, &creds, false)?;
            Ok(creds.name.clone())
        },
    )?;
    n.say(format!(
        "station {station}: key, certificate and CA in {}",
        station_dir.display()
    ));

    let entitlement_id = granted.entitlement.entitlement_id.clone();
    let running = n.step(
        "Site: start the site service on a loopback port (mutual TLS)",
        || {
            let site = stamp_site::Site::open(&site_dir, keys(false)?)?;
            let config = stamp_service::Config {
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                default_entitlement: entitlement_id.clone(),
                ops_listen: "off".into(),
                ..stamp_service::Config::default()
            };
            let server = stamp_service::Server::new(site, config)?;
            Ok(stamp_service::Running::start(server, 2)?)
        },
    )?;
    let url = format!("https://{}", running.addr());
    n.say(format!(
        "listening on {url}; stations must present a certificate from this site's CA"
    ));

    let devices_dir = dir.join("devices");
    let sim = |count: u64, out: PathBuf| stamp_station::simulate::SimulateOptions {
        server: url.clone(),
        station_dir: station_dir.clone(),
        count,
        concurrency: a.concurrency,
        key: stamp_station::simulate::SimKey::P256,
        protocol: stamp_station::simulate::Protocol::Est,
        entitlement: Some(entitlement_id.clone()),
        out_dir: out,
    };
    let devices = n.step(
        "Line: devices make their keys and CSRs and enroll over mutual TLS (EST)",
        || super::device::simulate::run_with_progress(&sim(a.devices, devices_dir.clone()), g.json),
    )?;
    n.say(format!(
        "{} of {} devices provisioned at {:.0} devices/s (latency p50 {:.1} ms, p99 {:.1} ms); stamps in {}",
        devices.provisioned,
        devices.requested,
        devices.devices_per_second,
        devices.latency_ms.p50,
        devices.latency_ms.p99,
        devices_dir.display()
    ));
    if devices.provisioned != a.devices {
        anyhow::bail!(
            "only {} of {} devices were provisioned (refused: {:?}, failed: {:?})",
            devices.provisioned,
            a.devices,
            devices.refused,
            devices.failed
        );
    }
    let extra = n.step("Line: one device more than the quota asks too", || {
        super::device::simulate::run_with_progress(&sim(1, dir.join("devices-over-quota")), true)
    })?;
    let refused_over_quota = extra.refused.get("quota-exhausted").copied().unwrap_or(0);
    n.say(format!(
        "refused: {}",
        extra.refused.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    if refused_over_quota != 1 || extra.provisioned != 0 {
        anyhow::bail!("the device over quota was not refused with quota-exhausted");
    }
    let first_serial = granted.entitlement.serial_ranges.first().map_or(0, |r| r.first);
    let renewal_clone = n.step(
        "Attacker on the line: a station renews a genuine device to a key of its own, without the device",
        || {
            let cert = devices_dir.join(first_serial.to_string()).join("device.crt");
            renewal::attempt(&url, &station_dir, &cert, first_serial)
        },
    )?;
    n.say(format!(
        "device {} keeps its certificate: refused [{}]",
        renewal_clone.device_serial, renewal_clone.reason
    ));
    if renewal_clone.reason != "possession-not-proven" {
        anyhow::bail!(
            "the renewal clone was not refused with possession-not-proven (HTTP {}, {:?})",
            renewal_clone.status,
            renewal_clone.reason
        );
    }
    n.step(
        "Site: stop the service (every acknowledged issuance is in the audit log)",
        || Ok(running.stop()?),
    )?;

    let bundle = dir.join("audit-1.bundle");
    let export = n.step(
        "Site: export the audit log for HQ (signed, encrypted to HQ)",
        || {
            let mut site = stamp_site::Site::open(&site_dir, keys(false)?)?;
            Ok(site.export_audit(&bundle, None, now())?)
        },
    )?;
    n.say(format!(
        "{} entries, checkpoint root {}, in {}",
        export.entries,
        export.root,
        bundle.display()
    ));
    let reconcile = n.step("HQ: reconcile the audit bundle against the entitlement", || {
        reconcile_step(&hq_dir, keys(false)?, &bundle)
    })?;
    if reconcile.ok {
        n.say(format!(
            "no violations: {} entries checked, {} genuine devices in HQ's registry",
            reconcile.entries, reconcile.devices_recorded
        ));
    } else {
        n.say(format!("{} violations", reconcile.violations.len()));
    }

    let cloud = cloud::run(
        &mut n,
        &cloud::Inputs {
            dir: &dir,
            hq_dir: &hq_dir,
            site_dir: &site_dir,
            site_id: &a.site_id,
            entitlement_id: &entitlement_id,
            root_pin: &pin,
            devices_dir: &devices_dir,
            serials: &devices.serials,
            keys: &|| keys(false),
        },
    )?;

    let report = Report {
        dir: dir.clone(),
        passphrase_file: pass_file,
        hq_dir,
        site_dir,
        root_cert: hq_init.root_cert,
        root_fingerprint: hq_init.root_fingerprint,
        site_request: request_path,
        request_fingerprint: site_init.request_fingerprint,
        site_credentials: creds_path,
        site_issuing_ca_cert: enrolled.site_issuing_ca_cert,
        entitlement: package,
        entitlement_id: granted.entitlement.entitlement_id,
        quota: granted.entitlement.quota,
        serial_ranges: granted.entitlement.serial_ranges,
        station_dir,
        service_url: url,
        devices_dir,
        devices_requested: a.devices,
        devices_issued: devices.provisioned,
        refused_over_quota,
        renewal_clone,
        issuance_per_second: devices.devices_per_second,
        latency_ms: devices.latency_ms.clone(),
        audit_bundle: bundle,
        audit_log_size: export.size,
        reconcile,
        cloud,
        steps: n.steps,
        seconds: crate::output::round(started.elapsed().as_secs_f64(), 3),
    };
    let first = devices.serials.first().copied();
    emit(g.json, &report, || {
        outln!(
            "Done in {:.1} s: {} devices provisioned ({:.0}/s), 1 refused over quota, audit bundle {}.",
            report.seconds,
            report.devices_issued,
            report.issuance_per_second,
            report.audit_bundle.display()
        )?;
        let c = &report.cloud;
        outln!(
            "Cloud: {} of {} genuine devices admitted; refused: {}.",
            c.admitted,
            c.genuine_connected,
            c.refused
                .iter()
                .map(|r| format!("{} [{}]", r.attacker, r.reason))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        outln!(
            "The key stores' passphrase is in {}; run stamp on these directories with",
            report.passphrase_file.display()
        )?;
        outln!(
            "  export STAMP_PASSPHRASE_FILE={}  (or --passphrase-file FILE), e.g. stamp site status --dir {}",
            report.passphrase_file.display(),
            report.site_dir.display()
        )?;
        outln!("Everything is in {}; check a device with:", report.dir.display())?;
        if let Some(serial) = first {
            let d = report.devices_dir.join(serial.to_string());
            outln!(
                "  openssl verify -x509_strict -purpose sslclient -CAfile {} -untrusted {} {}",
                report.root_cert.display(),
                report.site_issuing_ca_cert.display(),
                d.join("device.crt").display()
            )?;
        }
        Ok(())
    })
}
