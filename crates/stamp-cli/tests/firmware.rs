//! Code signing through the real binary, cross-checked with the vendors' own tools: MCUboot's
//! `imgtool` and Espressif's `espsecure` (installed from PyPI by `scripts/test`, which installs
//! tests/requirements.txt). A missing tool fails the test, never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// Runs `python3 -m MODULE ARGS`; panics with how to install the tool when it is missing.
fn py_tool(module: &str, args: &[&str]) -> Output {
    let out = Command::new(stamp_testkit::python3())
        .arg("-m")
        .arg(module)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is required by this test ({e}); run scripts/test, which installs it")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named") {
        panic!(
            "the Python module {module} is required by this test ({}); run scripts/test, which installs \
             tests/requirements.txt",
            stderr.trim()
        );
    }
    out
}

fn imgtool(args: &[&str]) -> Output {
    py_tool("imgtool.main", args)
}

fn espsecure(args: &[&str]) -> Output {
    py_tool("espsecure", args)
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// imgtool's verdict on an image.
fn imgtool_accepts(key: &Path, image: &Path) -> bool {
    let o = imgtool(&["verify", "-k", s(key), s(image)]);
    let ok = o.status.success() && text(&o).contains("Image was correctly validated");
    assert!(
        ok || !o.status.success(),
        "imgtool exited 0 without validating: {}",
        text(&o)
    );
    ok
}

/// espsecure's verdict on an image.
fn espsecure_accepts(key: &Path, image: &Path) -> bool {
    let o = espsecure(&[
        "verify-signature",
        "--version",
        "2",
        "--keyfile",
        s(key),
        s(image),
    ]);
    let ok = o.status.success() && text(&o).contains("verification successful");
    assert!(
        ok || !o.status.success(),
        "espsecure exited 0 without verifying: {}",
        text(&o)
    );
    ok
}

fn stamp_accepts(pass: &Path, format: &str, key: &Path, image: &Path, min: Option<&str>) -> bool {
    let mut args = vec![
        "device",
        "verify-firmware",
        "--format",
        format,
        "--key-file",
        s(key),
    ];
    if let Some(m) = min {
        args.extend(["--min-version", m]);
    }
    args.push(s(image));
    let out = stamp(pass).args(&args).output();
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    }
    out.status.success()
}

fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Hq {
    tmp: tempfile::TempDir,
    pass: PathBuf,
    dir: PathBuf,
}

impl Hq {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let pass = secret_file(tmp.path(), "pass", "firmware test passphrase");
        let dir = tmp.path().join("hq");
        stamp(&pass)
            .hq("init")
            .dir(&dir)
            .args(&["--org", "Acme Sensors"])
            .json();
        Hq { tmp, pass, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn add_key(&self, name: &str, alg: &str) -> serde_json::Value {
        stamp(&self.pass)
            .hq("add-firmware-key")
            .dir(&self.dir)
            .args(&["--name", name, "--algorithm", alg])
            .json()
    }

    fn sign(
        &self,
        key: &str,
        format: &str,
        version: &str,
        input: &Path,
        out: &Path,
        extra: &[&str],
    ) -> serde_json::Value {
        stamp(&self.pass)
            .hq("sign-firmware")
            .dir(&self.dir)
            .args(&["--key", key, "--format", format, "--version", version])
            .args(&[s(input), "-o", s(out)])
            .args(extra)
            .json()
    }

    /// The key's private key, decrypted by openssl (for the vendor tools' own signing).
    fn plain_private_key(&self, name: &str) -> PathBuf {
        let out = self.path(&format!("{name}.plain.pem"));
        let key = self.dir.join(format!("keys/firmware-{name}.key"));
        let o = openssl(&[
            "pkey",
            "-in",
            s(&key),
            "-passin",
            &format!("file:{}", s(&self.pass)),
            "-out",
            s(&out),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        out
    }
}

fn pubkey(k: &serde_json::Value) -> PathBuf {
    PathBuf::from(k["public_key"].as_str().unwrap())
}

fn firmware(len: usize, seed: u8) -> Vec<u8> {
    // Starts like a Cortex-M vector table (non-zero), so it is clearly a raw binary.
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn flip(path: &Path, out: &Path, at: usize) -> PathBuf {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x01;
    std::fs::write(out, &b).unwrap();
    out.to_owned()
}

#[test]
fn mcuboot_images_pass_imgtool_and_stamp_and_tampering_fails_both() {
    let hq = Hq::new();
    let app = hq.write("app.bin", &firmware(3000, 7));
    let algs = ["ecdsa-p256", "ed25519", "rsa3072"];
    let keys: Vec<serde_json::Value> = algs.iter().map(|a| hq.add_key(&format!("mcu-{a}"), a)).collect();
    for (alg, key) in algs.iter().zip(&keys) {
        let name = key["name"].as_str().unwrap();
        let pk = pubkey(key);
        // The key hash printed is imgtool's.
        let o = imgtool(&["getpubhash", "-k", s(&pk), "-e", "raw"]);
        assert!(o.status.success(), "{}", text(&o));
        let raw: String = o.stdout.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key["mcuboot_key_hash"].as_str().unwrap(), raw, "{alg}");

        let out = hq.path(&format!("{name}.signed.bin"));
        let r = hq.sign(name, "mcuboot", "1.4.2+77", &app, &out, &[]);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(r["sha256"].as_str().unwrap(), sha256_hex(&bytes));
        assert!(imgtool_accepts(&pk, &out), "{alg}: imgtool refused stamp's image");
        assert!(stamp_accepts(&hq.pass, "mcuboot", &pk, &out, Some("1.4.2")));
        let v = stamp(&hq.pass)
            .device("verify-firmware")
            .args(&["--format", "mcuboot", "--key-file", s(&pk), s(&out)])
            .json();
        assert_eq!(v["image"]["version"], "1.4.2+77");
        assert_eq!(v["image"]["image_hash"], r["image_digest"]);

        // Rollback below the minimum.
        assert!(!stamp_accepts(&hq.pass, "mcuboot", &pk, &out, Some("1.5.0")));
        // A modified image byte, header byte, hash TLV byte and signature byte: both refuse.
        let len = bytes.len();
        for at in [100usize, 20, 32 + 3000 + 8, len - 5] {
            let bad = flip(&out, &hq.path("tampered.bin"), at);
            assert!(
                !imgtool_accepts(&pk, &bad),
                "{alg}: imgtool accepted a flip at {at}"
            );
            assert!(
                !stamp_accepts(&hq.pass, "mcuboot", &pk, &bad, None),
                "{alg}: flip at {at}"
            );
        }
        // Truncated: both refuse.
        let cut = hq.write("cut.bin", &bytes[..len - 10]);
        assert!(!imgtool_accepts(&pk, &cut));
        assert!(!stamp_accepts(&hq.pass, "mcuboot", &pk, &cut, None));
        // Another key (of every type): both refuse.
        for other in keys.iter().filter(|k| k["name"] != key["name"]) {
            assert!(
                !imgtool_accepts(&pubkey(other), &out),
                "{alg} image, key {}",
                other["name"]
            );
            assert!(!stamp_accepts(&hq.pass, "mcuboot", &pubkey(other), &out, None));
        }
    }
}

#[test]
fn stamp_and_imgtool_build_the_same_images() {
    let hq = Hq::new();
    let key = hq.add_key("ed", "ed25519");
    let plain = hq.plain_private_key("ed");
    // Ed25519 is deterministic: stamp's image must equal imgtool's byte for byte, with a padded
    // header, and with a build-reserved 0x200 header area, a load address and a security counter.
    let app = hq.write("app.bin", &firmware(1234, 3));
    let mine = hq.path("stamp.bin");
    hq.sign("ed", "mcuboot", "2.0.1+5", &app, &mine, &[]);
    let theirs = hq.path("imgtool.bin");
    let o = imgtool(&[
        "sign",
        "--key",
        s(&plain),
        "--header-size",
        "0x20",
        "--pad-header",
        "--slot-size",
        "0x100000",
        "--version",
        "2.0.1+5",
        s(&app),
        s(&theirs),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&mine).unwrap(), std::fs::read(&theirs).unwrap());

    let mut reserved = vec![0u8; 0x200];
    reserved.extend_from_slice(&firmware(999, 9));
    let zephyr = hq.write("zephyr.bin", &reserved);
    let mine = hq.path("stamp2.bin");
    hq.sign(
        "ed",
        "mcuboot",
        "2.0.2",
        &zephyr,
        &mine,
        &[
            "--header-size",
            "0x200",
            "--header-reserved",
            "--load-addr",
            "0x20000000",
            "--security-counter",
            "42",
        ],
    );
    let o = imgtool(&[
        "sign",
        "--key",
        s(&plain),
        "--header-size",
        "0x200",
        "--slot-size",
        "0x100000",
        "--load-addr",
        "0x20000000",
        "--security-counter",
        "42",
        "--version",
        "2.0.2",
        s(&zephyr),
        s(&theirs),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&mine).unwrap(), std::fs::read(&theirs).unwrap());
    let v = stamp(&hq.pass)
        .device("verify-firmware")
        .args(&["--format", "mcuboot", "--key-file", s(&pubkey(&key)), s(&mine)])
        .json();
    assert_eq!(v["image"]["security_counter"], 42);
    assert_eq!(v["image"]["load_addr"], 0x2000_0000);

    // An image imgtool signs with an ECDSA key passes stamp's verifier.
    let ec = hq.add_key("ec", "ecdsa-p256");
    let plain = hq.plain_private_key("ec");
    let o = imgtool(&[
        "sign",
        "--key",
        s(&plain),
        "--header-size",
        "0x20",
        "--pad-header",
        "--slot-size",
        "0x100000",
        "--version",
        "3.1.0",
        s(&app),
        s(&theirs),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stamp_accepts(
        &hq.pass,
        "mcuboot",
        &pubkey(&ec),
        &theirs,
        Some("3.1.0")
    ));
    assert!(!stamp_accepts(&hq.pass, "mcuboot", &pubkey(&key), &theirs, None));
}

/// A minimal ESP-IDF app image: image header (magic 0xE9), a segment header, `esp_app_desc_t`.
fn esp_app(secure_version: u32, version: &str, len: usize) -> Vec<u8> {
    let mut v = firmware(len, 5);
    v[..32].fill(0);
    v[0] = 0xE9;
    v[1] = 1;
    v[32..36].copy_from_slice(&0xABCD_5432u32.to_le_bytes());
    v[36..40].copy_from_slice(&secure_version.to_le_bytes());
    v[40..80].fill(0);
    v[48..48 + version.len()].copy_from_slice(version.as_bytes());
    v
}

#[test]
fn esp32_images_pass_espsecure_and_stamp_and_tampering_fails_both() {
    let hq = Hq::new();
    let app = hq.write("app.bin", &esp_app(2, "v1.7.0", 5000));
    let algs = ["ecdsa-p256", "rsa3072"];
    let keys: Vec<serde_json::Value> = algs.iter().map(|a| hq.add_key(&format!("esp-{a}"), a)).collect();
    for (alg, key) in algs.iter().zip(&keys) {
        let name = key["name"].as_str().unwrap();
        let pk = pubkey(key);
        // The eFuse digest: stamp's file, stamp's JSON and espsecure agree.
        let digest_file = hq.path(&format!("{name}.digest"));
        let d = stamp(&hq.pass)
            .hq("firmware-key-digest")
            .dir(&hq.dir)
            .args(&["--key", name, "-o", s(&digest_file)])
            .json();
        let theirs = hq.path(&format!("{name}.espsecure.digest"));
        let o = espsecure(&["digest-sbv2-public-key", "--keyfile", s(&pk), "-o", s(&theirs)]);
        assert!(o.status.success(), "{}", text(&o));
        let theirs = std::fs::read(&theirs).unwrap();
        assert_eq!(std::fs::read(&digest_file).unwrap(), theirs, "{alg}");
        let hex: String = theirs.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(d["digest"].as_str().unwrap(), hex);
        assert_eq!(key["esp32_sbv2_key_digest"].as_str().unwrap(), hex);

        let out = hq.path(&format!("{name}.signed.bin"));
        let r = hq.sign(name, "esp32-sbv2", "1.7.0", &app, &out, &[]);
        assert_eq!(r["secure_version"], 2);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len(), 8192 + 4096);
        assert!(
            espsecure_accepts(&pk, &out),
            "{alg}: espsecure refused stamp's image"
        );
        assert!(stamp_accepts(&hq.pass, "esp32-sbv2", &pk, &out, Some("2")));
        assert!(
            !stamp_accepts(&hq.pass, "esp32-sbv2", &pk, &out, Some("3")),
            "rollback"
        );
        // Modified image (data, padding) and signature: both refuse.
        for at in [40usize, 6000, 8192 + 4, 8192 + 500, 8192 + 1100] {
            let bad = flip(&out, &hq.path("tampered.bin"), at);
            assert!(
                !espsecure_accepts(&pk, &bad),
                "{alg}: espsecure accepted a flip at {at}"
            );
            assert!(
                !stamp_accepts(&hq.pass, "esp32-sbv2", &pk, &bad, None),
                "{alg}: flip at {at}"
            );
        }
        let cut = hq.write("cut.bin", &bytes[..bytes.len() - 4096]);
        assert!(!espsecure_accepts(&pk, &cut));
        assert!(!stamp_accepts(&hq.pass, "esp32-sbv2", &pk, &cut, None));
        let cut = hq.write("cut2.bin", &bytes[..bytes.len() - 1]);
        assert!(!stamp_accepts(&hq.pass, "esp32-sbv2", &pk, &cut, None));
        for other in keys.iter().filter(|k| k["name"] != key["name"]) {
            assert!(!espsecure_accepts(&pubkey(other), &out));
            assert!(!stamp_accepts(&hq.pass, "esp32-sbv2", &pubkey(other), &out, None));
        }
        // espsecure's own signature with the same key passes stamp's verifier.
        let plain = hq.plain_private_key(name);
        let theirs = hq.path("espsecure-signed.bin");
        let o = espsecure(&[
            "sign-data",
            "--version",
            "2",
            "--keyfile",
            s(&plain),
            "-o",
            s(&theirs),
            s(&app),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(stamp_accepts(&hq.pass, "esp32-sbv2", &pk, &theirs, Some("2")));
        // Same layout: only the signature and the CRC may differ (RSA-PSS and ECDSA are randomized).
        let theirs = std::fs::read(&theirs).unwrap();
        assert_eq!(theirs.len(), bytes.len());
        let sig = if *alg == "rsa3072" {
            8192 + 812..8192 + 1200
        } else {
            8192 + 101..8192 + 165
        };
        for i in (0..bytes.len()).filter(|i| !sig.contains(i) && !(8192 + 1196..8192 + 1200).contains(i)) {
            assert_eq!(bytes[i], theirs[i], "{alg}: byte {i} differs from espsecure's");
        }
    }
    // An image espsecure signs with both keys (two blocks, as for key revocation): stamp finds the
    // block of each key.
    let (ec, rsa) = (
        hq.plain_private_key("esp-ecdsa-p256"),
        hq.plain_private_key("esp-rsa3072"),
    );
    let multi = hq.path("multi.bin");
    let o = espsecure(&[
        "sign-data",
        "--version",
        "2",
        "--keyfile",
        s(&ec),
        "--keyfile",
        s(&rsa),
        "-o",
        s(&multi),
        s(&app),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for (i, key) in keys.iter().enumerate() {
        let v = stamp(&hq.pass)
            .device("verify-firmware")
            .args(&["--format", "esp32-sbv2"])
            .args(&["--key-file", s(&pubkey(key)), s(&multi)])
            .json();
        assert_eq!(v["image"]["block"], i);
    }
    // Ed25519 has no ESP32 signature block.
    let ed = hq.add_key("ed", "ed25519");
    assert!(ed["esp32_sbv2_key_digest"].is_null());
    stamp(&hq.pass)
        .hq("sign-firmware")
        .dir(&hq.dir)
        .args(&["--key", "ed", "--format", "esp32-sbv2"])
        .args(&["--version", "1", s(&app), "-o", s(&hq.path("x.bin"))])
        .fails("cannot sign esp32-sbv2");
    assert!(!hq.path("x.bin").exists());
}

#[test]
fn releases_are_recorded_listed_and_never_reissued() {
    let hq = Hq::new();
    let key = hq.add_key("app", "ecdsa-p256");
    // The certificate is a code-signing certificate under the OEM root.
    let cert = key["certificate"].as_str().unwrap();
    let root = hq.dir.join("certs/oem-root.pem");
    let o = openssl(&["verify", "-x509_strict", "-CAfile", s(&root), cert]);
    assert!(o.status.success(), "{}", text(&o));
    let o = openssl(&["x509", "-in", cert, "-noout", "-text"]);
    let t = text(&o);
    assert!(
        t.contains("Code Signing") && t.contains("CA:FALSE") && t.contains("CN = firmware signing app"),
        "{t}"
    );

    let app = hq.write("app.bin", &firmware(500, 1));
    let a = hq.sign("app", "mcuboot", "1.0.0", &app, &hq.path("a.bin"), &[]);
    let b = hq.sign("app", "esp32-sbv2", "1.0.0", &app, &hq.path("b.bin"), &[]);
    hq.sign("app", "mcuboot", "1.0.1", &app, &hq.path("c.bin"), &[]);
    let before = snapshot(&hq.dir);
    stamp(&hq.pass)
        .hq("sign-firmware")
        .dir(&hq.dir)
        .args(&["--key", "app", "--format", "mcuboot"])
        .args(&["--version", "1.0.0", s(&app)])
        .args(&["-o", s(&hq.path("again.bin"))])
        .fails_with("firmware-released");
    stamp(&hq.pass)
        .hq("sign-firmware")
        .dir(&hq.dir)
        .args(&["--key", "nope", "--format", "mcuboot"])
        .args(&["--version", "9", s(&app), "-o", s(&hq.path("again.bin"))])
        .fails_with("unknown-firmware-key");
    stamp(&hq.pass)
        .hq("add-firmware-key")
        .dir(&hq.dir)
        .args(&["--name", "app", "--algorithm", "ed25519"])
        .fails_with("firmware-key-exists");
    stamp(&hq.pass)
        .hq("add-firmware-key")
        .dir(&hq.dir)
        .args(&["--name", "../x", "--algorithm", "ed25519"])
        .fails("invalid firmware key name");
    assert_eq!(snapshot(&hq.dir), before, "a refused command changed HQ");
    assert!(!hq.path("again.bin").exists());

    let list = stamp(&hq.pass).hq("firmware").dir(&hq.dir).json();
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["algorithm"], "ecdsa-p256");
    let rel = list["releases"].as_array().unwrap();
    assert_eq!(rel.len(), 3);
    assert_eq!(rel[0]["version"], "1.0.0+0");
    assert_eq!(rel[0]["format"], "mcuboot");
    assert_eq!(rel[0]["key"], "app");
    assert_eq!(rel[0]["sha256"], a["sha256"]);
    assert_eq!(
        rel[0]["sha256"].as_str().unwrap(),
        sha256_hex(&std::fs::read(hq.path("a.bin")).unwrap())
    );
    assert_eq!(rel[1]["format"], "esp32-sbv2");
    assert_eq!(rel[1]["image_digest"], b["image_digest"]);
    assert_eq!(rel[2]["version"], "1.0.1+0");
    // Text output too.
    let out = stamp(&hq.pass).hq("firmware").dir(&hq.dir).output();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("release 1.0.1+0\tmcuboot\tkey app"));
}

#[test]
fn bad_inputs_are_refused_with_clear_errors() {
    let hq = Hq::new();
    let key = hq.add_key("k", "ecdsa-p256");
    let app = hq.write("app.bin", &firmware(100, 2));
    let signed = hq.path("s.bin");
    hq.sign("k", "mcuboot", "1", &app, &signed, &[]);
    let pk = pubkey(&key);
    let v = |args: &[&str], needle: &str| {
        let mut all = vec!["device", "verify-firmware"];
        all.extend_from_slice(args);
        stamp(&hq.pass).args(&all).fails(needle);
    };
    v(
        &["--format", "mcuboot", "--key-file", s(&app), s(&signed)],
        "cannot use",
    );
    // A malformed --min-version: a usage error (exit 2).
    stamp(&hq.pass)
        .args(&[
            "device",
            "verify-firmware",
            "--format",
            "mcuboot",
            "--key-file",
            s(&pk),
        ])
        .args(&["--min-version", "one", s(&signed)])
        .usage_fails("invalid version");
    v(
        &["--format", "esp32-sbv2", "--key-file", s(&pk), s(&signed)],
        "not a valid signed image",
    );
    v(
        &["--format", "mcuboot", "--key-file", s(&pk), s(&app)],
        "no MCUboot image magic",
    );
    v(
        &[
            "--format",
            "mcuboot",
            "--key-file",
            s(&pk),
            s(&hq.path("missing.bin")),
        ],
        "cannot open",
    );
    let sf = |args: &[&str], needle: &str| {
        let mut all = vec!["hq", "sign-firmware", "--dir", s(&hq.dir), "--key", "k"];
        all.extend_from_slice(args);
        stamp(&hq.pass).args(&all).fails(needle);
    };
    let out = hq.path("o.bin");
    sf(
        &["--format", "mcuboot", "--version", "2", s(&signed), "-o", s(&out)],
        "already an MCUboot image",
    );
    sf(
        &[
            "--format",
            "mcuboot",
            "--version",
            "2",
            "--header-reserved",
            s(&app),
            "-o",
            s(&out),
        ],
        "zero bytes",
    );
    // A flag of the other format: a usage error (exit 2).
    stamp(&hq.pass)
        .args(&["hq", "sign-firmware", "--dir", s(&hq.dir), "--key", "k"])
        .args(&[
            "--format",
            "esp32-sbv2",
            "--version",
            "2",
            "--security-counter",
            "1",
        ])
        .args(&[s(&app), "-o", s(&out)])
        .usage_fails("mcuboot images only");
    let empty = hq.write("empty.bin", b"");
    sf(
        &["--format", "mcuboot", "--version", "2", s(&empty), "-o", s(&out)],
        "empty",
    );
    assert!(!out.exists());
    // A usage error (a version that does not parse) exits 2.
    let o = stamp(&hq.pass)
        .hq("sign-firmware")
        .dir(&hq.dir)
        .args(&["--key", "k", "--format", "mcuboot"])
        .args(&["--version", "1.2.3.4", s(&app), "-o", s(&out)])
        .output();
    assert_eq!(o.status.code(), Some(2));
}
