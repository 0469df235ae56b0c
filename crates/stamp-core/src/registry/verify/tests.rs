use time::Duration;

use super::*;
use crate::entitlement::SerialRange;
use crate::fingerprint::sha256;
use crate::key::{SignatureAlgorithm, Signer};
use crate::profile::tests::TestSigner;
use crate::profile::{Holder, ServiceName, Validity};
use crate::registry::tests::{days, grant, serial, site, Ca, Pki, NOW, P256};
use crate::registry::Revocation;
use crate::registry::{RegisteredDevice, RegistryEntitlement, MAX_DEVICE_CHAIN};
use crate::SiteId;
use serde_bytes::ByteBuf;

#[test]
fn standing_names_are_their_serialized_names() {
    for st in [Standing::Registered, Standing::Provisional, Standing::Refused] {
        assert_eq!(serde_json::to_value(st).unwrap(), st.name());
    }
}

/// A device certificate for serial `n` under `g`, issued by `ca` at `not_before`.
fn device(ca: &Ca, g: &Grant, n: u64, not_before: OffsetDateTime) -> Vec<u8> {
    device_with_key(ca, g, n, not_before, &TestSigner::new(P256))
}

fn device_with_key(ca: &Ca, g: &Grant, n: u64, not_before: OffsetDateTime, key: &TestSigner) -> Vec<u8> {
    crate::device::issue(g, n, &key.spki_der(), not_before, serial(), &ca.issuer()).unwrap()
}

/// A certificate shaped like a device's (subject, key usage, basic constraints, key
/// identifiers) for serial `n`, issued by `ca` at NOW - 5 days, with the given extended key
/// usages (none: no extension), built with rcgen.
fn device_shaped(ca: &Ca, n: u64, ekus: Vec<rcgen::ExtendedKeyUsagePurpose>) -> Vec<u8> {
    device_shaped_serial(ca, &n.to_string(), ekus)
}

/// [`device_shaped`] with the subject serialNumber written as `serial_text`.
fn device_shaped_serial(ca: &Ca, serial_text: &str, ekus: Vec<rcgen::ExtendedKeyUsagePurpose>) -> Vec<u8> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyIdMethod, KeyUsagePurpose};
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Acme");
    dn.push(DnType::OrganizationalUnitName, "acme");
    dn.push(DnType::CommonName, "thermo-2");
    dn.push(
        DnType::CustomDnType(vec![2, 5, 4, 5]),
        DnValue::PrintableString(serial_text.try_into().unwrap()),
    );
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.not_before = NOW - days(5);
    p.not_after = NOW + days(300);
    p.serial_number = Some(rcgen::SerialNumber::from_slice(serial().as_bytes()));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = ekus;
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    let issuer =
        rcgen::Issuer::from_ca_cert_der(&ca.der.clone().into(), crate::key::RcgenSigner(&ca.key)).unwrap();
    let key = TestSigner::new(P256);
    let spki = rcgen::SubjectPublicKeyInfo::from_der(&key.spki_der()).unwrap();
    p.signed_by(&spki, &issuer).unwrap().der().to_vec()
}

fn registered(der: &[u8], n: u64) -> RegisteredDevice {
    RegisteredDevice(n, ByteBuf::from(sha256(der).to_vec()))
}

fn revocation(f: impl FnOnce(&mut Revocation)) -> Revocation {
    let mut r = Revocation {
        reason: "test".into(),
        revoked_at: NOW.unix_timestamp(),
        ..Revocation::default()
    };
    f(&mut r);
    r
}

/// Position of a reason in a table of all of them; the match is exhaustive, so a new reason
/// does not compile until the coverage check below knows it.
fn index(r: Reason) -> usize {
    match r {
        Reason::MalformedChain => 0,
        Reason::UnknownIssuer => 1,
        Reason::ChainInvalid => 2,
        Reason::Expired => 3,
        Reason::NotYetValid => 4,
        Reason::WrongUsage => 5,
        Reason::ProfileMismatch => 6,
        Reason::SerialOutOfRange => 7,
        Reason::SiteRevoked => 8,
        Reason::EntitlementRevoked => 9,
        Reason::Revoked => 10,
        Reason::Clone => 11,
        Reason::NotInLog => 12,
        Reason::NotReconciled => 13,
        Reason::EntitlementSuspended => 14,
        Reason::Superseded => 15,
    }
}
const REASONS: usize = 16;

type Expect = Result<Standing, Reason>;
/// A name, the registry, the chain the device presents, when, and the verdict expected.
type Case<'a> = (
    &'static str,
    &'a VerifiedRegistry,
    Vec<Vec<u8>>,
    OffsetDateTime,
    Expect,
);

#[track_caller]
fn assert_verdict(name: &str, v: &Verdict, want: Expect) {
    match want {
        Ok(standing) => {
            assert!(v.genuine, "{name}: {v:?}");
            assert_eq!(v.standing, standing, "{name}: {v:?}");
            assert_eq!(v.reason, None, "{name}: {v:?}");
        }
        Err(reason) => {
            assert!(!v.genuine, "{name}: {v:?}");
            assert_eq!(v.standing, Standing::Refused, "{name}: {v:?}");
            assert_eq!(v.reason, Some(reason), "{name}: {v:?}");
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.code(), "{name}");
        }
    }
}

#[test]
fn registry_check_device_gives_every_reason_and_standing() {
    let pki = Pki::new();
    let g11 = grant("s1.1", 1, 100);
    let g12 = grant("s1.2", 200, 299);
    let g21 = grant("s2.1", 1000, 1100);
    // HQ reconciled s1.1's first issues up to serial 3 (1 is registered).
    let old = NOW - days(20);
    let new = NOW - days(5);

    let reg_dev = device(&pki.s1, &g11, 1, old);
    let prov_dev = device(&pki.s1, &g11, 6, new);
    // Serial 3 at the frontier; serial 2 below it, with a fresh notBefore (a site's clock
    // says nothing about coverage).
    let skipped = device(&pki.s1, &g11, 3, old);
    let skipped_new = device(&pki.s1, &g11, 2, NOW);
    let clone = device(&pki.s1, &g11, 1, new);
    let last_in_range = device(&pki.s1, &g11, 100, new);
    let past_range = device(&pki.s1, &g11, 101, new);
    // s1's key signing a serial HQ allocated to s2.
    let s2_range = device(&pki.s1, &g21, 1000, new);
    let mut one_day = g11.clone();
    one_day.device_profile.validity_days = 1;
    let expired = device(&pki.s1, &one_day, 4, new);
    let future = device(&pki.s1, &g11, 5, NOW + days(1));
    let revoked_serial = device(&pki.s1, &g11, 7, old);
    let revoked_cert = device(&pki.s1, &g11, 8, new);
    let same_serial = device(&pki.s1, &g11, 8, new);
    let ent_dev = device(&pki.s1, &g12, 200, new);
    let s2_dev = device(&pki.s2, &g21, 1000, new);

    // A rogue root with the genuine root's name, and under it a CA with s1's exact subject,
    // and one with an unenrolled site's name.
    let rogue_root = Ca::root();
    let lookalike_ca = rogue_root.issue(Profile::SiteIssuingCa, &site("s1"));
    let lookalike = device(&lookalike_ca, &g11, 9, new);
    let rogue_ca = rogue_root.issue(Profile::SiteIssuingCa, &site("s9"));
    let rogue = device(&rogue_ca, &g11, 9, new);

    // Not client-authentication end entities.
    let ca_leaf = pki.s1.issue(Profile::SiteIssuingCa, &site("s9"));
    let server = {
        let key = TestSigner::new(P256);
        crate::profile::issue_site_service(
            "Acme",
            &SiteId::new("s1").unwrap(),
            &[ServiceName::Dns("site.example".into())],
            &cert::subject_key(key.algorithm().rcgen(), key.public_key()),
            Validity::starting(new, days(365)),
            serial(),
            &pki.s1.issuer(),
        )
        .unwrap()
    };
    let server_eku = device_shaped(&pki.s1, 11, vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]);
    let client_eku = device_shaped(&pki.s1, 12, vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]);
    let no_eku = device_shaped(&pki.s1, 10, vec![]);

    // Valid client certificates of s1 that are not devices of the entitlement's profile.
    let station = pki.s1.issue(
        Profile::Station,
        &Holder::Station {
            site: SiteId::new("s1").unwrap(),
            name: "line-1".into(),
        },
    );
    let mut other_product = g11.clone();
    other_product.product.product_id = "other".into();
    let other_product = device(&pki.s1, &other_product, 13, new);
    let ed25519 = device_with_key(
        &pki.s1,
        &g11,
        14,
        new,
        &TestSigner::new(SignatureAlgorithm::Ed25519),
    );
    let mut long = g11.clone();
    long.device_profile.validity_days = 4000;
    let long = device(&pki.s1, &long, 15, new);
    let verification = crate::cloud_ca::verification_cert(
        "CODE-123",
        &TestSigner::new(P256).spki_der(),
        NOW - Duration::hours(1),
        serial(),
        &pki.s1.issuer(),
    )
    .unwrap();

    let mut reg = pki.registry();
    reg.devices = vec![registered(&reg_dev, 1), registered(&revoked_serial, 7)];
    // `clone` has serial 1 too: listed as superseded, it is refused as such.
    let mut renewed = reg.clone();
    renewed.superseded = vec![registered(&clone, 1)];
    let renewed = pki.verified(&renewed);
    let clean = pki.verified(&reg);
    reg.revocations = vec![
        revocation(|r| r.site_id = Some("s2".into())),
        revocation(|r| r.entitlement_id = Some("s1.2".into())),
        revocation(|r| r.device_serial = Some(7)),
        revocation(|r| r.certificate_sha256 = Some(ByteBuf::from(sha256(&revoked_cert).to_vec()))),
    ];
    let revoked = pki.verified(&reg);
    reg.revocations = Vec::new();
    reg.entitlements[1].status = crate::entitlement::Status::Suspended;
    let suspended = pki.verified(&reg);

    let one = |d: &Vec<u8>| vec![d.clone()];
    let cases: Vec<Case<'_>> = vec![
        ("registered", &clean, one(&reg_dev), NOW, Ok(Standing::Registered)),
        (
            "registered, with a full chain",
            &clean,
            vec![reg_dev.clone(), pki.s1.der.clone(), pki.root.der.clone()],
            NOW,
            Ok(Standing::Registered),
        ),
        (
            "registered, the rest of the chain is ignored",
            &clean,
            vec![reg_dev.clone(), b"junk".to_vec()],
            NOW,
            Ok(Standing::Registered),
        ),
        (
            "registered, 4 certificates",
            &clean,
            vec![reg_dev.clone(); MAX_DEVICE_CHAIN],
            NOW,
            Ok(Standing::Registered),
        ),
        (
            "provisional",
            &clean,
            one(&prov_dev),
            NOW,
            Ok(Standing::Provisional),
        ),
        (
            "provisional until provisional_days",
            &clean,
            one(&prov_dev),
            new + days(30),
            Ok(Standing::Provisional),
        ),
        (
            "not reconciled after provisional_days",
            &clean,
            one(&prov_dev),
            new + days(30) + Duration::seconds(1),
            Err(Reason::NotReconciled),
        ),
        (
            "registered is not subject to provisional_days",
            &clean,
            one(&reg_dev),
            NOW + days(365),
            Ok(Standing::Registered),
        ),
        (
            "at the reconciled serial frontier, not registered",
            &clean,
            one(&skipped),
            NOW,
            Err(Reason::NotInLog),
        ),
        (
            "below the frontier, whatever its notBefore",
            &clean,
            one(&skipped_new),
            NOW,
            Err(Reason::NotInLog),
        ),
        (
            "clone of a registered serial",
            &clean,
            one(&clone),
            NOW,
            Err(Reason::Clone),
        ),
        (
            "a certificate a renewal replaced",
            &renewed,
            one(&clone),
            NOW,
            Err(Reason::Superseded),
        ),
        (
            "last serial in range",
            &clean,
            one(&last_in_range),
            NOW,
            Ok(Standing::Provisional),
        ),
        (
            "past the range",
            &clean,
            one(&past_range),
            NOW,
            Err(Reason::SerialOutOfRange),
        ),
        (
            "another site's range",
            &clean,
            one(&s2_range),
            NOW,
            Err(Reason::SerialOutOfRange),
        ),
        ("expired", &clean, one(&expired), NOW, Err(Reason::Expired)),
        (
            "short-lived, while valid",
            &clean,
            one(&expired),
            new + Duration::hours(12),
            Ok(Standing::Provisional),
        ),
        (
            "registered, long after",
            &clean,
            one(&reg_dev),
            NOW + days(3650),
            Err(Reason::Expired),
        ),
        (
            "not yet valid",
            &clean,
            one(&future),
            NOW,
            Err(Reason::NotYetValid),
        ),
        (
            "valid later",
            &clean,
            one(&future),
            NOW + days(2),
            Ok(Standing::Provisional),
        ),
        (
            "look-alike site CA",
            &clean,
            one(&lookalike),
            NOW,
            Err(Reason::ChainInvalid),
        ),
        (
            "look-alike site CA, with its chain",
            &clean,
            vec![
                lookalike.clone(),
                lookalike_ca.der.clone(),
                rogue_root.der.clone(),
            ],
            NOW,
            Err(Reason::ChainInvalid),
        ),
        ("rogue CA", &clean, one(&rogue), NOW, Err(Reason::UnknownIssuer)),
        (
            "the OEM root as a device",
            &clean,
            one(&pki.root.der),
            NOW,
            Err(Reason::UnknownIssuer),
        ),
        (
            "a CA certificate as the leaf",
            &clean,
            one(&ca_leaf.der),
            NOW,
            Err(Reason::WrongUsage),
        ),
        (
            "serverAuth profile",
            &clean,
            one(&server),
            NOW,
            Err(Reason::WrongUsage),
        ),
        (
            "device-shaped, serverAuth",
            &clean,
            one(&server_eku),
            NOW,
            Err(Reason::WrongUsage),
        ),
        (
            "device-shaped, clientAuth (control)",
            &clean,
            one(&client_eku),
            NOW,
            Ok(Standing::Provisional),
        ),
        // RFC 5280 (and webpki): no EKU extension means any purpose; the device profile
        // check refuses it (a device certificate carries clientAuth).
        (
            "device-shaped, no EKU",
            &clean,
            one(&no_eku),
            NOW,
            Err(Reason::ProfileMismatch),
        ),
        (
            "station certificate",
            &clean,
            one(&station.der),
            NOW,
            Err(Reason::ProfileMismatch),
        ),
        (
            "another product",
            &clean,
            one(&other_product),
            NOW,
            Err(Reason::ProfileMismatch),
        ),
        (
            "key type not allowed",
            &clean,
            one(&ed25519),
            NOW,
            Err(Reason::ProfileMismatch),
        ),
        (
            "validity too long",
            &clean,
            one(&long),
            NOW,
            Err(Reason::ProfileMismatch),
        ),
        (
            "cloud verification certificate",
            &clean,
            one(&verification),
            NOW,
            Err(Reason::ProfileMismatch),
        ),
        (
            "s2 device before revocation",
            &clean,
            one(&s2_dev),
            NOW,
            Ok(Standing::Provisional),
        ),
        (
            "s2 device, site revoked",
            &revoked,
            one(&s2_dev),
            NOW,
            Err(Reason::SiteRevoked),
        ),
        (
            "s1.2 device before revocation",
            &clean,
            one(&ent_dev),
            NOW,
            Ok(Standing::Provisional),
        ),
        (
            "s1.2 device, entitlement revoked",
            &revoked,
            one(&ent_dev),
            NOW,
            Err(Reason::EntitlementRevoked),
        ),
        (
            "s1.2 device, entitlement suspended",
            &suspended,
            one(&ent_dev),
            NOW,
            Err(Reason::EntitlementSuspended),
        ),
        (
            "serial 7 before revocation",
            &clean,
            one(&revoked_serial),
            NOW,
            Ok(Standing::Registered),
        ),
        (
            "serial 7 revoked",
            &revoked,
            one(&revoked_serial),
            NOW,
            Err(Reason::Revoked),
        ),
        (
            "certificate before revocation",
            &clean,
            one(&revoked_cert),
            NOW,
            Ok(Standing::Provisional),
        ),
        (
            "certificate revoked",
            &revoked,
            one(&revoked_cert),
            NOW,
            Err(Reason::Revoked),
        ),
        (
            "another certificate of the revoked certificate's serial",
            &revoked,
            one(&same_serial),
            NOW,
            Ok(Standing::Provisional),
        ),
        (
            "registered, other revocations",
            &revoked,
            one(&reg_dev),
            NOW,
            Ok(Standing::Registered),
        ),
        ("empty chain", &clean, vec![], NOW, Err(Reason::MalformedChain)),
        (
            "5 certificates",
            &clean,
            vec![reg_dev.clone(); MAX_DEVICE_CHAIN + 1],
            NOW,
            Err(Reason::MalformedChain),
        ),
        (
            "garbage",
            &clean,
            vec![b"garbage".to_vec()],
            NOW,
            Err(Reason::MalformedChain),
        ),
        (
            "empty certificate",
            &clean,
            vec![Vec::new()],
            NOW,
            Err(Reason::MalformedChain),
        ),
        (
            "a byte after the certificate",
            &clean,
            vec![[reg_dev.as_slice(), &[0]].concat()],
            NOW,
            Err(Reason::MalformedChain),
        ),
        (
            "truncated certificate",
            &clean,
            vec![reg_dev[..reg_dev.len() - 1].to_vec()],
            NOW,
            Err(Reason::MalformedChain),
        ),
    ];
    let mut seen = [false; REASONS];
    let mut standings = (false, false);
    for (name, registry, chain, now, want) in &cases {
        let v = registry.check_device(chain, *now);
        assert_verdict(name, &v, *want);
        match want {
            Ok(Standing::Registered) => standings.0 = true,
            Ok(_) => standings.1 = true,
            Err(r) => seen[index(*r)] = true,
        }
    }
    assert!(seen.iter().all(|s| *s), "reasons not covered: {seen:?}");
    assert_eq!(standings, (true, true));
}

#[test]
fn registry_refuses_non_canonical_subject_serials() {
    let pki = Pki::new();
    let reg = pki.verified(&pki.registry());
    let client = || vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    // The control: serial 4 written canonically is a provisional device of s1.1.
    let good = device_shaped_serial(&pki.s1, "4", client());
    let v = reg.check_device(&[good], NOW);
    assert_verdict("4", &v, Ok(Standing::Provisional));
    assert_eq!(v.device_serial, Some(4));
    for bad in ["+4", "04", " 4", "4 ", "", "18446744073709551616", "-4", "4.0"] {
        let der = device_shaped_serial(&pki.s1, bad, client());
        let v = reg.check_device(&[der], NOW);
        assert_verdict(&format!("serialNumber {bad:?}"), &v, Err(Reason::ProfileMismatch));
        assert_eq!(v.device_serial, None, "{bad:?}");
        assert!(v.detail.contains("canonical decimal"), "{bad:?}: {}", v.detail);
    }
}

#[test]
fn registry_verdict_names_what_it_found() {
    let pki = Pki::new();
    let g11 = grant("s1.1", 1, 100);
    let g21 = grant("s2.1", 1000, 1100);
    let dev = device(&pki.s1, &g11, 1, NOW - days(20));
    let mut reg = pki.registry();
    reg.devices = vec![registered(&dev, 1)];
    let r = pki.verified(&reg);
    let v = r.check_device(std::slice::from_ref(&dev), NOW);
    assert_eq!(v.standing, Standing::Registered);
    assert_eq!(v.site_id.as_deref(), Some("s1"));
    assert_eq!(v.entitlement_id.as_deref(), Some("s1.1"));
    assert_eq!(v.device_serial, Some(1));
    assert_eq!(v.certificate_sha256, Some(hex::encode(sha256(&dev))));
    // Out of range: site and serial known, no entitlement.
    let v = r.check_device(&[device(&pki.s1, &g21, 1000, NOW)], NOW);
    assert_eq!(v.reason, Some(Reason::SerialOutOfRange));
    assert_eq!(v.site_id.as_deref(), Some("s1"));
    assert_eq!(v.device_serial, Some(1000));
    assert_eq!(v.entitlement_id, None);
    // The range of s2 admits it from s2.
    let v = r.check_device(&[device(&pki.s2, &g21, 1000, NOW)], NOW);
    assert_eq!(v.standing, Standing::Provisional, "{v:?}");
    assert_eq!(v.site_id.as_deref(), Some("s2"));
    assert_eq!(v.entitlement_id.as_deref(), Some("s2.1"));
    // Unknown issuer: nothing known but the certificate's hash.
    let rogue = Ca::root().issue(Profile::SiteIssuingCa, &site("s9"));
    let d = device(&rogue, &g11, 1, NOW);
    let v = r.check_device(std::slice::from_ref(&d), NOW);
    assert_eq!(v.reason, Some(Reason::UnknownIssuer));
    assert_eq!((v.site_id, v.device_serial), (None, None));
    assert_eq!(v.certificate_sha256, Some(hex::encode(sha256(&d))));
    // Malformed: not even a hash.
    let v = r.check_device(&[], NOW);
    assert_eq!(v.certificate_sha256, None);
}

#[test]
fn registry_serial_frontier_decides_not_in_log() {
    let pki = Pki::new();
    // s1.1 has two ranges, 1-100 and 500-600; serials go in order through them.
    let mut g11 = grant("s1.1", 1, 100);
    g11.serial_ranges.push(SerialRange {
        first: 500,
        last: 600,
    });
    let at = |n| device(&pki.s1, &g11, n, NOW - days(1));
    let (d42, d43, d100, d500, d501) = (at(42), at(43), at(100), at(500), at(501));
    for (frontier, dev, n, want) in [
        (None, &d42, 42, Ok(Standing::Provisional)),
        (Some(41), &d42, 42, Ok(Standing::Provisional)),
        (Some(42), &d42, 42, Err(Reason::NotInLog)),
        (Some(42), &d43, 43, Ok(Standing::Provisional)),
        (Some(100), &d100, 100, Err(Reason::NotInLog)),
        (Some(100), &d500, 500, Ok(Standing::Provisional)),
        (Some(500), &d42, 42, Err(Reason::NotInLog)),
        (Some(500), &d500, 500, Err(Reason::NotInLog)),
        (Some(500), &d501, 501, Ok(Standing::Provisional)),
    ] {
        let mut reg = pki.registry();
        reg.entitlements[0] = RegistryEntitlement {
            serial_frontier: frontier,
            ..crate::registry::tests::entitlement(&g11, "s1")
        };
        let v = pki.verified(&reg).check_device(std::slice::from_ref(dev), NOW);
        assert_verdict(&format!("serial {n}, frontier {frontier:?}"), &v, want);
        if want.is_err() {
            assert!(v.detail.contains("at or below"), "{}", v.detail);
        }
        // Once registered, it is genuine wherever the frontier is.
        reg.devices = vec![registered(dev, n)];
        let v = pki.verified(&reg).check_device(std::slice::from_ref(dev), NOW);
        assert_verdict("registered", &v, Ok(Standing::Registered));
    }
}

#[test]
fn registry_provisional_only_for_active_entitlements() {
    use crate::entitlement::Status;
    let pki = Pki::new();
    let g11 = grant("s1.1", 1, 100);
    let reg_dev = device(&pki.s1, &g11, 1, NOW - days(3));
    let new_dev = device(&pki.s1, &g11, 50, NOW - days(1));
    for (status, want_new) in [
        (Status::Active, Ok(Standing::Provisional)),
        (Status::Suspended, Err(Reason::EntitlementSuspended)),
        (Status::Revoked, Err(Reason::EntitlementRevoked)),
    ] {
        let mut reg = pki.registry();
        reg.entitlements[0].status = status;
        reg.devices = vec![registered(&reg_dev, 1)];
        let r = pki.verified(&reg);
        let v = r.check_device(std::slice::from_ref(&new_dev), NOW);
        assert_verdict(&format!("{status:?}, unreconciled"), &v, want_new);
        // A device HQ reconciled stays genuine (revoking its devices is a revocation).
        let v = r.check_device(std::slice::from_ref(&reg_dev), NOW);
        assert_verdict(&format!("{status:?}, registered"), &v, Ok(Standing::Registered));
        assert!(r.is_registered(1) && !r.is_registered(50));
    }
}

#[test]
fn registry_verdict_names_the_public_key() {
    let pki = Pki::new();
    let g11 = grant("s1.1", 1, 100);
    let key = TestSigner::new(P256);
    let dev = device_with_key(&pki.s1, &g11, 50, NOW - days(1), &key);
    let v = pki.verified(&pki.registry()).check_device(&[dev], NOW);
    assert_eq!(v.public_key_sha256, Some(hex::encode(sha256(&key.spki_der()))));
}

#[test]
fn registry_provisional_days_bound_unreconciled_devices() {
    let pki = Pki::new();
    let g11 = grant("s1.1", 1, 100);
    let nb = NOW - days(5);
    let dev = device(&pki.s1, &g11, 42, nb);
    let second = Duration::seconds(1);
    for (provisional_days, now, want) in [
        (30, nb + days(30), Ok(Standing::Provisional)),
        (30, nb + days(30) + second, Err(Reason::NotReconciled)),
        (1, nb + days(1), Ok(Standing::Provisional)),
        (1, nb + days(1) + second, Err(Reason::NotReconciled)),
        // No limit.
        (0, nb + days(3000), Ok(Standing::Provisional)),
        (3650, nb + days(3000), Ok(Standing::Provisional)),
    ] {
        let mut reg = pki.registry();
        reg.provisional_days = provisional_days;
        let v = pki.verified(&reg).check_device(std::slice::from_ref(&dev), now);
        assert_verdict(&format!("{provisional_days} days, at {now}"), &v, want);
    }
}
