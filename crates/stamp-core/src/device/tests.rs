use time::macros::datetime;

use super::*;
use crate::entitlement::tests::grant as sample;
use crate::entitlement::Action;
use crate::key::{SignatureAlgorithm, Signer};
use crate::profile::tests::{root, TestSigner};
use crate::profile::{Holder, Profile, Validity};
use crate::SiteId;

const NOW: OffsetDateTime = datetime!(2026-11-22 12:00:00 UTC);

fn grant() -> Grant {
    match sample("s1", 1).action {
        Action::Grant(g) => g,
        Action::Amend(_) => unreachable!(),
    }
}

fn issuing_ca() -> (TestSigner, Vec<u8>) {
    let (root_key, root_der) = root(SignatureAlgorithm::EcdsaP256Sha256);
    let ca_key = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let der = crate::profile::issue(
        Profile::SiteIssuingCa,
        "Acme",
        &Holder::Site(SiteId::new("s1").unwrap()),
        &cert::subject_key(ca_key.algorithm().rcgen(), ca_key.public_key()),
        Validity::starting(NOW, Duration::days(3650)),
        Serial::from_random([9; 16]),
        &Issuer {
            cert_der: &root_der,
            signer: &root_key,
        },
    )
    .unwrap();
    (ca_key, der)
}

#[test]
fn check_in_two_halves_is_check() {
    let (ca_key, ca_der) = issuing_ca();
    let ca = cert::parse(&ca_der).unwrap();
    let g = grant();
    let issuer = Issuer {
        cert_der: &ca_der,
        signer: &ca_key,
    };
    let make = |n: u64| {
        let spki = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256).spki_der();
        issue(&g, n, &spki, NOW, Serial::from_random([n as u8; 16]), &issuer).unwrap()
    };
    let (a, b) = (make(1), make(2));
    let two = |der: &[u8]| check_issued(der, &g, &ca, verify_issued(der, &ca));
    assert_eq!(two(&a).unwrap(), check(&a, &g, &ca).unwrap());
    // A proof for another certificate, or from another CA, is no proof.
    let for_a = verify_issued(&a, &ca).unwrap();
    assert!(matches!(
        check_issued(&b, &g, &ca, Ok(for_a.clone())),
        Err(DeviceCertError::Cert(CertError::BadSignature(_)))
    ));
    let (_, other_der) = issuing_ca();
    let other = cert::parse(&other_der).unwrap();
    assert!(check_issued(&a, &g, &other, Ok(for_a)).is_err());
    assert!(verify_issued(&a, &other).is_err());
    // Every bit flip gives the same verdict both ways.
    for i in (0..a.len()).step_by(5) {
        let mut m = a.clone();
        m[i] ^= 0x01;
        assert_eq!(two(&m).is_ok(), check(&m, &g, &ca).is_ok(), "flip at {i}");
    }
    let mut other_profile = g.clone();
    other_profile.product.product_id = "other".into();
    assert!(check_issued(&a, &other_profile, &ca, verify_issued(&a, &ca)).is_err());
}

#[test]
fn a_prepared_issuer_makes_the_same_certificate() {
    let (ca_key, ca_der) = issuing_ca();
    let g = grant();
    let spki = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256).spki_der();
    let serial = Serial::from_random([5; 16]);
    let once = issue(
        &g,
        42,
        &spki,
        NOW,
        serial,
        &Issuer {
            cert_der: &ca_der,
            signer: &ca_key,
        },
    )
    .unwrap();
    let prepared = DeviceIssuer::new(&ca_der, Arc::new(ca_key)).unwrap();
    let again = prepared.issue(&g, 42, &spki, NOW, serial).unwrap();
    // ECDSA signatures differ; everything signed is the same, and both pass the check.
    let (a, b) = (cert::parse(&once).unwrap(), cert::parse(&again).unwrap());
    assert_eq!(a.tbs_certificate.as_ref(), b.tbs_certificate.as_ref());
    let ca = cert::parse(&ca_der).unwrap();
    assert_eq!(check(&once, &g, &ca).unwrap(), check(&again, &g, &ca).unwrap());
    assert!(DeviceIssuer::new(
        b"not a certificate",
        Arc::new(TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256))
    )
    .is_err());
}

#[test]
fn issued_device_certificates_pass_the_check_and_nothing_else_does() {
    let (ca_key, ca_der) = issuing_ca();
    let ca = cert::parse(&ca_der).unwrap();
    let g = grant();
    let device = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let spki = device.spki_der();
    let der = issue(
        &g,
        42,
        &spki,
        NOW,
        Serial::from_random([5; 16]),
        &Issuer {
            cert_der: &ca_der,
            signer: &ca_key,
        },
    )
    .unwrap();
    let info = check(&der, &g, &ca).unwrap();
    assert_eq!(info.device_serial, 42);
    assert_eq!(info.key_type, KeyType::P256);
    assert_eq!(info.public_key_sha256, crate::fingerprint::sha256(&spki));
    assert_eq!(
        info.not_after - info.not_before,
        Duration::days(3650).min(info.not_after - info.not_before)
    );

    // Another product's profile, a key type the profile does not allow, another CA.
    let mut other = g.clone();
    other.product.product_id = "other".into();
    assert!(check(&der, &other, &ca).is_err());
    let mut no_p256 = g.clone();
    no_p256.device_profile.key_types = vec![DeviceKeyType::Ed25519];
    assert!(check(&der, &no_p256, &ca).is_err());
    let (_, other_ca) = issuing_ca();
    assert!(check(&der, &g, &cert::parse(&other_ca).unwrap()).is_err());
    // Every bit flip is refused.
    for i in (0..der.len()).step_by(3) {
        let mut m = der.clone();
        m[i] ^= 0x01;
        assert!(check(&m, &g, &ca).is_err(), "flip at {i} accepted");
    }
}

#[test]
fn validity_is_cut_to_the_issuing_ca() {
    let (ca_key, ca_der) = issuing_ca();
    let mut g = grant();
    g.device_profile.validity_days = 365 * 40;
    let device = TestSigner::new(SignatureAlgorithm::Ed25519);
    let der = issue(
        &g,
        7,
        &device.spki_der(),
        NOW,
        Serial::from_random([1; 16]),
        &Issuer {
            cert_der: &ca_der,
            signer: &ca_key,
        },
    )
    .unwrap();
    let c = cert::parse(&der).unwrap();
    let ca = cert::parse(&ca_der).unwrap();
    assert_eq!(c.validity().not_after, ca.validity().not_after);
    g.device_profile.key_types.push(DeviceKeyType::Ed25519);
    assert_eq!(check(&der, &g, &ca).unwrap().key_type, KeyType::Ed25519);
}

#[test]
fn renewal_subjects_are_matched_by_value() {
    let (ca_key, ca_der) = issuing_ca();
    let g = grant();
    let device = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let der = issue(
        &g,
        1234,
        &device.spki_der(),
        NOW,
        Serial::from_random([2; 16]),
        &Issuer {
            cert_der: &ca_der,
            signer: &ca_key,
        },
    )
    .unwrap();
    let name = |serial: &str, o: &str| {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(DnType::OrganizationName, o);
        dn.push(DnType::OrganizationalUnitName, g.product.oem_id.as_str());
        dn.push(DnType::CommonName, g.product.product_id.as_str());
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), serial);
        let mut p = CertificateParams::default();
        p.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = p.serialize_request(&key).unwrap();
        crate::csr::verify(csr.der()).unwrap()
    };
    let org = g.device_profile.organization.as_str();
    let same = name("1234", org);
    assert_eq!(serial_in_subject(same.subject_der()), Some(1234));
    assert!(subject_matches(&der, same.subject_der()));
    assert!(!same.requests_subject_alt_name());
    let other = name("1235", org);
    assert!(!subject_matches(&der, other.subject_der()));
    assert!(!subject_matches(&der, name("1234", "Other Org").subject_der()));
    assert_eq!(serial_in_subject(name("01234", org).subject_der()), None);
    assert_eq!(serial_in_subject(name("12a", org).subject_der()), None);
    assert!(!subject_matches(b"junk", same.subject_der()));
    for bad in [
        "+1234",
        " 1234",
        "1234 ",
        "",
        "-0",
        "+0",
        "00",
        "18446744073709551616",
    ] {
        assert_eq!(serial_in_subject(name(bad, org).subject_der()), None, "{bad:?}");
    }
    assert_eq!(
        serial_in_subject(name("18446744073709551615", org).subject_der()),
        Some(u64::MAX)
    );
    assert_eq!(serial_in_subject(name("0", org).subject_der()), Some(0));
}

#[test]
fn device_serials_are_canonical_decimal_only() {
    for (s, want) in [
        ("4", Some(4)),
        ("0", Some(0)),
        ("10", Some(10)),
        ("18446744073709551615", Some(u64::MAX)),
        ("+4", None),
        ("-4", None),
        ("04", None),
        ("00", None),
        (" 4", None),
        ("4 ", None),
        ("4\n", None),
        ("", None),
        ("4a", None),
        ("\u{0664}", None), // ARABIC-INDIC DIGIT FOUR
        ("18446744073709551616", None),
        ("99999999999999999999999", None),
    ] {
        assert_eq!(canonical_serial(s), want, "{s:?}");
    }
}

#[test]
fn a_renewal_proof_is_the_current_keys_signature_for_this_certificate_and_key_only() {
    let (ca_key, ca_der) = issuing_ca();
    let mut g = grant();
    g.device_profile.key_types = vec![
        crate::entitlement::DeviceKeyType::P256,
        crate::entitlement::DeviceKeyType::Ed25519,
    ];
    for alg in [SignatureAlgorithm::EcdsaP256Sha256, SignatureAlgorithm::Ed25519] {
        let device = TestSigner::new(alg);
        let current = issue(
            &g,
            7,
            &device.spki_der(),
            NOW,
            Serial::from_random([3; 16]),
            &Issuer {
                cert_der: &ca_der,
                signer: &ca_key,
            },
        )
        .unwrap();
        let new_key = crate::fingerprint::sha256(&TestSigner::new(alg).spki_der());
        let other_key = crate::fingerprint::sha256(b"another key");
        let msg = renewal_message(&crate::fingerprint::sha256(&current), &new_key);
        let proof = device.sign(&msg).unwrap();
        assert_eq!(
            verify_renewal_proof(&current, &new_key, &proof),
            Ok(()),
            "{alg:?}"
        );
        // Another new key, another signer, a flipped bit, an oversized proof: refused.
        assert_eq!(
            verify_renewal_proof(&current, &other_key, &proof),
            Err(ProofError::BadSignature)
        );
        let stranger = TestSigner::new(alg).sign(&msg).unwrap();
        assert_eq!(
            verify_renewal_proof(&current, &new_key, &stranger),
            Err(ProofError::BadSignature)
        );
        let mut bent = proof.clone();
        bent[10] ^= 1;
        assert_eq!(
            verify_renewal_proof(&current, &new_key, &bent),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            verify_renewal_proof(&current, &new_key, &[0; MAX_RENEWAL_PROOF + 1]),
            Err(ProofError::TooLarge)
        );
        assert_eq!(
            verify_renewal_proof(b"junk", &new_key, &proof),
            Err(ProofError::UnsupportedKey)
        );
    }
}
