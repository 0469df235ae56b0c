//! Signing throughput of a software key and of a SoftHSM2 token key, with 1 and 2 threads.
//!
//! ```sh
//! cargo run --release -p stamp-keys --example sign_throughput -- [SECONDS]
//! ```
//!
//! Makes its own SoftHSM2 token in a temporary directory (softhsm2-util must be installed; the
//! module is `$TEST_PKCS11_MODULE` or Debian's `/usr/lib/softhsm/libsofthsm2.so`) and prints a
//! Markdown table of signatures per second (each over a distinct 300-byte message, the size of a
//! to-be-signed device certificate), then of certificates per second: a certificate built from
//! stamp's station profile and signed by a P-256 issuing key, the work of issuing one device
//! certificate minus checking the device's request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use stamp_core::cert;
use stamp_core::key::{SignatureAlgorithm, Signer};
use stamp_core::profile::{self, Holder, Profile, Serial, Validity};
use stamp_keys::pkcs11::{Pin, PinSource, Pkcs11Config, Pkcs11Store, Pkcs11Uri};
use stamp_keys::soft::SoftKeyStore;
use stamp_keys::{KeyStore, Passphrase};

fn rate(signer: &Arc<dyn Signer>, threads: usize, seconds: f64) -> f64 {
    run(threads, seconds, {
        let signer = signer.clone();
        move |t, n| {
            let mut msg = vec![t as u8; 300];
            msg[..8].copy_from_slice(&n.to_le_bytes());
            signer.sign(&msg).unwrap();
        }
    })
}

/// Runs `op(thread, n)` on `threads` threads for `seconds`; operations per second.
fn run(threads: usize, seconds: f64, op: impl Fn(usize, u64) + Send + Sync + Clone + 'static) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, stop, count) = (op.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(t, n);
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("SECONDS"))
        .unwrap_or(3.0);
    let module = std::env::var_os("TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("softhsm2.conf");
    std::fs::create_dir(tmp.path().join("tokens")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tmp.path().join("tokens").display()
        ),
    )
    .unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let ok = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--so-pin",
            "12345678",
            "--pin",
            "1234",
        ])
        .output()
        .expect("softhsm2-util (apt-get install softhsm2)")
        .status
        .success();
    assert!(ok, "softhsm2-util --init-token failed");

    let soft = SoftKeyStore::new(tmp.path(), Passphrase::new("benchmark passphrase".into()));
    let hsm = Pkcs11Store::new(
        Pkcs11Config {
            module: Some(module),
            pin: PinSource::Given(Pin::new("1234".into())),
            ..Default::default()
        },
        Some(Pkcs11Uri::parse_token("pkcs11:token=bench").unwrap()),
    );
    println!("| key | algorithm | 1 thread (signatures/s) | 2 threads (signatures/s) |");
    println!("|---|---|---:|---:|");
    for alg in [
        SignatureAlgorithm::EcdsaP256Sha256,
        SignatureAlgorithm::EcdsaP384Sha384,
        SignatureAlgorithm::Ed25519,
    ] {
        for (name, store) in [
            ("software (file:)", &soft as &dyn KeyStore),
            ("SoftHSM2 (pkcs11:)", &hsm as &dyn KeyStore),
        ] {
            let label = format!("bench-{}", alg.name());
            let (_, signer) = store.generate_signer(&label, alg).unwrap();
            let signer: Arc<dyn Signer> = Arc::from(signer);
            let one = rate(&signer, 1, seconds);
            let two = rate(&signer, 2, seconds);
            println!("| {name} | {} | {one:.0} | {two:.0} |", alg.name());
        }
    }

    println!();
    println!("| issuing key | 1 thread (certificates/s) | 2 threads (certificates/s) |");
    println!("|---|---:|---:|");
    for (name, store) in [
        ("software (file:)", &soft as &dyn KeyStore),
        ("SoftHSM2 (pkcs11:)", &hsm as &dyn KeyStore),
    ] {
        let (_, ca) = store
            .generate_signer("bench-issuing-ca", SignatureAlgorithm::EcdsaP256Sha256)
            .unwrap();
        let ca: Arc<dyn Signer> = Arc::from(ca);
        let now = time::OffsetDateTime::now_utc();
        let ca_cert = Arc::new(
            profile::self_signed_root(
                ca.as_ref(),
                "Bench",
                Validity::starting(now, Profile::OemRoot.default_lifetime()),
                Serial::from_random([7; 16]),
            )
            .unwrap(),
        );
        let device = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let device_key = Arc::new(device.public_key().as_ref().to_vec());
        let issue = move |t: usize, n: u64| {
            let mut serial = [0u8; 16];
            serial[..8].copy_from_slice(&n.to_le_bytes());
            serial[8] = t as u8 + 1;
            profile::issue(
                Profile::Station,
                "Bench",
                &Holder::Station {
                    site: "bench".parse().unwrap(),
                    name: format!("line-{t}-{n}"),
                },
                &cert::subject_key(SignatureAlgorithm::EcdsaP256Sha256.rcgen(), &device_key),
                Validity::starting(now, Profile::Station.default_lifetime()),
                Serial::from_random(serial),
                &profile::Issuer {
                    cert_der: &ca_cert,
                    signer: ca.as_ref(),
                },
            )
            .unwrap();
        };
        let one = run(1, seconds, issue.clone());
        let two = run(2, seconds, issue);
        println!("| {name} | {one:.0} | {two:.0} |");
    }
}
