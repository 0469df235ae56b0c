//! `stamp demo`: the main job on embedded defaults, narrated.

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
/// installs them; HQ grants the site a production run (an entitlement sealed to the site) and the
/// site verifies and applies it. Every file stays in the directory for you to inspect.
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
    /// Device quota of the demo entitlement.
    #[arg(long, value_name = "N", default_value = "1000")]
    quota: u64,
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
    steps: Vec<Step>,
    seconds: f64,
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
        self.steps.push(Step { name, seconds });
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
            quota: a.quota,
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
        steps: n.steps,
        seconds: started.elapsed().as_secs_f64(),
    };
    emit(g.json, &report, || {
        println!("Enrollment and entitlement complete in {:.1} s.", report.seconds);
        println!(
            "Everything is in {}; check a certificate with:",
            report.dir.display()
        );
        println!(
            "  openssl verify -x509_strict -CAfile {} {}",
            report.root_cert.display(),
            report.site_issuing_ca_cert.display()
        );
    })
}
