//! Cross-check of stamp's Matter onboarding data with the Matter SDK itself: the Python bindings
//! of project-chip/connectedhomeip published as `home-assistant-chip-core` (its setup-payload parser
//! and generator, and its C++ `Spake2pVerifier::Generate` through ctypes; see
//! `tests/matter/chip_onboarding.py`).
//!
//! For random devices, the SDK parses stamp's QR and manual codes back to the same fields,
//! generates the same strings from those fields, and derives the same SPAKE2+ verifier; stamp parses
//! what the SDK generates; and the SDK, too, refuses the broken codes stamp refuses. This test needs
//! a Python (`stamp_testkit::python3`: the workspace's `.venv`) with home-assistant-chip-core (and Debian's libnl-3-200 and libnl-route-3-200, which
//! its native library links); without them it FAILS (it never skips). `scripts/test` (the README's
//! test command) installs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};
use stamp_core::matter::{
    parse_manual_code, parse_qr_code, random_salt, CommissioningFlow, Discriminator, OnboardingPayload,
    Rendezvous, SetupPasscode, Spake2pVerifier,
};

const HELP: &str = "this test needs python3 with home-assistant-chip-core (the Matter SDK's Python \
    bindings) and the libnl-3-200 and libnl-route-3-200 system libraries: run `scripts/test` (the \
    README's test command, which installs them), or `apt-get install libnl-3-200 libnl-route-3-200` \
    and `.venv/bin/pip install -r tests/requirements.txt` at the workspace root, then `cargo test -p stamp-core`";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/matter/chip_onboarding.py")
}

/// Runs the SDK script on `request`; fails (never skips) when python3 or the SDK is missing.
fn sdk(request: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("answer.json");
    let mut child = Command::new(stamp_testkit::python3())
        .arg(script())
        .arg(&out_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {HELP}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Matter SDK check failed ({}): {HELP}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap()
}

fn random_u16(rng: &SystemRandom) -> u16 {
    let mut b = [0u8; 2];
    rng.fill(&mut b).unwrap();
    u16::from_le_bytes(b)
}

fn flow_bits(flow: CommissioningFlow) -> u8 {
    match flow {
        CommissioningFlow::Standard => 0,
        CommissioningFlow::UserIntent => 1,
        CommissioningFlow::Custom => 2,
    }
}

struct Case {
    payload: OnboardingPayload,
    salt: Vec<u8>,
    iterations: u32,
}

fn cases() -> Vec<Case> {
    let rng = SystemRandom::new();
    let flows = [
        CommissioningFlow::Standard,
        CommissioningFlow::UserIntent,
        CommissioningFlow::Custom,
    ];
    let mut cases: Vec<Case> = (0..48u16)
        .map(|i| Case {
            payload: OnboardingPayload {
                // The SDK's ID rules: vendor 1..=0xFFF4 (0 is unspecified), product not 0.
                vendor_id: random_u16(&rng) % 0xfff5,
                product_id: random_u16(&rng).max(1),
                flow: flows[usize::from(i % 3)],
                // Soft-AP, BLE, on-network and their mixes (the SDK's 2025.7 build predates Wi-Fi PAF).
                rendezvous: Rendezvous::new(u8::try_from(i % 7 + 1).unwrap()).unwrap(),
                discriminator: Discriminator::random(&rng).unwrap(),
                passcode: SetupPasscode::random(&rng).unwrap(),
            },
            salt: random_salt(&rng, 16 + usize::from(i % 17)).unwrap(),
            iterations: 1000 + u32::from(i) * 97,
        })
        .collect();
    // The extremes of every field, and the largest iteration count.
    for (disc, pin, vid) in [
        (0, 1, 0),
        (0x0fff, 99_999_998, 0xfff4),
        (0x0f00, 20_202_021, 0xfff1),
    ] {
        cases.push(Case {
            payload: OnboardingPayload {
                vendor_id: vid,
                product_id: !vid,
                flow: CommissioningFlow::Custom,
                rendezvous: Rendezvous::new(Rendezvous::BLE | Rendezvous::ON_NETWORK).unwrap(),
                discriminator: Discriminator::new(disc).unwrap(),
                passcode: SetupPasscode::new(pin).unwrap(),
            },
            salt: vec![0xa5; 32],
            iterations: 100_000,
        });
    }
    cases
}

#[test]
fn the_matter_sdk_reads_and_derives_what_stamp_writes() {
    let cases = cases();
    let request: Vec<Value> = cases
        .iter()
        .map(|c| {
            let p = &c.payload;
            json!({
                "passcode": p.passcode.value(),
                "discriminator": p.discriminator.value(),
                "vendor_id": p.vendor_id,
                "product_id": p.product_id,
                "flow": flow_bits(p.flow),
                "rendezvous": p.rendezvous.bits(),
                "salt": hex::encode(&c.salt),
                "iterations": c.iterations,
                "qr": p.qr_code().unwrap().as_str(),
                "manual": p.manual_code().unwrap().as_str(),
            })
        })
        .collect();
    let answer = sdk(&json!({ "cases": request }));
    let results = answer["cases"].as_array().unwrap();
    assert_eq!(results.len(), cases.len());
    for (i, (c, r)) in cases.iter().zip(results).enumerate() {
        let p = &c.payload;
        // The SDK's parse of stamp's QR code gives back every field.
        let qr = &r["qr_parsed"];
        assert_eq!(qr["version"], 0, "case {i}");
        assert_eq!(qr["vendor_id"], p.vendor_id, "case {i}");
        assert_eq!(qr["product_id"], p.product_id, "case {i}");
        assert_eq!(qr["flow"], flow_bits(p.flow), "case {i}");
        assert_eq!(qr["rendezvous"], p.rendezvous.bits(), "case {i}");
        assert_eq!(qr["long_discriminator"], p.discriminator.value(), "case {i}");
        assert_eq!(qr["passcode"], p.passcode.value(), "case {i}");
        // Its parse of the manual code: the short discriminator, the passcode, and VID/PID in the long form.
        let manual = &r["manual_parsed"];
        assert_eq!(manual["short_discriminator"], p.discriminator.short(), "case {i}");
        assert_eq!(manual["passcode"], p.passcode.value(), "case {i}");
        if p.flow == CommissioningFlow::Standard {
            assert_eq!(manual["vendor_id"], 0, "case {i}");
        } else {
            assert_eq!(manual["vendor_id"], p.vendor_id, "case {i}");
            assert_eq!(manual["product_id"], p.product_id, "case {i}");
        }
        // The SDK generates the same strings, and stamp reads the SDK's strings.
        assert_eq!(r["sdk_qr"], p.qr_code().unwrap().as_str(), "case {i}");
        assert_eq!(r["sdk_manual"], p.manual_code().unwrap().as_str(), "case {i}");
        assert_eq!(
            parse_qr_code(r["sdk_qr"].as_str().unwrap()).unwrap(),
            *p,
            "case {i}"
        );
        let m = parse_manual_code(r["sdk_manual"].as_str().unwrap()).unwrap();
        assert_eq!(m.passcode, p.passcode, "case {i}");
        // The SDK's Spake2pVerifier::Generate derives the same 97 bytes.
        let ours = Spake2pVerifier::generate(&p.passcode, &c.salt, c.iterations).unwrap();
        assert_eq!(
            r["sdk_verifier"],
            hex::encode(ours.to_bytes().as_slice()),
            "case {i}"
        );
    }
}

#[test]
fn the_matter_sdk_refuses_what_stamp_refuses() {
    let p = OnboardingPayload {
        vendor_id: 0xfff1,
        product_id: 0x8001,
        flow: CommissioningFlow::Standard,
        rendezvous: Rendezvous::new(Rendezvous::BLE).unwrap(),
        discriminator: Discriminator::new(3840).unwrap(),
        passcode: SetupPasscode::new(20_202_021).unwrap(),
    };
    let qr = p.qr_code().unwrap().to_string();
    let manual = p.manual_code().unwrap().to_string();
    let wrong_check = format!("{}{}", &manual[..10], (manual.as_bytes()[10] - b'0' + 1) % 10);
    let bad_qr = [
        qr[..qr.len() - 1].to_owned(),       // a 3-character trailing chunk
        format!("{}%", &qr[..qr.len() - 1]), // a character outside base-38
        qr[3..].to_owned(),                  // no MT: prefix
        "MT:.....00000000000000".to_owned(), // a chunk above 2^24
    ];
    let bad_manual = [
        wrong_check,
        manual[..10].to_owned(),
        format!("{manual}0"),
        "3497011233a".to_owned(),
    ];
    for code in &bad_qr {
        assert!(parse_qr_code(code).is_err(), "stamp accepted {code}");
    }
    for code in &bad_manual {
        assert!(parse_manual_code(code).is_err(), "stamp accepted {code}");
    }
    let answer = sdk(&json!({"cases": [], "refuse": {"qr": bad_qr, "manual": bad_manual}}));
    for key in ["refused_qr", "refused_manual"] {
        let results = answer[key].as_array().unwrap();
        assert_eq!(results.len(), 4, "{key}");
        for r in results {
            assert_eq!(r["refused"], true, "the SDK accepted {}", r["code"]);
        }
    }
}
