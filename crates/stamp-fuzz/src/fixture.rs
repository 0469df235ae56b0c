//! The fixed keys and certificates the targets verify with and the seeds are made with.
//!
//! Every key is fixed (Ed25519 seeds, fixed ECDSA and ECDH scalars) and every certificate is
//! signed by the Ed25519 root with fixed serials at [`NOW`], so the fixture is the same in every
//! process: seeds made by `make-seeds` verify in the targets, and a run is deterministic.

use std::sync::OnceLock;

use stamp_core::cert;
use stamp_core::key::{KeyAgreement, KeyAgreementAlgorithm, Signer};
use stamp_core::profile::{self, Holder, Issuer, Profile, Serial, Validity};
use stamp_core::site_id::SiteId;
use stamp_testkit::{MemKeyAgreement, MemSigner};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// The time every target checks at (certificates are valid from a day before).
pub const NOW: OffsetDateTime = datetime!(2026-12-01 00:00 UTC);
/// The organization of the fixture's certificates.
pub const ORG: &str = "Fuzz Devices";
/// The fixture's site.
pub const SITE: &str = "plant-7";
/// The key name (and origin) of the site's checkpoints.
pub const CHECKPOINT_KEY: &str = "fuzz.example/plant-7";

/// A fixed P-256 private key (RFC 5915 DER), made once with `openssl genpkey`; a test key only.
const P256_SIGNING_DER: &str = "30770201010420a2c1f92a25901f1433cb12c24eb0ad286b0c33fa19045d2fbb627fa30b2df369a00a06082a8648ce3d030107a14403420004ab031cb7e69ab58033fb80644edfab544019162feb731e1ce8394aa241afe51610823a02c996511863c5aaaa65a22919d8594532b4452b5027782806a1769909";

/// Every fixed key and certificate.
pub struct Fixture {
    /// The site the site's certificates name.
    pub site: SiteId,
    /// OEM root key (Ed25519).
    pub root: MemSigner,
    /// HQ authority signing key (Ed25519): entitlements, registries.
    pub hq_signing: MemSigner,
    /// HQ authority key agreement (P-256): audit bundles are sealed to it.
    pub hq_key_agreement: MemKeyAgreement,
    /// Site identity signing key (Ed25519): checkpoints, audit bundles, the request's binding.
    pub site_identity: MemSigner,
    /// Site identity key agreement (P-256): entitlements are sealed to it.
    pub site_key_agreement: MemKeyAgreement,
    /// Site issuing CA key (P-256); also the ESP32 and second MCUboot firmware key.
    pub site_issuing: MemSigner,
    /// OEM root certificate (DER).
    pub root_der: Vec<u8>,
    /// HQ authority signing certificate (DER).
    pub hq_signing_der: Vec<u8>,
    /// HQ authority key-agreement certificate (DER).
    pub hq_key_agreement_der: Vec<u8>,
    /// Site identity signing certificate (DER).
    pub site_identity_der: Vec<u8>,
    /// Site identity key-agreement certificate (DER).
    pub site_key_agreement_der: Vec<u8>,
    /// Site issuing CA certificate (DER).
    pub site_issuing_der: Vec<u8>,
}

fn p256_scalar(last: u8) -> [u8; 32] {
    let mut s = [0x11u8; 32];
    s[31] = last;
    s
}

fn hex_der(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn serial(n: u8) -> Serial {
    let mut b = [0u8; 16];
    b[0] = 0x10;
    b[15] = n;
    Serial::from_random(b)
}

fn validity(profile: Profile) -> Validity {
    Validity::starting(NOW - Duration::days(1), profile.default_lifetime())
}

/// The fixture, built once per process.
pub fn get() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

// The fixture is made from constants: a failure here is a bug of this crate, not a finding.
#[allow(clippy::expect_used)]
fn build() -> Fixture {
    let site = SiteId::new(SITE).expect("site ID");
    let root = MemSigner::ed25519_from_seed(&[1; 32]);
    let hq_signing = MemSigner::ed25519_from_seed(&[2; 32]);
    let site_identity = MemSigner::ed25519_from_seed(&[3; 32]);
    let site_issuing = MemSigner::ecdsa_from_der(
        stamp_core::key::SignatureAlgorithm::EcdsaP256Sha256,
        &hex_der(P256_SIGNING_DER),
    );
    let hq_key_agreement = MemKeyAgreement::from_scalar(KeyAgreementAlgorithm::EcdhP256, &p256_scalar(4));
    let site_key_agreement = MemKeyAgreement::from_scalar(KeyAgreementAlgorithm::EcdhP256, &p256_scalar(5));
    let root_der =
        profile::self_signed_root(&root, ORG, validity(Profile::OemRoot), serial(1)).expect("root");
    let issuer = Issuer {
        cert_der: &root_der,
        signer: &root,
    };
    let sign_key = |s: &MemSigner| cert::subject_key(s.algorithm().rcgen(), s.public_key());
    let ka_key = |k: &MemKeyAgreement| cert::subject_key(k.algorithm().rcgen_public_key(), k.public_key());
    let holder_site = Holder::Site(site.clone());
    let issue = |p: Profile, holder: &Holder, key, n| {
        profile::issue(p, ORG, holder, &key, validity(p), serial(n), &issuer).expect("certificate")
    };
    let hq_signing_der = issue(Profile::HqAuthoritySigning, &Holder::Hq, sign_key(&hq_signing), 2);
    let hq_key_agreement_der = issue(
        Profile::HqAuthorityKeyAgreement,
        &Holder::Hq,
        ka_key(&hq_key_agreement),
        3,
    );
    let site_identity_der = issue(
        Profile::SiteIdentitySigning,
        &holder_site,
        sign_key(&site_identity),
        4,
    );
    let site_key_agreement_der = issue(
        Profile::SiteIdentityKeyAgreement,
        &holder_site,
        ka_key(&site_key_agreement),
        5,
    );
    let site_issuing_der = issue(Profile::SiteIssuingCa, &holder_site, sign_key(&site_issuing), 6);
    Fixture {
        site,
        root,
        hq_signing,
        hq_key_agreement,
        site_identity,
        site_key_agreement,
        site_issuing,
        root_der,
        hq_signing_der,
        hq_key_agreement_der,
        site_identity_der,
        site_key_agreement_der,
        site_issuing_der,
    }
}
