//! The demo's cloud steps, after HQ has reconciled the site's audit log: HQ revokes one device
//! and exports the signed registry; the gateway (stamp-cloud) starts in this process on a
//! loopback port; genuine devices connect with the stamps and keys the simulator saved and are
//! admitted; a counterfeit, a clone, an over-range device, the revoked device, a second key for
//! a provisional serial and a clock-shifted device for a serial the site hid from its log connect
//! over the same mutual TLS and must each be refused with the reason the verifier or the gateway
//! gives for that attack.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use stamp_cloud::client::{self, DeviceCredentials};
use stamp_cloud::gateway::{self, Gateway, ServerIdentity};
use stamp_core::entitlement::{DeviceKeyType, Grant};
use stamp_core::key::{SignatureAlgorithm, Signer};
use stamp_core::profile::{self, Holder, Issuer, Profile, Serial, Validity};
use stamp_core::registry::{Reason, VerifiedRegistry};
use stamp_core::{cert, SiteId};
use stamp_keys::soft::SoftSigner;
use stamp_keys::{KeyConfig, KeyRef, KeyStore};

use super::Narrator;

/// Most genuine devices that connect.
const GENUINE: usize = 8;
/// Devices HQ adds to the grant before the registry export (serials above the frontier).
const MORE_QUOTA: u64 = 10;
/// Why the demo revokes its device.
const REVOKE_REASON: &str = "reported stolen; its key may be in other hands";

/// What the demo's cloud steps need from the steps before.
pub(super) struct Inputs<'a> {
    pub dir: &'a Path,
    pub hq_dir: &'a Path,
    pub site_dir: &'a Path,
    pub site_id: &'a SiteId,
    pub entitlement_id: &'a str,
    /// The OEM root's SHA-256, pinned when the registry is read.
    pub root_pin: &'a [u8; 32],
    /// Where the simulator saved each device's stamp (`<serial>/device.crt`, `chain.pem`,
    /// `device.key`).
    pub devices_dir: &'a Path,
    /// The simulated devices' serials, sorted; HQ reconciled them all.
    pub serials: &'a [u64],
    pub keys: &'a dyn Fn() -> anyhow::Result<KeyConfig>,
}

/// The cloud section of the demo's report.
#[derive(Serialize)]
pub(super) struct Cloud {
    /// The signed registry HQ exported.
    pub registry: PathBuf,
    /// Its sequence.
    pub registry_sequence: u64,
    /// Genuine devices in it.
    pub registry_devices: usize,
    /// Revocations in it.
    pub registry_revocations: usize,
    /// The device HQ revoked.
    pub revoked_serial: u64,
    /// The site CA's CRL listing it (PEM), with its number and size.
    pub site_crl: PathBuf,
    /// What the site's CRL holds.
    pub site_crl_report: stamp_core::crl::CrlReport,
    /// Where the gateway listened.
    pub gateway: String,
    /// The gateway's self-signed certificate (devices' trust anchor for it).
    pub gateway_cert: PathBuf,
    /// Genuine devices that connected.
    pub genuine_connected: u64,
    /// Of them, admitted.
    pub admitted: u64,
    /// The attackers' devices, each refused with its expected reason.
    pub refused: Vec<Refusal>,
    /// The attackers' certificates and keys.
    pub attackers_dir: PathBuf,
}

/// One attacker's connection and the gateway's answer.
#[derive(Serialize, Clone)]
pub(super) struct Refusal {
    /// `counterfeit`, `clone`, `over-range`, `revoked`, `provisional-clone` (after another key
    /// took the same unused serial provisionally) or `log-skipped` (a serial the site hid from its
    /// log, signed with its clock an hour slow).
    pub attacker: &'static str,
    /// How its certificate was made.
    pub made_by: &'static str,
    /// The device serial its certificate names.
    pub device_serial: u64,
    /// The reason code the demo expects.
    pub expected: &'static str,
    /// The reason code the gateway gave.
    pub reason: String,
    /// The gateway's detail.
    pub detail: String,
}

/// A device's stamp on disk, in the simulator's layout.
struct Stamp {
    dir: PathBuf,
}

impl Stamp {
    /// Reads the chain (device certificate first) and the key, PEM.
    fn credentials(&self) -> anyhow::Result<(Vec<u8>, zeroize::Zeroizing<Vec<u8>>)> {
        let read = |name: &str| {
            let p = self.dir.join(name);
            std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
        };
        let mut chain = read("device.crt")?;
        chain.push(b'\n');
        chain.extend(read("chain.pem")?);
        Ok((chain, zeroize::Zeroizing::new(read("device.key")?)))
    }

    /// Writes a stamp: the device certificate, the chain it presents, its key (0600).
    fn write(dir: PathBuf, leaf: &[u8], chain: &[&[u8]], key_pkcs8: &[u8]) -> anyhow::Result<Stamp> {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join("device.crt"), cert::to_pem(leaf))?;
        let chain: String = chain.iter().map(|c| cert::to_pem(c)).collect();
        std::fs::write(dir.join("chain.pem"), chain)?;
        let key = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", key_pkcs8.to_vec())));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("device.key"))?;
        f.write_all(key.as_bytes())?;
        Ok(Stamp { dir })
    }
}

/// An attacker's device: its stamp, and what the gateway must answer.
struct Attacker {
    name: &'static str,
    made_by: &'static str,
    serial: u64,
    expected: Reason,
    stamp: Stamp,
    /// A device with the same serial that connects first and is admitted as provisional: the
    /// one key the gateway lets a provisional serial have.
    held_by: Option<Stamp>,
}

fn random_serial() -> anyhow::Result<Serial> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("system random generator failed"))?;
    Ok(Serial::from_random(b))
}

/// A device key made on the attacker's bench: PKCS#8 and SubjectPublicKeyInfo.
fn device_key() -> anyhow::Result<stamp_keys::device::GeneratedDeviceKey> {
    Ok(stamp_keys::device::generate(DeviceKeyType::P256)?)
}

/// The attackers' devices.
fn forge(
    inp: &Inputs<'_>,
    reg: &VerifiedRegistry,
    revoked: &Stamp,
    revoked_serial: u64,
    copied: u64,
    skipped: u64,
    out: &Path,
) -> anyhow::Result<Vec<Attacker>> {
    let now = super::super::now();
    // What the site's issuing CA signs with: the entitlement's device profile.
    let site = stamp_site::Site::open(inp.site_dir, (inp.keys)()?)?;
    let grant: Grant = site
        .store()
        .grant(inp.entitlement_id)?
        .with_context(|| format!("no entitlement {} at the site", inp.entitlement_id))?
        .0
        .grant;
    let site_ca = site
        .store()
        .certificate(Profile::SiteIssuingCa)?
        .context("the site has no issuing CA certificate")?;
    let site_chain = [site_ca.as_slice(), reg.root_der()];

    // 1. A counterfeit: the counterfeiter's own root and issuing CA, named exactly like the OEM's
    //    (the registry is public, so the names are), signing a device certificate with the
    //    product's profile and the serial of a genuine device. Only the signatures differ.
    let rogue_root_key = SoftSigner::ephemeral("rogue-root", SignatureAlgorithm::EcdsaP256Sha256)?;
    let rogue_root = profile::self_signed_root(
        &rogue_root_key,
        reg.org(),
        Validity::starting(now, Profile::OemRoot.default_lifetime()),
        random_serial()?,
    )?;
    let rogue_ca_key = SoftSigner::ephemeral("rogue-ca", SignatureAlgorithm::EcdsaP256Sha256)?;
    let rogue_ca = profile::issue(
        Profile::SiteIssuingCa,
        reg.org(),
        &Holder::Site(inp.site_id.clone()),
        &cert::subject_key(rogue_ca_key.algorithm().rcgen(), rogue_ca_key.public_key()),
        Validity::starting(now, Profile::SiteIssuingCa.default_lifetime()),
        random_serial()?,
        &Issuer {
            cert_der: &rogue_root,
            signer: &rogue_root_key,
        },
    )?;
    ensure!(
        cert::parse(&rogue_ca)?.subject().as_raw() == cert::parse(&site_ca)?.subject().as_raw(),
        "the rogue CA's name differs from the site issuing CA's"
    );
    let key = device_key()?;
    let leaf = stamp_core::device::issue(
        &grant,
        copied,
        &key.spki_der,
        now,
        random_serial()?,
        &Issuer {
            cert_der: &rogue_ca,
            signer: &rogue_ca_key,
        },
    )?;
    let counterfeit = Attacker {
        name: "counterfeit",
        made_by:
            "a rogue CA named exactly like the site issuing CA, under a rogue root named like the OEM root",
        serial: copied,
        expected: Reason::ChainInvalid,
        stamp: Stamp::write(
            out.join("counterfeit"),
            &leaf,
            &[&rogue_ca, &rogue_root],
            &key.pkcs8,
        )?,
        held_by: None,
    };

    // 2 and 3. What only the holder of the site's issuing key can make: a compromised or
    //    over-producing site signing outside its service and its audit log.
    let key_ref = KeyRef::parse(&site.store().key_ref(Profile::SiteIssuingCa)?)?;
    drop(site);
    let signer = stamp_keys::open_store(inp.site_dir, (inp.keys)()?).open_signer(&key_ref)?;
    let site_issuer = Issuer {
        cert_der: &site_ca,
        signer: signer.as_ref(),
    };
    // A clone: a genuine device's serial, another key.
    let key = device_key()?;
    let leaf = stamp_core::device::issue(&grant, copied, &key.spki_der, now, random_serial()?, &site_issuer)?;
    let clone = Attacker {
        name: "clone",
        made_by: "the site's issuing CA key (a compromised site): a genuine device's serial with another key",
        serial: copied,
        expected: Reason::Clone,
        stamp: Stamp::write(out.join("clone"), &leaf, &site_chain, &key.pkcs8)?,
        held_by: None,
    };
    // Over-production: the first serial past every range HQ allocated.
    let past = reg
        .entitlements()
        .iter()
        .flat_map(|e| e.serial_ranges.iter().map(|r| r.last))
        .max()
        .context("the registry allocates no serial range")?
        .checked_add(1)
        .context("the serial ranges end at the largest serial")?;
    ensure!(
        reg.entitlements()
            .iter()
            .flat_map(|e| e.serial_ranges.iter())
            .all(|r| !(r.first..=r.last).contains(&past)),
        "serial {past} is inside an allocated range"
    );
    let key = device_key()?;
    let leaf = stamp_core::device::issue(&grant, past, &key.spki_der, now, random_serial()?, &site_issuer)?;
    let over = Attacker {
        name: "over-range",
        made_by: "the site's issuing CA key (a compromised site): a serial outside every range HQ allocated",
        serial: past,
        expected: Reason::SerialOutOfRange,
        stamp: Stamp::write(out.join("over-range"), &leaf, &site_chain, &key.pkcs8)?,
        held_by: None,
    };
    // 4. The revoked device, with its own genuine stamp.
    let revoked = Attacker {
        name: "revoked",
        made_by: "the genuine stamp of the device HQ revoked",
        serial: revoked_serial,
        expected: Reason::Revoked,
        stamp: Stamp {
            dir: revoked.dir.clone(),
        },
        held_by: None,
    };
    // 5. Provisional clones: the next unused serial above the grant's reconciled serial frontier
    //    (what the registry admits provisionally), signed twice with two keys. The first key to
    //    connect holds the serial at the gateway; the second is refused as a clone.
    let e = reg
        .entitlements()
        .iter()
        .find(|e| e.entitlement_id == inp.entitlement_id)
        .with_context(|| format!("no entitlement {} in the registry", inp.entitlement_id))?;
    let unused = match e.serial_frontier {
        Some(f) => f.checked_add(1),
        None => e.serial_ranges.iter().map(|r| r.first).min(),
    }
    .filter(|n| e.serial_ranges.iter().any(|r| (r.first..=r.last).contains(n)))
    .context("no unused serial above the reconciled frontier in the grant's first range")?;
    let mut provisional = Vec::new();
    for name in ["provisional-held", "provisional-clone"] {
        let key = device_key()?;
        let leaf =
            stamp_core::device::issue(&grant, unused, &key.spki_der, now, random_serial()?, &site_issuer)?;
        provisional.push(Stamp::write(out.join(name), &leaf, &site_chain, &key.pkcs8)?);
    }
    let [held, second] = <[Stamp; 2]>::try_from(provisional)
        .map_err(|_| anyhow::anyhow!("two provisional stamps expected"))?;
    let provisional_clone = Attacker {
        name: "provisional-clone",
        made_by:
            "the site's issuing CA key (a compromised site): an unused serial above the reconciled frontier, \
                  signed for a second key after a first key took it",
        serial: unused,
        expected: Reason::Clone,
        stamp: second,
        held_by: Some(held),
    };
    // 6. A clock-shifted counterfeit: the serial the site hid from its engine (so from its log),
    //    signed with a clock an hour slow, as if made before the site's last export. Coverage
    //    comes from serials, not clocks: it is below the grant's reconciled serial frontier and
    //    not a genuine device.
    let key = device_key()?;
    let slow = now - time::Duration::hours(1);
    let leaf = stamp_core::device::issue(
        &grant,
        skipped,
        &key.spki_der,
        slow,
        random_serial()?,
        &site_issuer,
    )?;
    let log_skipped = Attacker {
        name: "log-skipped",
        made_by: "the site's issuing CA key with the site's clock an hour slow (a compromised site): the serial it \
                  hid from its engine and its log",
        serial: skipped,
        expected: Reason::NotInLog,
        stamp: Stamp::write(out.join("log-skipped"), &leaf, &site_chain, &key.pkcs8)?,
        held_by: None,
    };
    Ok(vec![
        counterfeit,
        clone,
        over,
        revoked,
        provisional_clone,
        log_skipped,
    ])
}

/// What [`skip_a_serial`] did.
struct Skipped {
    /// The serial the engine was made to skip.
    skipped: u64,
    /// The serial it issued next.
    issued: u64,
    /// Devices HQ recorded from the export.
    recorded: u64,
}

/// A site owner with the site's database hides the grant's next serial from the engine: a row
/// in the site's device table that no log entry backs (so the engine goes past it and the log
/// never holds it). The site then issues one device honestly, exports its log to `bundle`, and
/// HQ reconciles it.
fn skip_a_serial(inp: &Inputs<'_>, bundle: &Path) -> anyhow::Result<Skipped> {
    let now = super::super::now();
    let site = stamp_site::Site::open(inp.site_dir, (inp.keys)()?)?;
    let grant: Grant = site
        .store()
        .grant(inp.entitlement_id)?
        .with_context(|| format!("no entitlement {} at the site", inp.entitlement_id))?
        .0
        .grant;
    drop(site);
    let db_path = inp.site_dir.join("stamp-site.db");
    let db =
        rusqlite::Connection::open(&db_path).with_context(|| format!("cannot open {}", db_path.display()))?;
    db.busy_timeout(Duration::from_secs(10))?;
    let max: Option<i64> = db.query_row(
        "SELECT MAX(device_serial) FROM devices WHERE entitlement_id = ?1",
        [inp.entitlement_id],
        |r| r.get(0),
    )?;
    let after = max.map(|m| m as u64);
    let mut ranges = grant.serial_ranges.clone();
    ranges.sort_by_key(|r| r.first);
    let skipped = ranges
        .iter()
        .find_map(|r| match after {
            None => Some(r.first),
            Some(a) if a < r.first => Some(r.first),
            Some(a) if a < r.last => Some(a + 1),
            Some(_) => None,
        })
        .context("the grant has no serial left to skip")?;
    let mut spki = [0u8; 32];
    SystemRandom::new()
        .fill(&mut spki)
        .map_err(|_| anyhow::anyhow!("system random generator failed"))?;
    db.execute(
        "INSERT INTO devices (device_serial, entitlement_id, cert_sha256, spki_sha256, certificate, issued_ms, station, log_index)
         VALUES (?1, ?2, x'00', ?3, x'00', ?4, 'line-1', 0)",
        rusqlite::params![
            skipped as i64,
            inp.entitlement_id,
            spki.as_slice(),
            stamp_site::unix_ms(now)
        ],
    )?;
    drop(db);

    let mut site = stamp_site::Site::open(inp.site_dir, (inp.keys)()?)?;
    let engine = stamp_site::engine::Engine::start(&site)?;
    let device = SoftSigner::ephemeral("device", SignatureAlgorithm::EcdsaP256Sha256)?;
    let csr = stamp_core::csr::create(&device, "device")?;
    let issued = engine.issue(inp.entitlement_id, &csr, "line-1", now);
    engine.shutdown();
    let issued = issued?.device_serial;
    ensure!(
        issued > skipped,
        "the engine issued serial {issued}, not one past {skipped}"
    );
    site.export_audit(bundle, None, now)?;
    drop(site);
    let mut hq = stamp_hq::Hq::open(inp.hq_dir, (inp.keys)()?)?;
    let file = std::fs::File::open(bundle).with_context(|| format!("cannot open {}", bundle.display()))?;
    let report = hq.reconcile(std::io::BufReader::new(file), now)?;
    ensure!(
        report.ok && report.devices_recorded == 1,
        "HQ's reconciliation of the second export: ok {}, {} device(s) recorded",
        report.ok,
        report.devices_recorded
    );
    Ok(Skipped {
        skipped,
        issued,
        recorded: report.devices_recorded,
    })
}

/// Connects a device to the gateway.
fn connect(server: &str, ca_pem: &[u8], stamp: &Stamp) -> anyhow::Result<stamp_cloud::Reply> {
    let (chain_pem, key_pem) = stamp.credentials()?;
    client::connect(
        server,
        ca_pem,
        &DeviceCredentials {
            chain_pem: &chain_pem,
            key_pem: &key_pem,
        },
        Duration::ZERO,
    )
    .with_context(|| format!("device {} could not reach the gateway", stamp.dir.display()))
}

/// Runs the cloud steps.
pub(super) fn run(n: &mut Narrator, inp: &Inputs<'_>) -> anyhow::Result<Cloud> {
    let now = super::super::now;
    let [first, .., last] = inp.serials else {
        bail!("the cloud steps need at least 2 devices (one is revoked)");
    };
    let (first, revoked_serial) = (*first, *last);
    let stamp_of = |serial: u64| Stamp {
        dir: inp.devices_dir.join(serial.to_string()),
    };

    let cloud_dir = inp.dir.join("cloud");
    std::fs::create_dir_all(&cloud_dir).with_context(|| format!("cannot create {}", cloud_dir.display()))?;
    let update = cloud_dir.join("revocation-update.cose");
    let revocation = n.step("HQ: revoke one device (reported stolen)", || {
        let mut hq = stamp_hq::Hq::open(inp.hq_dir, (inp.keys)()?)?;
        Ok(hq.revoke(
            &stamp_hq::cloud::RevokeTarget::Serial(revoked_serial),
            REVOKE_REASON,
            Some(&update),
            now(),
        )?)
    })?;
    n.say(format!(
        "device {revoked_serial} revoked ({}); verifiers learn it from the next registry, its site from an entitlement update",
        revocation.reason
    ));
    let site_crl_path = cloud_dir.join("site.crl");
    let site_crl = n.step(
        "Site: apply HQ's revocation and publish the site CA's CRL (for X.509 verifiers)",
        || {
            let mut site = stamp_site::Site::open(inp.site_dir, (inp.keys)()?)?;
            let bytes =
                std::fs::read(&update).with_context(|| format!("cannot read {}", update.display()))?;
            let verified = site.verify_entitlement(&bytes, now())?;
            site.apply_entitlement(verified, now())?;
            let (der, report) = site.crl(7, now())?;
            super::super::write_crl(&site_crl_path, &der, false, false)?;
            // Read back as a verifier would: signed by the site CA, listing the revoked device.
            let ca = site
                .store()
                .certificate(stamp_core::profile::Profile::SiteIssuingCa)?
                .context("the site has no issuing CA certificate")?;
            let info = stamp_core::crl::verify(&der, &ca)?;
            if info.revoked.len() != 1 {
                bail!(
                    "the site CRL lists {} certificates, not the revoked device's one",
                    info.revoked.len()
                );
            }
            Ok(report)
        },
    )?;
    n.say(format!(
        "CRL number {} lists {} certificate: {}",
        site_crl.number,
        site_crl.revoked,
        site_crl_path.display()
    ));

    // The grant is used up: every serial HQ allocated is at or below the reconciled frontier, so
    // nothing can be provisional. HQ grants more, which opens the provisional allowance the
    // last attacker tries to stretch.
    let more = cloud_dir.join("more-quota.cose");
    let added = n.step(
        "HQ: grant 10 more devices (a new serial range, not used yet); the site applies it",
        || {
            let mut hq = stamp_hq::Hq::open(inp.hq_dir, (inp.keys)()?)?;
            let report = hq.amend(
                &stamp_hq::entitle::AmendRequest {
                    entitlement_id: inp.entitlement_id.to_owned(),
                    add_quota: MORE_QUOTA,
                    not_before: None,
                    not_after: None,
                    status: None,
                    revoke: None,
                },
                &more,
                now(),
            )?;
            drop(hq);
            let mut site = stamp_site::Site::open(inp.site_dir, (inp.keys)()?)?;
            let bytes = std::fs::read(&more).with_context(|| format!("cannot read {}", more.display()))?;
            let verified = site.verify_entitlement(&bytes, now())?;
            site.apply_entitlement(verified, now())?;
            Ok(report)
        },
    )?;
    n.say(format!(
        "package {} adds {MORE_QUOTA} devices: {}",
        added.sequence,
        more.display()
    ));

    let bundle2 = cloud_dir.join("audit-2.bundle");
    let skip = n.step(
        "Site owner (compromised): hide the next serial from the engine (a device row its log never gets) and go on issuing; HQ reconciles the next export",
        || skip_a_serial(inp, &bundle2),
    )?;
    n.say(format!(
        "serial {} is missing from the log; the engine issued {} next; HQ recorded {} device(s), so the grant's reconciled serial frontier is {}",
        skip.skipped, skip.issued, skip.recorded, skip.issued
    ));

    let registry_path = cloud_dir.join("registry.cose");
    let (reg, exported) = n.step(
        "HQ: export the signed registry for the cloud (site CAs, ranges, genuine devices, revocations)",
        || {
            let mut hq = stamp_hq::Hq::open(inp.hq_dir, (inp.keys)()?)?;
            let (bytes, report) = hq.export_registry(30, now())?;
            stamp_store::write_atomic(&registry_path, &bytes, 0o644)?;
            // The cloud reads it as any verifier would: the OEM root pinned.
            let reg = stamp_core::registry::verify(&bytes, Some(inp.root_pin), 0, now())?;
            Ok((reg, report))
        },
    )?;
    n.say(format!(
        "{}: sequence {}, {} genuine devices, {} revocation(s), {} bytes, signed by the HQ authority",
        registry_path.display(),
        exported.sequence,
        exported.devices,
        exported.revocations,
        exported.bytes
    ));

    let attackers_dir = inp.dir.join("attackers");
    let attackers = n.step(
        "Attackers: forge a counterfeit under a rogue CA; with the site's issuing key, a clone, an over-range device, two keys for one provisional serial and the hidden serial under a slow clock",
        || {
            forge(
                inp,
                &reg,
                &stamp_of(revoked_serial),
                revoked_serial,
                first,
                skip.skipped,
                &attackers_dir,
            )
        },
    )?;
    for a in &attackers {
        n.say(format!("{} (serial {}): {}", a.name, a.serial, a.made_by));
    }

    let (sequence, devices, revocations) = (reg.sequence(), reg.device_count(), reg.revocation_count());
    let gateway_cert = cloud_dir.join("gateway.pem");
    let running = n.step(
        "Cloud: start the gateway on a loopback port (TLS, device certificate required)",
        || {
            let (identity, pem) =
                ServerIdentity::self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
            stamp_store::write_atomic(&gateway_cert, pem.as_bytes(), 0o644)?;
            let config = gateway::tls_config(identity)?;
            Ok(gateway::Running::start(
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                config,
                Arc::new(Gateway::new(
                    reg,
                    stamp_cloud::state::GatewayState::open(&cloud_dir.join("gateway-state.db"))?,
                )?),
            )?)
        },
    )?;
    let server = running.addr().to_string();
    n.say(format!(
        "listening on {server}, judging devices with registry {sequence}; its certificate is {}",
        gateway_cert.display()
    ));
    let ca_pem = std::fs::read(&gateway_cert)?;

    let genuine: Vec<u64> = inp
        .serials
        .iter()
        .copied()
        .filter(|s| *s != revoked_serial)
        .take(GENUINE)
        .collect();
    let admitted = n.step(
        "Devices: genuine devices connect over mutual TLS with the keys they made",
        || {
            let mut admitted = 0u64;
            for &serial in &genuine {
                let r = connect(&server, &ca_pem, &stamp_of(serial))?;
                if !r.admitted || r.standing != "registered" || r.device_serial != Some(serial) {
                    bail!(
                        "genuine device {serial} was not admitted as registered: {} [{}] {}",
                        r.standing,
                        r.reason.unwrap_or_default(),
                        r.detail
                    );
                }
                admitted += 1;
            }
            Ok(admitted)
        },
    )?;
    n.say(format!(
        "{admitted} of {} admitted as registered (HQ reconciled each certificate)",
        genuine.len()
    ));

    let refused = n.step(
        "Attackers: each device connects and must be refused for its own reason",
        || {
            let mut out = Vec::new();
            for a in &attackers {
                if let Some(first) = &a.held_by {
                    let r = connect(&server, &ca_pem, first)?;
                    if !r.admitted || r.standing != "provisional" {
                        bail!(
                            "the first key of serial {} was not admitted as provisional: {} [{}] {}",
                            a.serial,
                            r.standing,
                            r.reason.unwrap_or_default(),
                            r.detail
                        );
                    }
                }
                let r = connect(&server, &ca_pem, &a.stamp)?;
                let reason = r.reason.clone().unwrap_or_default();
                if r.admitted || reason != a.expected.code() {
                    bail!(
                        "the {} device was {} [{}] ({}), not refused as {}",
                        a.name,
                        if r.admitted { "admitted" } else { "refused" },
                        reason,
                        r.detail,
                        a.expected.code()
                    );
                }
                out.push(Refusal {
                    attacker: a.name,
                    made_by: a.made_by,
                    device_serial: a.serial,
                    expected: a.expected.code(),
                    reason,
                    detail: r.detail,
                });
            }
            Ok(out)
        },
    )?;
    for r in &refused {
        n.say(format!(
            "{} (serial {}): refused [{}] {}",
            r.attacker, r.device_serial, r.reason, r.detail
        ));
    }

    n.step("Cloud: stop the gateway", || Ok(running.stop()?))?;

    Ok(Cloud {
        registry: registry_path,
        registry_sequence: sequence,
        registry_devices: devices,
        registry_revocations: revocations,
        revoked_serial,
        site_crl: site_crl_path,
        site_crl_report: site_crl,
        gateway: server,
        gateway_cert,
        genuine_connected: genuine.len() as u64,
        admitted,
        refused,
        attackers_dir,
    })
}
