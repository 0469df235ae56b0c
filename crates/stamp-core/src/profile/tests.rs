use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use time::macros::datetime;

use super::*;
use crate::key::{KeyError, SignatureAlgorithm};

/// An in-memory signer for tests (core does not depend on the key store).
pub(crate) enum TestSigner {
    Ecdsa(EcdsaKeyPair, SignatureAlgorithm),
    Ed(Ed25519KeyPair),
    Rsa(Box<aws_lc_rs::rsa::KeyPair>),
}

impl TestSigner {
    pub(crate) fn ecdsa_p256() -> Self {
        TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256)
    }
    pub(crate) fn ecdsa_p384() -> Self {
        TestSigner::new(SignatureAlgorithm::EcdsaP384Sha384)
    }
    pub(crate) fn ed25519() -> Self {
        TestSigner::new(SignatureAlgorithm::Ed25519)
    }
    /// An Ed25519 key from a 32-byte seed (RFC 8032 test vectors).
    pub(crate) fn ed25519_from_seed(seed: &[u8]) -> Self {
        TestSigner::Ed(Ed25519KeyPair::from_seed_unchecked(seed).unwrap())
    }
    pub(crate) fn new(alg: SignatureAlgorithm) -> Self {
        match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => TestSigner::Ecdsa(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap(),
                alg,
            ),
            SignatureAlgorithm::EcdsaP384Sha384 => TestSigner::Ecdsa(
                EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_ASN1_SIGNING).unwrap(),
                alg,
            ),
            SignatureAlgorithm::Ed25519 => TestSigner::Ed(Ed25519KeyPair::generate().unwrap()),
            SignatureAlgorithm::Rsa3072PssSha256 => TestSigner::Rsa(Box::new(
                aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072).unwrap(),
            )),
        }
    }
}

impl std::fmt::Debug for TestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TestSigner({}, {})",
            Signer::key_ref(self),
            Signer::algorithm(self).name()
        )
    }
}

impl Signer for TestSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            TestSigner::Ecdsa(_, a) => *a,
            TestSigner::Ed(_) => SignatureAlgorithm::Ed25519,
            TestSigner::Rsa(_) => SignatureAlgorithm::Rsa3072PssSha256,
        }
    }
    fn public_key(&self) -> &[u8] {
        match self {
            TestSigner::Ecdsa(k, _) => k.public_key().as_ref(),
            TestSigner::Ed(k) => k.public_key().as_ref(),
            TestSigner::Rsa(k) => k.public_key().as_ref(),
        }
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        Ok(match self {
            TestSigner::Ecdsa(k, _) => k.sign(&SystemRandom::new(), message).unwrap().as_ref().to_vec(),
            TestSigner::Ed(k) => k.sign(message).as_ref().to_vec(),
            TestSigner::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &signature::RSA_PSS_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .unwrap();
                sig
            }
        })
    }
    fn key_ref(&self) -> &str {
        "test:key"
    }
}

const NOW: OffsetDateTime = datetime!(2026-11-22 12:00:00 UTC);

fn serial(n: u8) -> Serial {
    Serial::from_random([n; 16])
}

pub(crate) fn root(alg: SignatureAlgorithm) -> (TestSigner, Vec<u8>) {
    let key = TestSigner::new(alg);
    let der = self_signed_root(
        &key,
        "Acme",
        Validity::starting(NOW, Duration::days(3650)),
        serial(1),
    )
    .unwrap();
    (key, der)
}

fn issue_for(profile: Profile, root_key: &TestSigner, root_der: &[u8], subject: &TestSigner) -> Vec<u8> {
    let holder = match profile {
        Profile::HqAuthoritySigning | Profile::HqAuthorityKeyAgreement => Holder::Hq,
        Profile::Station => Holder::Station {
            site: SiteId::new("s1").unwrap(),
            name: "line-3.station".into(),
        },
        Profile::FirmwareSigning => Holder::FirmwareKey("app-2026".into()),
        _ => Holder::Site(SiteId::new("s1").unwrap()),
    };
    issue(
        profile,
        "Acme",
        &holder,
        &crate::cert::subject_key(subject.algorithm().rcgen(), subject.public_key()),
        Validity::starting(NOW, Duration::days(365 * 30)),
        serial(7),
        &Issuer {
            cert_der: root_der,
            signer: root_key,
        },
    )
    .unwrap()
}

#[test]
fn every_profile_passes_its_own_check_and_no_other() {
    for root_alg in [
        SignatureAlgorithm::EcdsaP384Sha384,
        SignatureAlgorithm::EcdsaP256Sha256,
    ] {
        let (root_key, root_der) = root(root_alg);
        let subject = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
        for profile in ALL_PROFILES {
            let der = if profile == Profile::OemRoot {
                root_der.clone()
            } else {
                issue_for(profile, &root_key, &root_der, &subject)
            };
            let cert = crate::cert::parse(&der).unwrap();
            profile.check(&cert).unwrap();
            for other in ALL_PROFILES.into_iter().filter(|o| *o != profile) {
                assert!(
                    other.check(&cert).is_err(),
                    "{} passed as {}",
                    profile.name(),
                    other.name()
                );
            }
            if !matches!(
                profile,
                Profile::OemRoot | Profile::Station | Profile::SiteService
            ) {
                crate::cert::check_under_root("test", &der, profile, &root_der, NOW).unwrap();
            }
        }
    }
}

#[test]
fn validity_is_cut_to_the_issuer_and_must_not_be_empty() {
    let (root_key, root_der) = root(SignatureAlgorithm::EcdsaP256Sha256);
    let subject = TestSigner::new(SignatureAlgorithm::Ed25519);
    let der = issue_for(Profile::SiteIssuingCa, &root_key, &root_der, &subject);
    let cert = crate::cert::parse(&der).unwrap();
    let root = crate::cert::parse(&root_der).unwrap();
    assert_eq!(cert.validity().not_after, root.validity().not_after);
    let empty = Validity {
        not_before: NOW,
        not_after: NOW,
    };
    assert!(matches!(
        self_signed_root(&root_key, "Acme", empty, serial(1)),
        Err(ProfileError::EmptyValidity)
    ));
}

#[test]
fn the_issuer_certificate_must_belong_to_the_signer() {
    let (_, root_der) = root(SignatureAlgorithm::EcdsaP256Sha256);
    let stranger = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let r = issue(
        Profile::SiteIssuingCa,
        "Acme",
        &Holder::Site(SiteId::new("s1").unwrap()),
        &crate::cert::subject_key(stranger.algorithm().rcgen(), stranger.public_key()),
        Validity::starting(NOW, Duration::days(1)),
        serial(3),
        &Issuer {
            cert_der: &root_der,
            signer: &stranger,
        },
    );
    assert!(matches!(r, Err(ProfileError::IssuerKeyMismatch(_))));
}

#[test]
fn a_certificate_from_another_root_or_expired_is_refused() {
    let (root_key, root_der) = root(SignatureAlgorithm::EcdsaP256Sha256);
    let (_, other_root) = root(SignatureAlgorithm::EcdsaP256Sha256);
    let subject = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let der = issue_for(Profile::HqAuthoritySigning, &root_key, &root_der, &subject);
    let r = crate::cert::check_under_root("hq", &der, Profile::HqAuthoritySigning, &other_root, NOW);
    assert!(matches!(r, Err(crate::cert::CertError::BadSignature(_))), "{r:?}");
    let later = NOW + Duration::days(365 * 20);
    let r = crate::cert::check_under_root("hq", &der, Profile::HqAuthoritySigning, &root_der, later);
    assert!(matches!(r, Err(crate::cert::CertError::NotValidNow(_))), "{r:?}");
}

#[test]
fn every_bit_flip_in_a_certificate_is_refused() {
    let (root_key, root_der) = root(SignatureAlgorithm::EcdsaP256Sha256);
    let subject = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let der = issue_for(Profile::SiteIdentitySigning, &root_key, &root_der, &subject);
    for i in 0..der.len() {
        for bit in [0x01, 0x40] {
            let mut m = der.clone();
            m[i] ^= bit;
            let r = crate::cert::check_under_root("site", &m, Profile::SiteIdentitySigning, &root_der, NOW);
            assert!(r.is_err(), "flip {bit:#x} at byte {i} accepted");
        }
    }
}

#[test]
fn webpki_validates_roles_by_extended_key_usage() {
    use crate::cert::validate_end_entity;
    use crate::oid::RoleEku;
    let (root_key, root_der) = root(SignatureAlgorithm::EcdsaP384Sha384);
    let (_, other_root) = root(SignatureAlgorithm::EcdsaP384Sha384);
    let key = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let hq = issue_for(Profile::HqAuthoritySigning, &root_key, &root_der, &key);
    let site = issue_for(Profile::SiteIdentitySigning, &root_key, &root_der, &key);
    let p = Profile::HqAuthoritySigning;
    validate_end_entity("hq", &hq, &[], &root_der, p, RoleEku::HqAuthority, NOW).unwrap();
    // A site identity is not an HQ authority, even with the right key usage.
    assert!(validate_end_entity("x", &site, &[], &root_der, p, RoleEku::HqAuthority, NOW).is_err());
    let r = validate_end_entity(
        "x",
        &site,
        &[],
        &root_der,
        Profile::SiteIdentitySigning,
        RoleEku::HqAuthority,
        NOW,
    );
    assert!(matches!(r, Err(crate::cert::CertError::Chain(..))), "{r:?}");
    assert!(validate_end_entity("x", &hq, &[], &other_root, p, RoleEku::HqAuthority, NOW).is_err());
    let late = NOW + Duration::days(365 * 40);
    assert!(validate_end_entity("x", &hq, &[], &root_der, p, RoleEku::HqAuthority, late).is_err());
}

#[test]
fn firmware_signing_certifies_every_firmware_key_type_with_code_signing_only() {
    let (root_key, root_der) = root(SignatureAlgorithm::EcdsaP384Sha384);
    for alg in [
        SignatureAlgorithm::EcdsaP256Sha256,
        SignatureAlgorithm::Ed25519,
        SignatureAlgorithm::Rsa3072PssSha256,
    ] {
        let subject = TestSigner::new(alg);
        let der = issue_for(Profile::FirmwareSigning, &root_key, &root_der, &subject);
        crate::cert::check_under_root("fw", &der, Profile::FirmwareSigning, &root_der, NOW).unwrap();
        let cert = crate::cert::parse(&der).unwrap();
        // The certificate carries exactly the subject key (an rsaEncryption SPKI for RSA).
        assert_eq!(cert.public_key().raw, subject.spki_der().as_slice());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.code_signing && !eku.client_auth && !eku.any && eku.other.is_empty());
        assert!(cert
            .subject()
            .to_string()
            .contains("CN=firmware signing app-2026"));
        assert!(cert.subject().to_string().contains("OU=HQ"));
        // A code-signing certificate is no HQ authority.
        assert!(Profile::HqAuthoritySigning.check(&cert).is_err());
    }
}

#[test]
fn an_rsa_key_never_signs_a_certificate() {
    let rsa = TestSigner::new(SignatureAlgorithm::Rsa3072PssSha256);
    let r = self_signed_root(
        &rsa,
        "Acme",
        Validity::starting(NOW, Duration::days(1)),
        serial(1),
    );
    assert!(matches!(r, Err(ProfileError::Build(_))), "{r:?}");
}

#[test]
fn firmware_key_names_are_checked() {
    check_firmware_key_name("app-2026.1").unwrap();
    for bad in ["", ".hidden", "App", "a/b", "a b", &"x".repeat(65)] {
        assert!(check_firmware_key_name(bad).is_err(), "{bad:?}");
    }
    let r = Profile::FirmwareSigning.subject("Acme", &Holder::FirmwareKey("../x".into()));
    assert!(matches!(r, Err(ProfileError::BadKeyName(_))));
}

#[test]
fn serials_are_positive_and_never_start_with_zero() {
    assert_eq!(Serial::from_random([0; 16]).as_bytes()[0], 1);
    assert_eq!(Serial::from_random([0xff; 16]).as_bytes()[0], 0x7f);
    assert_eq!(Serial::from_random([0x80; 16]).as_bytes()[0], 1);
}

#[test]
fn site_service_certificates_carry_their_names_and_verify_for_server_auth() {
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    let (root_key, root_der) = root(SignatureAlgorithm::EcdsaP256Sha256);
    let ca_key = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let ca = issue_for(Profile::SiteIssuingCa, &root_key, &root_der, &ca_key);
    let key = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let names = ServiceName::parse_list(&["localhost", "127.0.0.1", "Site.Example"]).unwrap();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[1], ServiceName::parse("::1").unwrap());
    assert_eq!(names[2], ServiceName::Dns("site.example".into()));
    let der = issue_site_service(
        "Acme",
        &SiteId::new("s1").unwrap(),
        &names,
        &crate::cert::subject_key(key.algorithm().rcgen(), key.public_key()),
        Validity::starting(NOW, Profile::SiteService.default_lifetime()),
        serial(4),
        &Issuer {
            cert_der: &ca,
            signer: &ca_key,
        },
    )
    .unwrap();
    Profile::SiteService
        .check(&crate::cert::parse(&der).unwrap())
        .unwrap();
    let root_cert = CertificateDer::from(root_der.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&root_cert).unwrap();
    let leaf = CertificateDer::from(der.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(NOW.unix_timestamp() as u64));
    let inter = [CertificateDer::from(ca.as_slice())];
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &inter,
        time,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .unwrap();
    for n in ["127.0.0.1", "::1", "site.example"] {
        ee.verify_is_valid_for_subject_name(&ServerName::try_from(n).unwrap())
            .unwrap();
    }
    // `localhost` is not a dNSName in it (pkilint: pkix.invalid_domain_name_syntax).
    for n in ["other.example", "localhost"] {
        assert!(ee
            .verify_is_valid_for_subject_name(&ServerName::try_from(n).unwrap())
            .is_err());
    }
    let c = crate::cert::parse(&der).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    assert!(!san
        .value
        .general_names
        .iter()
        .any(|g| matches!(g, x509_parser::extensions::GeneralName::DNSName(d) if !d.contains('.'))));
    assert!(ServiceName::parse("bad name").is_err() && ServiceName::parse("-x").is_err());
    // A certificate carrying a single-label name cannot be made, even by hand.
    let err = issue_site_service(
        "Acme",
        &SiteId::new("s1").unwrap(),
        &[ServiceName::Dns("localhost".into())],
        &crate::cert::subject_key(key.algorithm().rcgen(), key.public_key()),
        Validity::starting(NOW, Profile::SiteService.default_lifetime()),
        serial(5),
        &Issuer {
            cert_der: &ca,
            signer: &ca_key,
        },
    );
    assert!(matches!(err, Err(ProfileError::BadServiceName(_))));
}

#[test]
fn service_names_are_fully_qualified_or_addresses() {
    for ok in [
        "site.example",
        "a.b-c.example",
        "x1.example",
        "10.0.0.1",
        "fe80::1",
        "S.Example",
    ] {
        assert!(ServiceName::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "localhost",
        "stampsite",
        "",
        "a..example",
        "-a.example",
        "a-.example",
        "a.example.",
        "a.123",
        "a_b.example",
        &format!("{}.example", "a".repeat(64)),
    ] {
        assert!(ServiceName::parse(bad).is_err(), "{bad}");
    }
    let e = ServiceName::parse("stampsite").unwrap_err().to_string();
    assert!(e.contains("single-label"), "{e}");
    let l = ServiceName::parse_list(&["LOCALHOST", "127.0.0.1", "::1", "site.example"]).unwrap();
    assert_eq!(
        l,
        vec![
            ServiceName::parse("127.0.0.1").unwrap(),
            ServiceName::parse("::1").unwrap(),
            ServiceName::Dns("site.example".into())
        ]
    );
    assert!(ServiceName::parse_list(&["stampsite"]).is_err());
}

#[test]
fn names_are_checked() {
    assert!(Profile::OemRoot.subject("", &Holder::Hq).is_err());
    assert!(Profile::OemRoot.subject("A\nB", &Holder::Hq).is_err());
    let bad = Holder::Station {
        site: SiteId::new("s").unwrap(),
        name: "Line 3".into(),
    };
    assert!(matches!(
        Profile::Station.subject("Acme", &bad),
        Err(ProfileError::BadStationName(_))
    ));
}
