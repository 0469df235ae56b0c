use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use ciborium::Value;
use coset::{CborSerializable, TaggedCborSerializable};
use time::macros::datetime;
use time::Duration;

use super::*;
use crate::entitlement::{Action, DeviceKeyType, Grant};
use crate::fingerprint;
use crate::profile::tests::TestSigner;
use crate::profile::{self, Holder, Issuer, Serial, Validity};
use crate::SiteId;

pub(super) const NOW: OffsetDateTime = datetime!(2026-11-22 12:00:00 UTC);
pub(super) const P256: SignatureAlgorithm = SignatureAlgorithm::EcdsaP256Sha256;
/// The registry's `org`: appears nowhere else in the file.
const ORG: &str = "Acme Registry Org";

pub(super) fn days(n: i64) -> Duration {
    Duration::days(n)
}

pub(super) fn serial() -> Serial {
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).unwrap();
    Serial::from_random(b)
}

pub(super) fn site(id: &str) -> Holder {
    Holder::Site(SiteId::new(id).unwrap())
}

/// A certificate with its key.
pub(super) struct Ca {
    pub(super) key: TestSigner,
    pub(super) der: Vec<u8>,
}

impl Ca {
    /// A self-signed OEM root for "Acme" (every such root has the same subject).
    pub(super) fn root() -> Ca {
        let key = TestSigner::new(P256);
        let validity = Validity::starting(NOW - days(400), Profile::OemRoot.default_lifetime());
        let der = profile::self_signed_root(&key, "Acme", validity, serial()).unwrap();
        Ca { key, der }
    }

    pub(super) fn issuer(&self) -> Issuer<'_> {
        Issuer {
            cert_der: &self.der,
            signer: &self.key,
        }
    }

    /// A certificate of `profile` for a fresh P-256 key, issued by this CA.
    pub(super) fn issue(&self, profile: Profile, holder: &Holder) -> Ca {
        self.issue_with(profile, holder, TestSigner::new(P256))
    }

    pub(super) fn issue_with(&self, profile: Profile, holder: &Holder, key: TestSigner) -> Ca {
        let der = profile::issue(
            profile,
            "Acme",
            holder,
            &cert::subject_key(key.algorithm().rcgen(), key.public_key()),
            Validity::starting(NOW - days(400), profile.default_lifetime()),
            serial(),
            &self.issuer(),
        )
        .unwrap();
        Ca { key, der }
    }
}

/// Every certificate of one OEM: root, HQ authority signing, two site issuing CAs.
pub(super) struct Pki {
    pub(super) root: Ca,
    pub(super) hq: Ca,
    pub(super) s1: Ca,
    pub(super) s2: Ca,
}

impl Pki {
    pub(super) fn new() -> Pki {
        Pki::with_hq_key(TestSigner::new(P256))
    }

    pub(super) fn with_hq_key(hq_key: TestSigner) -> Pki {
        let root = Ca::root();
        let hq = root.issue_with(Profile::HqAuthoritySigning, &Holder::Hq, hq_key);
        let s1 = root.issue(Profile::SiteIssuingCa, &site("s1"));
        let s2 = root.issue(Profile::SiteIssuingCa, &site("s2"));
        Pki { root, hq, s1, s2 }
    }

    pub(super) fn root_fp(&self) -> [u8; 32] {
        fingerprint::sha256(&self.root.der)
    }

    /// Site s1 with entitlements s1.1 (serials 1-100, HQ reconciled first issues up to serial
    /// 3) and s1.2 (200-299, nothing reconciled); site s2 (nothing reconciled) with s2.1
    /// (1000-1100). No devices, no revocations, 30 provisional days.
    pub(super) fn registry(&self) -> Registry {
        Registry {
            format: FORMAT.into(),
            version: VERSION,
            sequence: 5,
            issued_at: NOW.unix_timestamp(),
            org: ORG.into(),
            root: ByteBuf::from(self.root.der.clone()),
            sites: vec![
                RegistrySite {
                    site_id: "s1".into(),
                    issuing_ca: ByteBuf::from(self.s1.der.clone()),
                    log_size: 3,
                },
                RegistrySite {
                    site_id: "s2".into(),
                    issuing_ca: ByteBuf::from(self.s2.der.clone()),
                    log_size: 0,
                },
            ],
            entitlements: vec![
                RegistryEntitlement {
                    serial_frontier: Some(3),
                    ..entitlement(&grant("s1.1", 1, 100), "s1")
                },
                entitlement(&grant("s1.2", 200, 299), "s1"),
                entitlement(&grant("s2.1", 1000, 1100), "s2"),
            ],
            devices: Vec::new(),
            superseded: Vec::new(),
            revocations: Vec::new(),
            provisional_days: 30,
        }
    }

    pub(super) fn sign(&self, reg: &Registry) -> Vec<u8> {
        sign(reg, &self.hq.key, &self.hq.der).unwrap()
    }

    /// Signs `reg` and reads it back, pinned to the root, at NOW.
    pub(super) fn verified(&self, reg: &Registry) -> verify::VerifiedRegistry {
        verify(&self.sign(reg), Some(&self.root_fp()), 0, NOW).unwrap()
    }
}

/// A grant for the sample product ("Acme" / "acme" / "thermo-2", P-256 keys only, 3650 days).
pub(super) fn grant(id: &str, first: u64, last: u64) -> Grant {
    let Action::Grant(mut g) = crate::entitlement::tests::grant("s1", 1).action else {
        unreachable!()
    };
    g.entitlement_id = id.into();
    g.serial_ranges = vec![SerialRange { first, last }];
    g.device_profile.key_types = vec![DeviceKeyType::P256];
    g
}

pub(super) fn entitlement(g: &Grant, site_id: &str) -> RegistryEntitlement {
    RegistryEntitlement {
        entitlement_id: g.entitlement_id.clone(),
        site_id: site_id.into(),
        product: g.product.clone(),
        device_profile: g.device_profile.clone(),
        serial_ranges: g.serial_ranges.clone(),
        status: Status::Active,
        serial_frontier: None,
    }
}

/// `file` with its payload replaced by `payload`, signed again by `key` (ES256): a file HQ
/// really signed, with content `sign` would not write.
fn resign(file: &[u8], payload: Vec<u8>, key: &TestSigner) -> Vec<u8> {
    let mut s = CoseSign1::from_tagged_slice(file).unwrap();
    s.payload = Some(payload);
    let tbs = s.tbs_data(b"");
    s.signature = key.sign_fixed(&tbs).unwrap();
    s.to_tagged_vec().unwrap()
}

fn cbor(v: &impl serde::Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

/// The registry as a CBOR map value, to add what `Registry` cannot hold.
fn as_map(reg: &Registry) -> Vec<(Value, Value)> {
    match Value::serialized(reg).unwrap() {
        Value::Map(m) => m,
        other => panic!("not a map: {other:?}"),
    }
}

fn malformed(r: Result<verify::VerifiedRegistry, RegistryError>, what: &str) {
    match r {
        Err(RegistryError::Malformed(m)) if m.contains(what) => {}
        other => panic!(
            "expected Malformed({what:?}), got {:?}",
            other.map(|v| v.sequence())
        ),
    }
}

/// Signs the registry under the usual PKI and verifies it (pinned, at NOW).
fn check(pki: &Pki, reg: &Registry) -> Result<verify::VerifiedRegistry, RegistryError> {
    verify(&pki.sign(reg), Some(&pki.root_fp()), 0, NOW)
}

#[test]
fn registry_sign_verify_round_trip_with_every_hq_key_type() {
    for alg in [
        SignatureAlgorithm::EcdsaP256Sha256,
        SignatureAlgorithm::EcdsaP384Sha384,
        SignatureAlgorithm::Ed25519,
    ] {
        let pki = Pki::with_hq_key(TestSigner::new(alg));
        let mut reg = pki.registry();
        reg.devices = vec![
            RegisteredDevice(1, ByteBuf::from(vec![1; 32])),
            RegisteredDevice(2, ByteBuf::from(vec![2; 32])),
        ];
        reg.revocations = vec![Revocation {
            device_serial: Some(3),
            reason: "lost".into(),
            revoked_at: NOW.unix_timestamp(),
            ..Revocation::default()
        }];
        let file = pki.sign(&reg);
        let v = verify(&file, Some(&pki.root_fp()), 5, NOW).unwrap();
        assert_eq!(v.sequence(), 5);
        assert_eq!(v.issued_at(), NOW.unix_timestamp());
        assert_eq!(v.org(), ORG);
        assert_eq!(v.root_der(), pki.root.der.as_slice());
        assert_eq!(v.root_sha256(), &pki.root_fp());
        assert_eq!(v.sites(), reg.sites.as_slice());
        assert_eq!(v.entitlements(), reg.entitlements.as_slice());
        assert_eq!(v.device_count(), 2);
        assert_eq!(v.revocation_count(), 1);
        // Unpinned, the file is only self-consistent, and still reads.
        assert_eq!(verify(&file, None, 0, NOW).unwrap().sequence(), 5);
        // The payload is exactly the CBOR registry.
        let s = CoseSign1::from_tagged_slice(&file).unwrap();
        assert_eq!(s.payload.as_deref(), Some(cbor(&reg).as_slice()));
        assert_eq!(s.signature.len(), alg.fixed_signature_len());
    }
}

#[test]
fn registry_sign_refuses_rsa_and_a_certificate_of_another_key() {
    let pki = Pki::new();
    let reg = pki.registry();
    let rsa = TestSigner::new(SignatureAlgorithm::Rsa3072PssSha256);
    assert!(matches!(
        sign(&reg, &rsa, &pki.hq.der),
        Err(RegistryError::Signing(_))
    ));
    let stranger = TestSigner::new(P256);
    assert!(matches!(
        sign(&reg, &stranger, &pki.hq.der),
        Err(RegistryError::Signing(_))
    ));
    assert!(matches!(
        sign(&reg, &pki.hq.key, b"not a certificate"),
        Err(RegistryError::Chain(_))
    ));
}

#[test]
fn registry_tampering_breaks_the_signature() {
    let pki = Pki::new();
    let file = pki.sign(&pki.registry());
    let pin = pki.root_fp();
    // The last byte is in the signature.
    let mut bad = file.clone();
    *bad.last_mut().unwrap() ^= 0x01;
    assert!(matches!(
        verify(&bad, Some(&pin), 0, NOW),
        Err(RegistryError::BadSignature)
    ));
    // A letter of the org name (in the payload only), still valid CBOR text.
    let at = file.windows(ORG.len()).position(|w| w == ORG.as_bytes()).unwrap();
    let mut bad = file.clone();
    bad[at] = b'B';
    assert!(matches!(
        verify(&bad, Some(&pin), 0, NOW),
        Err(RegistryError::BadSignature)
    ));
    // A signature from another key, of the right length.
    let other = TestSigner::new(P256);
    let s = CoseSign1::from_tagged_slice(&file).unwrap();
    let forged = resign(&file, s.payload.clone().unwrap(), &other);
    assert!(matches!(
        verify(&forged, Some(&pin), 0, NOW),
        Err(RegistryError::BadSignature)
    ));
    // A signature of the wrong length.
    let mut short = s.clone();
    short.signature.pop();
    assert!(matches!(
        verify(&short.to_tagged_vec().unwrap(), Some(&pin), 0, NOW),
        Err(RegistryError::BadSignature)
    ));
    // Every flipped byte is refused, one way or another.
    for i in (0..file.len()).step_by(3) {
        let mut m = file.clone();
        m[i] ^= 0x01;
        assert!(verify(&m, Some(&pin), 0, NOW).is_err(), "flip at {i} accepted");
    }
}

#[test]
fn registry_refuses_another_root_rollback_and_other_versions() {
    let pki = Pki::new();
    let reg = pki.registry();
    let file = pki.sign(&reg);
    // Pinned to another root.
    let other = Ca::root();
    let other_fp = fingerprint::sha256(&other.der);
    match verify(&file, Some(&other_fp), 0, NOW) {
        Err(RegistryError::RootNotPinned { found, expected }) => {
            assert_eq!(found, fingerprint::colon_hex(&pki.root_fp()));
            assert_eq!(expected, fingerprint::colon_hex(&other_fp));
        }
        r => panic!("{r:?}"),
    }
    // A whole PKI under a look-alike root (same subject) is self-consistent, not pinned.
    let twin = Pki::new();
    assert!(verify(&twin.sign(&twin.registry()), None, 0, NOW).is_ok());
    assert!(matches!(
        verify(&twin.sign(&twin.registry()), Some(&pki.root_fp()), 0, NOW),
        Err(RegistryError::RootNotPinned { .. })
    ));
    // Rollback: sequence 5 against a verifier that has seen 6.
    assert!(verify(&file, Some(&pki.root_fp()), 5, NOW).is_ok());
    assert!(matches!(
        verify(&file, Some(&pki.root_fp()), 6, NOW),
        Err(RegistryError::Rollback { found: 5, minimum: 6 })
    ));
    // Other versions and formats.
    for version in [0, 1, 3] {
        let mut r = reg.clone();
        r.version = version;
        assert!(
            matches!(check(&pki, &r), Err(RegistryError::UnsupportedVersion(v)) if v == version),
            "version {version}"
        );
    }
    let mut r = reg.clone();
    r.format = "stamp-registri".into();
    malformed(check(&pki, &r), "format");
}

#[test]
fn registry_signer_chain_is_checked() {
    let pki = Pki::new();
    let reg = pki.registry();
    // A site issuing CA is no HQ authority signing certificate.
    let file = sign(&reg, &pki.s1.key, &pki.s1.der).unwrap();
    assert!(matches!(
        verify(&file, Some(&pki.root_fp()), 0, NOW),
        Err(RegistryError::Chain(CertError::Profile(_)))
    ));
    // An HQ certificate from a look-alike root, with the genuine root in the registry.
    let twin = Ca::root();
    let hq = twin.issue(Profile::HqAuthoritySigning, &Holder::Hq);
    let file = sign(&reg, &hq.key, &hq.der).unwrap();
    assert!(matches!(
        verify(&file, Some(&pki.root_fp()), 0, NOW),
        Err(RegistryError::Chain(CertError::BadSignature(_)))
    ));
    // The HQ certificate (5 years from NOW - 400 days) has expired.
    let file = pki.sign(&reg);
    assert!(matches!(
        verify(&file, Some(&pki.root_fp()), 0, NOW + days(5 * 365)),
        Err(RegistryError::Chain(CertError::NotValidNow(_)))
    ));
}

#[test]
fn registry_refuses_bad_bytes_and_sizes() {
    let pki = Pki::new();
    let reg = pki.registry();
    let file = pki.sign(&reg);
    let pin = pki.root_fp();
    assert!(matches!(
        verify(&vec![0u8; MAX_REGISTRY_LEN + 1], Some(&pin), 0, NOW),
        Err(RegistryError::TooLarge(n)) if n == MAX_REGISTRY_LEN + 1
    ));
    // Bytes after the COSE_Sign1, or a truncated one.
    let mut trailing = file.clone();
    trailing.push(0);
    malformed(verify(&trailing, Some(&pin), 0, NOW), "not one tagged CBOR item");
    for cut in [1, 2, 10, 100, file.len() / 2, file.len() - 1] {
        malformed(verify(&file[..cut], Some(&pin), 0, NOW), "not one tagged");
    }
    malformed(verify(&[], Some(&pin), 0, NOW), "not one tagged");
    // Untagged, or with another tag.
    let s = CoseSign1::from_tagged_slice(&file).unwrap();
    malformed(verify(&s.clone().to_vec().unwrap(), Some(&pin), 0, NOW), "tagged");
    let mut other_tag = Vec::new();
    ciborium::ser::into_writer(
        &Value::Tag(98, Box::new(s.clone().to_cbor_value().unwrap())),
        &mut other_tag,
    )
    .unwrap();
    malformed(verify(&other_tag, Some(&pin), 0, NOW), "tag 18");
    // Something in the unprotected header (outside the signature).
    let mut unprot = s.clone();
    unprot.unprotected.key_id = b"hq".to_vec();
    malformed(
        verify(&unprot.to_tagged_vec().unwrap(), Some(&pin), 0, NOW),
        "unprotected",
    );
    // A detached payload.
    let mut detached = s;
    detached.payload = None;
    malformed(
        verify(&detached.to_tagged_vec().unwrap(), Some(&pin), 0, NOW),
        "detached",
    );
}

#[test]
fn registry_payload_must_be_exactly_a_registry() {
    let pki = Pki::new();
    let reg = pki.registry();
    let file = pki.sign(&reg);
    let pin = pki.root_fp();
    let key = &pki.hq.key;
    // Re-signing the same payload gives a good file: the helper is sound.
    assert!(verify(&resign(&file, cbor(&reg), key), Some(&pin), 0, NOW).is_ok());
    // An unknown top-level key.
    let mut m = as_map(&reg);
    m.push((Value::Text("extra".into()), Value::Integer(1.into())));
    let bad = resign(&file, cbor(&Value::Map(m)), key);
    malformed(verify(&bad, Some(&pin), 0, NOW), "not a registry");
    // An unknown key in a site.
    let mut m = as_map(&reg);
    for (k, v) in &mut m {
        if k.as_text() == Some("sites") {
            let Value::Array(sites) = v else { panic!() };
            let Value::Map(site) = &mut sites[0] else { panic!() };
            site.push((Value::Text("note".into()), Value::Text("x".into())));
        }
    }
    let bad = resign(&file, cbor(&Value::Map(m)), key);
    malformed(verify(&bad, Some(&pin), 0, NOW), "not a registry");
    // A missing field.
    let m: Vec<_> = as_map(&reg)
        .into_iter()
        .filter(|(k, _)| k.as_text() != Some("sequence"))
        .collect();
    let bad = resign(&file, cbor(&Value::Map(m)), key);
    malformed(verify(&bad, Some(&pin), 0, NOW), "not a registry");
    // Truncated, or followed by more bytes.
    let payload = cbor(&reg);
    let bad = resign(&file, payload[..payload.len() - 1].to_vec(), key);
    malformed(verify(&bad, Some(&pin), 0, NOW), "not a registry");
    let mut longer = payload.clone();
    longer.push(0);
    let bad = resign(&file, longer, key);
    malformed(verify(&bad, Some(&pin), 0, NOW), "after the registry");
    // The payload's root is not x5chain's.
    let mut r = reg.clone();
    r.root = ByteBuf::from(Ca::root().der);
    let bad = resign(&file, cbor(&r), key);
    malformed(verify(&bad, Some(&pin), 0, NOW), "root differs");
}

#[test]
fn registry_content_is_checked() {
    let pki = Pki::new();
    let reg = pki.registry();
    // provisional_days: at most 3650.
    let mut r = reg.clone();
    r.provisional_days = MAX_PROVISIONAL_DAYS;
    assert!(check(&pki, &r).is_ok());
    r.provisional_days = MAX_PROVISIONAL_DAYS + 1;
    malformed(check(&pki, &r), "provisional_days");
    // A site issuing CA under a look-alike root (same subject as the real root).
    let twin = Ca::root();
    let mut r = reg.clone();
    r.sites[1].issuing_ca = ByteBuf::from(twin.issue(Profile::SiteIssuingCa, &site("s2")).der);
    malformed(check(&pki, &r), "not issued by the OEM root");
    // A "site CA" that is not a site issuing CA.
    let mut r = reg.clone();
    r.sites[1].issuing_ca = ByteBuf::from(pki.hq.der.clone());
    assert!(matches!(
        check(&pki, &r),
        Err(RegistryError::Chain(CertError::Profile(_)))
    ));
    let mut r = reg.clone();
    r.sites[1].issuing_ca = ByteBuf::from(b"junk".to_vec());
    assert!(matches!(
        check(&pki, &r),
        Err(RegistryError::Chain(CertError::Malformed))
    ));
    // The same site twice (even with another CA).
    let mut r = reg.clone();
    r.sites[1].site_id = "s1".into();
    malformed(check(&pki, &r), "a site appears twice");
    // An entitlement of a site not in the registry.
    let mut r = reg.clone();
    r.entitlements[2].site_id = "s3".into();
    malformed(check(&pki, &r), "names a site not in the registry");
    // A range that ends before it starts.
    let mut r = reg.clone();
    r.entitlements[0].serial_ranges = vec![SerialRange { first: 5, last: 4 }];
    malformed(check(&pki, &r), "ends before it starts");
    // A serial frontier outside the entitlement's ranges.
    for frontier in [0, 101, 200] {
        let mut r = reg.clone();
        r.entitlements[0].serial_frontier = Some(frontier);
        malformed(check(&pki, &r), "frontier");
    }
    let mut r = reg.clone();
    r.entitlements[0].serial_frontier = Some(100);
    assert!(check(&pki, &r).is_ok());
    // A device hash that is not a SHA-256.
    let mut r = reg.clone();
    r.devices = vec![RegisteredDevice(1, ByteBuf::from(vec![0; 31]))];
    malformed(check(&pki, &r), "not 32 bytes");
    // Revocations name exactly one thing.
    let one = Revocation {
        reason: "r".into(),
        revoked_at: 1,
        ..Revocation::default()
    };
    let good = [
        Revocation {
            device_serial: Some(1),
            ..one.clone()
        },
        Revocation {
            certificate_sha256: Some(ByteBuf::from(vec![0; 32])),
            ..one.clone()
        },
        Revocation {
            entitlement_id: Some("s1.1".into()),
            ..one.clone()
        },
        Revocation {
            site_id: Some("s2".into()),
            ..one.clone()
        },
    ];
    let mut r = reg.clone();
    r.revocations = good.to_vec();
    assert_eq!(check(&pki, &r).unwrap().revocation_count(), 4);
    let two = [
        Revocation {
            device_serial: Some(1),
            site_id: Some("s2".into()),
            ..one.clone()
        },
        Revocation {
            certificate_sha256: Some(ByteBuf::from(vec![0; 32])),
            entitlement_id: Some("s1.1".into()),
            ..one.clone()
        },
        one.clone(),
    ];
    for bad in two {
        let mut r = reg.clone();
        r.revocations = vec![good[0].clone(), bad];
        malformed(check(&pki, &r), "exactly one thing");
    }
    let mut r = reg.clone();
    r.revocations = vec![Revocation {
        certificate_sha256: Some(ByteBuf::from(vec![0; 33])),
        ..one
    }];
    malformed(check(&pki, &r), "not 32 bytes");
}
