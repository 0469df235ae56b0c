//! Tests of the Matter onboarding data: the SDK's published vectors, round trips and every refusal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use aws_lc_rs::rand::SystemRandom;

/// connectedhomeip src/protocols/secure_channel/tests/TestPASESession.cpp, "Test Set #01":
/// passcode 20202021, 1000 iterations, salt "SPAKE2P Key Salt", and its serialized verifier.
const SDK_PIN: u32 = 20_202_021;
const SDK_SALT: &[u8] = b"SPAKE2P Key Salt";
const SDK_ITERATIONS: u32 = 1000;
const SDK_VERIFIER: &str = "b96170aae803346884724fe9a3b287c30330c2a660375d17bb205a8cf1aecb35\
    0457f8ab79ee253ab6a8e46bb09e543ae422736de501e3db37d441fe344920d095\
    48e4c18240630c4ff4913c53513839b7c07fcc0627a1b8573a149fcd1fa466cf";

fn payload(vid: u16, pid: u16, flow: CommissioningFlow, rdv: u8, disc: u16, pin: u32) -> OnboardingPayload {
    OnboardingPayload {
        vendor_id: vid,
        product_id: pid,
        flow,
        rendezvous: Rendezvous::new(rdv).unwrap(),
        discriminator: Discriminator::new(disc).unwrap(),
        passcode: SetupPasscode::new(pin).unwrap(),
    }
}

/// A byte source that hands out `script` in order and fails when it runs out.
fn scripted(script: &[u8]) -> impl FnMut(&mut [u8]) -> Result<(), MatterError> + '_ {
    let mut at = 0;
    move |buf: &mut [u8]| {
        let end = at + buf.len();
        if end > script.len() {
            return Err(MatterError::Rng);
        }
        buf.copy_from_slice(&script[at..end]);
        at = end;
        Ok(())
    }
}

#[test]
fn passcode_rules() {
    for bad in [0, 99_999_999, 100_000_000, (1 << 27) - 1, u32::MAX] {
        assert_eq!(
            SetupPasscode::new(bad),
            Err(MatterError::InvalidPasscode),
            "{bad}"
        );
    }
    for bad in INVALID_PASSCODES {
        assert_eq!(
            SetupPasscode::new(bad),
            Err(MatterError::InvalidPasscode),
            "{bad}"
        );
    }
    for d in 1..=9u32 {
        assert!(INVALID_PASSCODES.contains(&(d * 11_111_111)) || d == 9);
    }
    for good in [1, 2, 11_111_110, 11_111_112, 12_345_679, 20_202_021, MAX_PASSCODE] {
        assert_eq!(SetupPasscode::new(good).unwrap().value(), good);
    }
}

#[test]
fn passcode_debug_redacts() {
    let pin = SetupPasscode::new(20_202_021).unwrap();
    let shown = format!(
        "{pin:?} {:?}",
        payload(1, 2, CommissioningFlow::Standard, 2, 3, 20_202_021)
    );
    assert!(!shown.contains("20202021"), "{shown}");
    assert!(shown.contains("redacted"));
}

#[test]
fn passcode_rejection_sampling() {
    // 27 bits of 0xffffffff is 134217727 (> 99999998), then 0 (invalid), then 11111111 (invalid),
    // then 1234 with the top 5 bits set, which the 27-bit mask removes.
    let mut script = Vec::new();
    script.extend(u32::MAX.to_le_bytes());
    script.extend(0u32.to_le_bytes());
    script.extend(11_111_111u32.to_le_bytes());
    script.extend((1234u32 | 0xf800_0000).to_le_bytes());
    assert_eq!(SetupPasscode::draw(scripted(&script)).unwrap().value(), 1234);

    // Only invalid draws: an error after MAX_DRAWS, not a loop forever.
    let all_bad = [0xffu8; 4 * MAX_DRAWS];
    assert_eq!(
        SetupPasscode::draw(scripted(&all_bad)),
        Err(MatterError::RandomnessExhausted)
    );
    // The byte source failing is its own error.
    assert_eq!(SetupPasscode::draw(scripted(&[1, 2])), Err(MatterError::Rng));
}

#[test]
fn random_passcodes_and_discriminators_are_valid_and_vary() {
    let rng = SystemRandom::new();
    let pins: Vec<u32> = (0..200)
        .map(|_| SetupPasscode::random(&rng).unwrap().value())
        .collect();
    assert!(pins.iter().all(|p| SetupPasscode::new(*p).is_ok()));
    let mut distinct = pins.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 190, "{} distinct of 200", distinct.len());
    let discs: Vec<u16> = (0..200)
        .map(|_| Discriminator::random(&rng).unwrap().value())
        .collect();
    assert!(discs.iter().all(|d| *d <= 0x0fff));
    assert!(discs.iter().any(|d| *d > 0x07ff), "the top bit is drawn too");
}

#[test]
fn discriminator_rules() {
    assert_eq!(
        Discriminator::new(0x1000),
        Err(MatterError::InvalidDiscriminator(0x1000))
    );
    assert_eq!(Discriminator::new(0x0fff).unwrap().short(), 0x0f);
    assert_eq!(Discriminator::new(3840).unwrap().short(), 15);
    assert_eq!(Discriminator::new(0x0abc).unwrap().short(), 0x0a);
    assert_eq!(Discriminator::new(0x00ff).unwrap().short(), 0);
    // The top 4 bits of the 2 random bytes are masked off.
    assert_eq!(
        Discriminator::draw(scripted(&[0x34, 0xf2])).unwrap().value(),
        0x0234
    );
    assert_eq!(Discriminator::draw(scripted(&[0x34])), Err(MatterError::Rng));
}

#[test]
fn verifier_matches_the_sdk_test_vector() {
    let pin = SetupPasscode::new(SDK_PIN).unwrap();
    let v = Spake2pVerifier::generate(&pin, SDK_SALT, SDK_ITERATIONS).unwrap();
    let expected = hex::decode(SDK_VERIFIER.replace(' ', "")).unwrap();
    assert_eq!(v.to_bytes().as_slice(), expected.as_slice());
    assert_eq!(v.w0().as_slice(), &expected[..32]);
    assert_eq!(v.l().as_slice(), &expected[32..]);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(v.to_base64().as_bytes())
            .unwrap(),
        expected
    );
    assert_eq!(Spake2pVerifier::from_bytes(&expected).unwrap(), v);
    assert_eq!(format!("{v:?}"), "Spake2pVerifier(<redacted>)");
}

#[test]
fn verifier_depends_on_every_input() {
    let pin = SetupPasscode::new(SDK_PIN).unwrap();
    let base = Spake2pVerifier::generate(&pin, SDK_SALT, SDK_ITERATIONS).unwrap();
    let other_pin = SetupPasscode::new(SDK_PIN + 1).unwrap();
    assert_ne!(
        Spake2pVerifier::generate(&other_pin, SDK_SALT, SDK_ITERATIONS).unwrap(),
        base
    );
    assert_ne!(
        Spake2pVerifier::generate(&pin, b"SPAKE2P Key Salu", SDK_ITERATIONS).unwrap(),
        base
    );
    assert_ne!(
        Spake2pVerifier::generate(&pin, SDK_SALT, SDK_ITERATIONS + 1).unwrap(),
        base
    );
}

#[test]
fn verifier_refuses_out_of_range_parameters() {
    let pin = SetupPasscode::new(SDK_PIN).unwrap();
    assert_eq!(
        Spake2pVerifier::generate(&pin, &[0; 15], 1000),
        Err(MatterError::SaltLength(15))
    );
    assert_eq!(
        Spake2pVerifier::generate(&pin, &[0; 33], 1000),
        Err(MatterError::SaltLength(33))
    );
    assert_eq!(
        Spake2pVerifier::generate(&pin, &[0; 16], 999),
        Err(MatterError::Iterations(999))
    );
    assert_eq!(
        Spake2pVerifier::generate(&pin, &[0; 32], 100_001),
        Err(MatterError::Iterations(100_001))
    );
    assert!(Spake2pVerifier::generate(&pin, &[7; 32], MIN_ITERATIONS).is_ok());
    let rng = SystemRandom::new();
    assert_eq!(random_salt(&rng, 32).unwrap().len(), 32);
    assert_eq!(random_salt(&rng, 16).unwrap().len(), 16);
    assert_eq!(random_salt(&rng, 8), Err(MatterError::SaltLength(8)));
    assert_eq!(random_salt(&rng, 64), Err(MatterError::SaltLength(64)));
}

#[test]
fn verifier_parser_refuses_bad_bytes() {
    let good = hex::decode(SDK_VERIFIER.replace(' ', "")).unwrap();
    assert_eq!(
        Spake2pVerifier::from_bytes(&good[..96]),
        Err(MatterError::VerifierLength(96))
    );
    assert_eq!(
        Spake2pVerifier::from_bytes(&[good.clone(), vec![0]].concat()),
        Err(MatterError::VerifierLength(98))
    );
    // W0 equal to the group order n is not a reduced scalar.
    let mut bad = good.clone();
    bad[..32].copy_from_slice(
        &hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap(),
    );
    assert_eq!(Spake2pVerifier::from_bytes(&bad), Err(MatterError::VerifierW0));
    // L off the curve, and L with a compressed-point tag.
    let mut bad = good.clone();
    bad[96] ^= 1;
    assert_eq!(Spake2pVerifier::from_bytes(&bad), Err(MatterError::VerifierL));
    let mut bad = good.clone();
    bad[32] = 0x02;
    assert_eq!(Spake2pVerifier::from_bytes(&bad), Err(MatterError::VerifierL));
}

#[test]
fn reduction_is_modulo_the_group_order() {
    // n + 5 (as 40 bytes) reduces to 5; 2^256 reduces to 2^256 - n.
    let n = hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    let mut n_plus_5 = vec![0u8; 8];
    n_plus_5.extend(&n);
    n_plus_5[39] += 5;
    assert_eq!(reduce_be(&n_plus_5), Scalar::from(5u64));
    let mut two_256 = vec![0u8; 40];
    two_256[7] = 1;
    assert_eq!(
        hex::encode(reduce_be(&two_256).to_bytes()),
        "00000000ffffffff00000000000000004319055258e8617b0c46353d039cdaaf"
    );
}

#[test]
fn qr_code_matches_the_sdk_vector() {
    // connectedhomeip src/darwin/Framework/CHIPTests/MTRSetupPayloadSerializerTests.m:
    // VID 0xFFF1, PID 1, standard flow, on-network, discriminator 0xABC, passcode 12121212.
    let p = payload(
        0xfff1,
        1,
        CommissioningFlow::Standard,
        Rendezvous::ON_NETWORK,
        0xabc,
        12_121_212,
    );
    assert_eq!(p.qr_code().unwrap().as_str(), "MT:-24J06.H14BK9C7R900");
    assert_eq!(p.qr_code().unwrap().len(), QR_CODE_LEN);
    assert_eq!(parse_qr_code("MT:-24J06.H14BK9C7R900").unwrap(), p);
}

#[test]
fn manual_code_matches_the_sdk_vector() {
    // The SDK's default test device: passcode 20202021, discriminator 3840 -> 34970112332.
    let p = payload(
        0xfff1,
        0x8001,
        CommissioningFlow::Standard,
        Rendezvous::BLE,
        3840,
        SDK_PIN,
    );
    assert_eq!(p.manual_code().unwrap().as_str(), "34970112332");
    let m = parse_manual_code("34970112332").unwrap();
    assert_eq!(m.short_discriminator, 15);
    assert_eq!(m.passcode.value(), SDK_PIN);
    assert_eq!(m.vendor_product, None);
}

#[test]
fn verhoeff_known_values() {
    // The textbook example: 236 -> 2363.
    assert_eq!(verhoeff_check(b"236"), 3);
    assert!(verhoeff_valid(b"2363"));
    assert!(!verhoeff_valid(b"2364"));
    assert_eq!(verhoeff_check(b"3497011233"), 2);
}

#[test]
fn round_trips_over_every_field() {
    let rng = SystemRandom::new();
    let flows = [
        CommissioningFlow::Standard,
        CommissioningFlow::UserIntent,
        CommissioningFlow::Custom,
    ];
    for i in 0..300u32 {
        let p = OnboardingPayload {
            vendor_id: if i % 7 == 0 {
                0xfff4
            } else {
                u16::try_from(i * 218 % 0xfff5).unwrap()
            },
            product_id: u16::try_from(1 + (i * 3571) % 65535).unwrap(),
            flow: flows[(i % 3) as usize],
            rendezvous: Rendezvous::new(u8::try_from(i % 15 + 1).unwrap()).unwrap(),
            discriminator: Discriminator::random(&rng).unwrap(),
            passcode: SetupPasscode::random(&rng).unwrap(),
        };
        let qr = p.qr_code().unwrap();
        assert_eq!(qr.len(), QR_CODE_LEN);
        assert_eq!(parse_qr_code(&qr).unwrap(), p, "{i}");
        let manual = p.manual_code().unwrap();
        let m = parse_manual_code(&manual).unwrap();
        assert_eq!(m.passcode, p.passcode);
        assert_eq!(m.short_discriminator, p.discriminator.short());
        if p.flow == CommissioningFlow::Standard {
            assert_eq!(manual.len(), 11);
            assert_eq!(m.vendor_product, None);
        } else {
            assert_eq!(manual.len(), 21);
            assert_eq!(m.vendor_product, Some((p.vendor_id, p.product_id)));
        }
    }
    // The extremes.
    for (disc, pin) in [(0, 1), (0x0fff, MAX_PASSCODE), (0x0800, 0x3fff), (0x00ff, 0x4000)] {
        let p = payload(0, 0xffff, CommissioningFlow::Custom, 0x0f, disc, pin);
        assert_eq!(parse_qr_code(&p.qr_code().unwrap()).unwrap(), p);
        let m = parse_manual_code(&p.manual_code().unwrap()).unwrap();
        assert_eq!(
            (m.short_discriminator, m.passcode.value()),
            (p.discriminator.short(), pin)
        );
    }
}

#[test]
fn vendor_and_product_id_rules() {
    for flow in [CommissioningFlow::Standard, CommissioningFlow::Custom] {
        let p = payload(0xfff5, 1, flow, Rendezvous::BLE, 3840, SDK_PIN);
        assert_eq!(p.qr_code(), Err(MatterError::InvalidVendorId(0xfff5)));
        assert_eq!(p.manual_code(), Err(MatterError::InvalidVendorId(0xfff5)));
        let p = payload(0x1234, 0, flow, Rendezvous::BLE, 3840, SDK_PIN);
        assert_eq!(p.qr_code(), Err(MatterError::InvalidProductId(0x1234)));
        assert_eq!(p.manual_code(), Err(MatterError::InvalidProductId(0x1234)));
        // Unspecified vendor and product, and the last test vendor.
        assert!(payload(0, 0, flow, Rendezvous::BLE, 3840, SDK_PIN)
            .qr_code()
            .is_ok());
        assert!(payload(0xfff4, 1, flow, Rendezvous::BLE, 3840, SDK_PIN)
            .manual_code()
            .is_ok());
    }
    let mut f = fields(0, 0, 2, SDK_PIN, 0);
    f[1].0 = 0xffff;
    assert_eq!(
        parse_qr_code(&forged_qr(f)),
        Err(MatterError::InvalidVendorId(0xffff))
    );
    f[1].0 = 0xfff1;
    f[2].0 = 0;
    assert_eq!(
        parse_qr_code(&forged_qr(f)),
        Err(MatterError::InvalidProductId(0xfff1))
    );
}

#[test]
fn rendezvous_and_flow_rules() {
    assert_eq!(Rendezvous::new(0), Err(MatterError::InvalidRendezvous(0)));
    assert_eq!(Rendezvous::new(0x10), Err(MatterError::InvalidRendezvous(0x10)));
    assert_eq!(Rendezvous::new(0x86), Err(MatterError::InvalidRendezvous(0x86)));
    assert_eq!(Rendezvous::new(0x0f).unwrap().bits(), 0x0f);
    assert_eq!(CommissioningFlow::from_bits(3), Err(MatterError::ReservedFlow));
}

/// Packs fields the way `qr_code` does but without its checks, to forge refused payloads.
fn forged_qr(fields: [(u32, usize); 8]) -> String {
    let mut bits = [0u8; PACKED_LEN];
    let mut offset = 0;
    for (value, width) in fields {
        put_bits(&mut bits, &mut offset, value, width);
    }
    let mut out = String::from("MT:");
    base38_encode(&bits, &mut out);
    out
}

fn fields(version: u32, flow: u32, rdv: u32, pin: u32, pad: u32) -> [(u32, usize); 8] {
    [
        (version, 3),
        (0xfff1, 16),
        (0x8001, 16),
        (flow, 2),
        (rdv, 8),
        (3840, 12),
        (pin, 27),
        (pad, 4),
    ]
}

#[test]
fn qr_parser_refusals() {
    let good = forged_qr(fields(0, 0, 2, SDK_PIN, 0));
    assert!(parse_qr_code(&good).is_ok());
    let body = &good[3..];
    assert_eq!(
        parse_qr_code(&"A".repeat(MAX_QR_INPUT + 1)),
        Err(MatterError::QrTooLong)
    );
    assert_eq!(parse_qr_code(body), Err(MatterError::QrPrefix));
    assert_eq!(parse_qr_code(&format!("mt:{body}")), Err(MatterError::QrPrefix));
    assert_eq!(
        parse_qr_code("MT:-24j06.H14BK9C7R900"),
        Err(MatterError::QrCharacter('j'))
    );
    assert_eq!(
        parse_qr_code(&format!("{}*", &good[..21])),
        Err(MatterError::QrCharacter('*'))
    );
    assert_eq!(
        parse_qr_code(&format!("{}é", &good[..21])),
        Err(MatterError::QrCharacter('é'))
    );
    // Lengths: a trailing chunk of 1 or 3 characters, too short, and more than 88 bits.
    assert_eq!(
        parse_qr_code(&format!("{good}00")),
        Err(MatterError::QrLength(21))
    );
    assert_eq!(parse_qr_code(&good[..21]), Err(MatterError::QrLength(18)));
    assert_eq!(parse_qr_code(&good[..18]), Err(MatterError::QrShort));
    assert_eq!(parse_qr_code("MT:"), Err(MatterError::QrShort));
    assert_eq!(
        parse_qr_code(&format!("{good}000")),
        Err(MatterError::QrOptionalData)
    );
    // A 5-character chunk above 2^24 - 1 ("....." is 38^5 - 1).
    assert_eq!(
        parse_qr_code(&format!("MT:.....{}", &good[8..])),
        Err(MatterError::QrChunk)
    );
    // Fields the checks refuse.
    assert_eq!(
        parse_qr_code(&forged_qr(fields(1, 0, 2, SDK_PIN, 0))),
        Err(MatterError::QrVersion(1))
    );
    assert_eq!(
        parse_qr_code(&forged_qr(fields(0, 3, 2, SDK_PIN, 0))),
        Err(MatterError::ReservedFlow)
    );
    assert_eq!(
        parse_qr_code(&forged_qr(fields(0, 0, 0, SDK_PIN, 0))),
        Err(MatterError::InvalidRendezvous(0))
    );
    assert_eq!(
        parse_qr_code(&forged_qr(fields(0, 0, 0x22, SDK_PIN, 0))),
        Err(MatterError::InvalidRendezvous(0x22))
    );
    assert_eq!(
        parse_qr_code(&forged_qr(fields(0, 0, 2, 12_345_678, 0))),
        Err(MatterError::InvalidPasscode)
    );
    assert_eq!(
        parse_qr_code(&forged_qr(fields(0, 0, 2, 0, 0))),
        Err(MatterError::InvalidPasscode)
    );
    assert_eq!(
        parse_qr_code(&forged_qr(fields(0, 0, 2, 100_000_000, 0))),
        Err(MatterError::InvalidPasscode)
    );
    assert_eq!(
        parse_qr_code(&forged_qr(fields(0, 0, 2, SDK_PIN, 8))),
        Err(MatterError::QrPadding)
    );
}

/// Appends the Verhoeff digit, to forge codes that pass the checksum.
fn with_check(digits: &str) -> String {
    format!("{digits}{}", verhoeff_check(digits.as_bytes()))
}

#[test]
fn manual_parser_refusals() {
    assert_eq!(
        parse_manual_code("3497011233"),
        Err(MatterError::ManualLength(10))
    );
    assert_eq!(
        parse_manual_code("349701123320"),
        Err(MatterError::ManualLength(12))
    );
    assert_eq!(parse_manual_code(""), Err(MatterError::ManualLength(0)));
    assert_eq!(
        parse_manual_code(&"1".repeat(1000)),
        Err(MatterError::ManualLength(1000))
    );
    assert_eq!(
        parse_manual_code("3497-011233"),
        Err(MatterError::ManualCharacter)
    );
    assert_eq!(
        parse_manual_code("３497011233２"),
        Err(MatterError::ManualCharacter)
    );
    assert_eq!(
        parse_manual_code("3497011233é"),
        Err(MatterError::ManualCharacter)
    );
    // Every wrong check digit, and a swap of two adjacent digits.
    for d in (0..=9).filter(|d| *d != 2) {
        assert_eq!(
            parse_manual_code(&format!("3497011233{d}")),
            Err(MatterError::ManualCheckDigit)
        );
    }
    assert_eq!(
        parse_manual_code("34970112323"),
        Err(MatterError::ManualCheckDigit)
    );
    assert_eq!(
        parse_manual_code(&with_check("8497011233")),
        Err(MatterError::ManualReserved(8))
    );
    assert_eq!(
        parse_manual_code(&with_check("9497011233")),
        Err(MatterError::ManualReserved(9))
    );
    // The long flag on an 11-digit code, and a 21-digit code without it.
    assert_eq!(
        parse_manual_code(&with_check("7497011233")),
        Err(MatterError::ManualForm)
    );
    assert_eq!(
        parse_manual_code(&with_check("34970112336553332769")),
        Err(MatterError::ManualForm)
    );
    // Digits 2-6 above 65535, a passcode chunk making 0, 11111111 or more than 99999998, IDs above 65535.
    assert_eq!(
        parse_manual_code(&with_check("3700001233")),
        Err(MatterError::ManualRange)
    );
    assert_eq!(
        parse_manual_code(&with_check("0000000000")),
        Err(MatterError::InvalidPasscode)
    );
    let p = 11_111_111u32;
    let ones = format!("0{:05}{:04}", p & 0x3fff, p >> 14);
    assert_eq!(
        parse_manual_code(&with_check(&ones)),
        Err(MatterError::InvalidPasscode)
    );
    assert_eq!(
        parse_manual_code(&with_check("0000009999")),
        Err(MatterError::InvalidPasscode)
    );
    assert_eq!(
        parse_manual_code(&with_check("74970112336553600001")),
        Err(MatterError::ManualId(65536))
    );
    assert_eq!(
        parse_manual_code(&with_check("74970112330000199999")),
        Err(MatterError::ManualId(99999))
    );
    assert_eq!(
        parse_manual_code(&with_check("74970112336553300001")),
        Err(MatterError::InvalidVendorId(65533))
    );
    assert_eq!(
        parse_manual_code(&with_check("74970112330123400000")),
        Err(MatterError::InvalidProductId(1234))
    );
    let long = parse_manual_code(&with_check("74970112336552000001")).unwrap();
    assert_eq!(long.vendor_product, Some((0xfff0, 1)));
    let unspecified = parse_manual_code(&with_check("74970112330000000000")).unwrap();
    assert_eq!(unspecified.vendor_product, Some((0, 0)));
}
