//! Fuzz targets for every stamp parser of untrusted bytes.
//!
//! One `pub fn <target>(data: &[u8])` per target: `fuzz/fuzz_targets/<target>.rs` hands it
//! libFuzzer's input, and this crate's `replay` test runs it on every file of `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/`. A target never panics on any input: a panic is a finding,
//! either a parser that panicked or a broken invariant the target checks (a value that does not
//! survive its own encoding, a signature stamp made that stamp does not accept).
//!
//! Where a parser has a verify step, the target gets past it two ways: it verifies the input
//! with the [`fixture`]'s fixed keys (the committed seeds, made by `make-seeds`, are signed with
//! them, so the fuzzer starts from inputs that verify), and it signs or seals what it decoded with
//! those keys and verifies that again, so the code behind the signature check sees mutated,
//! structurally valid content.

#![forbid(unsafe_code)]

pub mod fixture;
mod service;

pub use service::{service, service_answer};

use coset::{iana, CoseSign1, Header, HeaderBuilder, ProtectedHeader, TaggedCborSerializable};
use stamp_core::audit::{self, BundleChunk, BundleHeader, Entry};
use stamp_core::ceremony::{SiteCredentials, SitePublicKeys, SiteRequest};
use stamp_core::checkpoint::{self, Checkpoint};
use stamp_core::entitlement::{self, Action, Entitlement, GrantState};
use stamp_core::envelope::{self, Recipient};
use stamp_core::firmware::{esp32, mcuboot, FirmwareKey, Version};
use stamp_core::key::{KeyAgreement, SignatureAlgorithm, Signer};
use stamp_core::{cert, csr, registry};
use stamp_keys::{KeyRef, Pkcs11Uri};

/// A broken invariant: the input that led here is a finding.
#[allow(clippy::panic)]
fn finding(what: &str) -> ! {
    panic!("fuzz finding: {what}")
}

/// A target: what libFuzzer calls with each input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("entitlement", entitlement),
    ("checkpoint", checkpoint),
    ("csr", csr),
    ("site_request", site_request),
    ("site_credentials", site_credentials),
    ("audit_bundle", audit_bundle),
    ("audit_entry", audit_entry),
    ("registry", registry),
    ("mcuboot", mcuboot),
    ("esp32", esp32),
    ("pkcs11_uri", pkcs11_uri),
    ("service", service),
];

/// Largest envelope the targets parse (a site's limit for an entitlement package).
const MAX_ENVELOPE: usize = entitlement::MAX_PAYLOAD + 64 * 1024;
/// Most bundle frames one input is read for.
const MAX_BUNDLE_FRAMES: usize = 64;

/// Content type of entitlement packages (as `stamp hq entitle` writes them).
pub const ENTITLEMENT_CONTENT_TYPE: &str = "application/vnd.stamp.entitlement+cbor";

/// Seals `plaintext` from HQ to the fixture's site, as `stamp hq entitle` does.
pub fn seal_to_site(content_type: &str, plaintext: &[u8]) -> Result<Vec<u8>, envelope::EnvelopeError> {
    let fx = fixture::get();
    let recipient = Recipient {
        alg: fx.site_key_agreement.algorithm(),
        public_key: fx.site_key_agreement.public_key(),
        key_id: b"site-identity-ka",
        recipient_id: fixture::SITE.as_bytes(),
    };
    let chain = [fx.hq_signing_der.clone(), fx.root_der.clone()];
    envelope::seal(
        content_type,
        plaintext,
        &fx.hq_signing,
        &chain,
        &recipient,
        &[],
        &aws_lc_rs::rand::SystemRandom::new(),
    )
}

/// Seals `plaintext` from the fixture's site to HQ, as `stamp site export` seals bundle frames.
pub fn seal_to_hq(content_type: &str, plaintext: &[u8]) -> Result<Vec<u8>, envelope::EnvelopeError> {
    let fx = fixture::get();
    let recipient = Recipient {
        alg: fx.hq_key_agreement.algorithm(),
        public_key: fx.hq_key_agreement.public_key(),
        key_id: b"hq-authority-ka",
        recipient_id: fixture::SITE.as_bytes(),
    };
    let chain = [fx.site_identity_der.clone(), fx.root_der.clone()];
    envelope::seal(
        content_type,
        plaintext,
        &fx.site_identity,
        &chain,
        &recipient,
        &[],
        &aws_lc_rs::rand::SystemRandom::new(),
    )
}

/// Verifies and opens an envelope HQ sealed to the site: `Some(content type, plaintext)`.
fn open_from_hq(data: &[u8]) -> Option<(String, Vec<u8>)> {
    let fx = fixture::get();
    let signed = envelope::parse(data, MAX_ENVELOPE).ok()?;
    let _ = (
        signed.chain().len(),
        signed.key_id(),
        signed.signature_algorithm(),
    );
    let verified = signed
        .verify(SignatureAlgorithm::Ed25519, fx.hq_signing.public_key(), &[])
        .ok()?;
    let content_type = verified.content_type().to_owned();
    let plain = verified
        .open(&fx.site_key_agreement, fixture::SITE.as_bytes())
        .ok()?;
    Some((content_type, plain.to_vec()))
}

/// Sealed envelope (`envelope::parse`, `verify` with the fixture's HQ key, `open` with the
/// site's key agreement), then the entitlement payload inside.
pub fn envelope(data: &[u8]) {
    if let Some((_, plain)) = open_from_hq(data) {
        if let Ok(e) = Entitlement::from_cbor(&plain) {
            let _ = e.validate();
        }
    }
}

/// Entitlement payload (`Entitlement::from_cbor`, `validate`, the sequence and amendment rules);
/// a payload that decodes must survive its own encoding, and sealed with the fixture's keys it
/// must verify, open and decode to the same value.
pub fn entitlement(data: &[u8]) {
    let Ok(e) = Entitlement::from_cbor(data) else {
        return;
    };
    let fx = fixture::get();
    let valid = e.validate().is_ok();
    let _ = entitlement::check_next(&e, &fx.site, e.sequence.saturating_sub(1));
    match &e.action {
        Action::Grant(g) => {
            let state = GrantState::new(g.clone(), e.sequence);
            let _ = state.device_revoked_at(g.serial_ranges.first().map_or(0, |r| r.first));
            let _ = g.redacted();
        }
        Action::Amend(a) => {
            // An amendment of a grant with the same ID (the fixture's seed grant shape).
            let mut g = seed_grant();
            g.entitlement_id.clone_from(&a.entitlement_id);
            let state = GrantState::new(g, e.sequence.saturating_sub(1));
            let _ = entitlement::amend(&state, a, e.sequence);
        }
    }
    let again = e.to_cbor();
    match Entitlement::from_cbor(&again) {
        Ok(back) if back == e => {}
        _ => finding("an entitlement does not survive its own encoding"),
    }
    if valid {
        let Ok(sealed) = seal_to_site(ENTITLEMENT_CONTENT_TYPE, &again) else {
            finding("a valid entitlement could not be sealed")
        };
        match open_from_hq(&sealed) {
            Some((ct, plain)) if ct == ENTITLEMENT_CONTENT_TYPE && plain == again => {}
            _ => finding("a sealed entitlement does not verify and open"),
        }
    }
}

/// The grant the seeds' entitlement and registry use.
pub fn seed_grant() -> entitlement::Grant {
    use entitlement::{DeviceKeyType, DeviceProfile, Grant, Product, RatePeriod, RenewalLimit, SerialRange};
    Grant {
        entitlement_id: format!("{}.1", fixture::SITE),
        product: Product {
            oem_id: "fuzz".to_owned(),
            product_id: "thermo-2".to_owned(),
            name: "Thermostat 2".to_owned(),
        },
        quota: 100,
        rate_limits: [(RatePeriod::Hour, 50)].into_iter().collect(),
        not_before: fixture::NOW.unix_timestamp() - 86_400,
        not_after: fixture::NOW.unix_timestamp() + 86_400 * 30,
        serial_ranges: vec![SerialRange {
            first: 1000,
            last: 1099,
        }],
        device_profile: DeviceProfile {
            validity_days: 365,
            key_types: vec![DeviceKeyType::P256, DeviceKeyType::Ed25519],
            organization: fixture::ORG.to_owned(),
        },
        stations: vec!["line-1".to_owned()],
        device_data: [("endpoint".to_owned(), "mqtts://cloud.example".to_owned())]
            .into_iter()
            .collect(),
        device_keys: Vec::new(),
        firmware: Vec::new(),
        renewal_limit: RenewalLimit {
            count: 3,
            period: RatePeriod::Day,
        },
    }
}

/// Signed note and checkpoint (`parse_note`, `Checkpoint::from_note_body`, `checkpoint::verify`
/// with the fixture's site identity key); a checkpoint body that parses must survive its own
/// encoding, and signed with the fixture's key it must verify to the same checkpoint.
pub fn checkpoint(data: &[u8]) {
    let fx = fixture::get();
    if let Ok(note) = checkpoint::parse_note(data, checkpoint::DEFAULT_MAX_NOTE_LEN) {
        let _ = (note.signatures().len(), Checkpoint::from_note_body(note.text()));
    }
    if let Ok(v) = checkpoint::verify(
        data,
        fixture::CHECKPOINT_KEY,
        SignatureAlgorithm::Ed25519,
        fx.site_identity.public_key(),
    ) {
        let _ = (v.origin(), v.size(), v.root(), v.key_id());
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cp) = Checkpoint::from_note_body(text) else {
        return;
    };
    match cp.to_note_body().map(|b| Checkpoint::from_note_body(&b)) {
        Ok(Ok(back)) if back == cp => {}
        _ => finding("a checkpoint does not survive its own encoding"),
    }
    let Ok(note) = checkpoint::sign(&cp, fixture::CHECKPOINT_KEY, &fx.site_identity) else {
        finding("a checkpoint that parses could not be signed")
    };
    match checkpoint::verify(
        note.as_bytes(),
        fixture::CHECKPOINT_KEY,
        SignatureAlgorithm::Ed25519,
        fx.site_identity.public_key(),
    ) {
        Ok(v) if v.checkpoint() == &cp => {}
        _ => finding("a signed checkpoint does not verify"),
    }
}

/// PKCS#10 CSR (`csr::verify`, the self-signature) and a SubjectPublicKeyInfo (`classify_spki`).
pub fn csr(data: &[u8]) {
    if let Ok(v) = csr::verify(data) {
        let _ = (
            v.key_type(),
            v.spki_der(),
            v.raw_public_key(),
            v.subject_der(),
            v.requests_subject_alt_name(),
        );
        if csr::classify_spki(v.spki_der()).ok() != Some(v.key_type()) {
            finding("a verified CSR's key does not classify as its key type");
        }
    }
    let _ = csr::classify_spki(data);
}

/// Site enrollment request (`SiteRequest::parse`, `verify`: both CSRs and the binding
/// signature); a request that parses must survive its own encoding.
pub fn site_request(data: &[u8]) {
    let Ok(r) = SiteRequest::parse(data) else {
        return;
    };
    let json = r.to_json();
    match SiteRequest::parse(&json) {
        Ok(back) if back.to_json() == json => {}
        _ => finding("a site request does not survive its own encoding"),
    }
    if let Ok(v) = r.verify() {
        let _ = (v.short_fingerprint(), v.key_agreement_raw());
    }
}

/// The raw public key a PEM certificate carries.
fn pem_cert_key(text: &str) -> Option<Vec<u8>> {
    let block = pem::parse(text).ok()?;
    let c = cert::parse(block.contents()).ok()?;
    Some(c.public_key().subject_public_key.data.to_vec())
}

/// Site credentials file (`SiteCredentials::parse`, `verify` at the fixture's time, with the
/// site's keys taken from the file's own certificates so the check reaches past the key match,
/// unpinned and pinned to the fixture's root).
pub fn site_credentials(data: &[u8]) {
    let Ok(c) = SiteCredentials::parse(data) else {
        return;
    };
    let fx = fixture::get();
    let (Some(id), Some(ka), Some(ca)) = (
        pem_cert_key(&c.site_identity_signing),
        pem_cert_key(&c.site_identity_key_agreement),
        pem_cert_key(&c.site_issuing_ca),
    ) else {
        return;
    };
    let keys = SitePublicKeys {
        identity_signing: &id,
        identity_key_agreement: &ka,
        issuing_ca: &ca,
    };
    let pin = stamp_core::fingerprint::sha256(&fx.root_der);
    let _ = c.verify(&c.site_id, &keys, None, fixture::NOW);
    let _ = c.verify(&c.site_id, &keys, Some(&pin), fixture::NOW);
}

/// Decodes a bundle's plaintext part: the header (frame 0) or a chunk and its entries.
fn bundle_part(frame_no: usize, plain: &[u8]) {
    if frame_no == 0 {
        if let Ok(h) = BundleHeader::from_cbor(plain) {
            let _ = checkpoint::parse_note(h.checkpoint.as_bytes(), checkpoint::DEFAULT_MAX_NOTE_LEN);
        }
    } else if let Ok(c) = BundleChunk::from_cbor(plain) {
        for e in &c.entries {
            let _ = Entry::from_cbor(e);
        }
    }
}

/// Audit bundle (`audit::read_frame` over the input, each frame as a sealed envelope verified
/// with the fixture's site identity key and opened with HQ's key agreement, and each frame as a
/// plaintext header or chunk with its entries, so the decoders behind the envelope see mutations
/// directly).
pub fn audit_bundle(data: &[u8]) {
    let fx = fixture::get();
    let mut rest = data;
    for n in 0..MAX_BUNDLE_FRAMES {
        let Ok(Some(frame)) = audit::read_frame(&mut rest, audit::MAX_FRAME) else {
            return;
        };
        bundle_part(n, &frame);
        let Ok(signed) = envelope::parse(&frame, audit::MAX_FRAME) else {
            continue;
        };
        let Ok(verified) = signed.verify(SignatureAlgorithm::Ed25519, fx.site_identity.public_key(), &[])
        else {
            continue;
        };
        if let Ok(plain) = verified.open(&fx.hq_key_agreement, fixture::SITE.as_bytes()) {
            bundle_part(n, &plain);
        }
    }
}

/// Audit log entry (`Entry::from_cbor`); an entry that decodes must survive its own encoding
/// byte for byte (entries are Merkle leaves: the bytes are what is hashed).
pub fn audit_entry(data: &[u8]) {
    let Ok(e) = Entry::from_cbor(data) else {
        return;
    };
    let again = e.to_cbor();
    match Entry::from_cbor(&again) {
        Ok(back) if back == e => {}
        _ => finding("an audit entry does not survive its own encoding"),
    }
}

/// Wraps `payload` in a registry `COSE_Sign1` signed with the fixture's HQ key, as
/// `registry::sign` lays it out.
pub fn sign_registry_payload(payload: &[u8]) -> Option<Vec<u8>> {
    let fx = fixture::get();
    let header = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .content_type(registry::CONTENT_TYPE.to_owned())
        .value(
            iana::HeaderParameter::X5Chain as i64,
            ciborium::Value::Array(vec![
                ciborium::Value::Bytes(fx.hq_signing_der.clone()),
                ciborium::Value::Bytes(fx.root_der.clone()),
            ]),
        )
        .build();
    let mut sign1 = CoseSign1 {
        protected: ProtectedHeader {
            original_data: None,
            header,
        },
        unprotected: Header::default(),
        payload: Some(payload.to_vec()),
        signature: Vec::new(),
    };
    let tbs = sign1.tbs_data(b"");
    sign1.signature = fx.hq_signing.sign_fixed(&tbs).ok()?;
    sign1.to_tagged_vec().ok()
}

fn use_registry(v: &registry::VerifiedRegistry) {
    let fx = fixture::get();
    let _ = (
        v.sequence(),
        v.org(),
        v.sites().len(),
        v.device_count(),
        v.revocation_count(),
    );
    for e in v.entitlements().iter().take(4) {
        for r in e.serial_ranges.iter().take(4) {
            let _ = v.is_registered(r.first);
        }
    }
    let _ = v.check_device(std::slice::from_ref(&fx.site_issuing_der), fixture::NOW);
}

/// Signed registry (`registry::verify` at the fixture's time, unpinned and pinned to the
/// fixture's root), then the same bytes as a registry payload signed with the fixture's HQ key, so
/// the payload checks behind the signature see every mutation.
pub fn registry(data: &[u8]) {
    let fx = fixture::get();
    let pin = stamp_core::fingerprint::sha256(&fx.root_der);
    if let Ok(v) = registry::verify(data, None, 0, fixture::NOW) {
        use_registry(&v);
    }
    let _ = registry::verify(data, Some(&pin), 1, fixture::NOW);
    if data.first().is_some_and(|b| b >> 5 == 5) {
        // Only payloads that start as a CBOR map: others fail before the payload is read.
        let Some(file) = sign_registry_payload(data) else {
            finding("a registry payload could not be signed")
        };
        if let Ok(v) = registry::verify(&file, Some(&pin), 0, fixture::NOW) {
            use_registry(&v);
        }
    }
}

/// MCUboot image (`mcuboot::verify` with the fixture's Ed25519 and P-256 keys, with and without
/// a minimum version); any input, signed with the fixture's key by `mcuboot::sign` with options
/// taken from its first bytes, must verify.
pub fn mcuboot(data: &[u8]) {
    let fx = fixture::get();
    let (Ok(ed), Ok(p256)) = (
        FirmwareKey::from_signer(&fx.hq_signing),
        FirmwareKey::from_signer(&fx.site_issuing),
    ) else {
        finding("the fixture's firmware keys")
    };
    let min = Version {
        major: 1,
        minor: 2,
        revision: 0,
        build: 0,
    };
    let _ = mcuboot::verify(data, &ed, None);
    let _ = mcuboot::verify(data, &ed, Some(min));
    let _ = mcuboot::verify(data, &p256, None);
    let opt = |i: usize| data.get(i).copied().unwrap_or(0);
    let opts = mcuboot::Options {
        version: Version {
            major: opt(0),
            minor: opt(1),
            revision: u16::from(opt(2)),
            build: u32::from(opt(3)),
        },
        header_size: if opt(4) & 1 == 0 { 32 } else { 0x200 },
        pad_header: opt(4) & 2 == 0,
        load_addr: if opt(4) & 4 == 0 { 0 } else { 0x2000_0000 },
        security_counter: (opt(4) & 8 != 0).then(|| u32::from(opt(5))),
    };
    if let Ok(signed) = mcuboot::sign(data, &opts, &fx.hq_signing) {
        match mcuboot::verify(&signed.bytes, &ed, Some(opts.version)) {
            Ok(v) if v.version == opts.version && v.security_counter == opts.security_counter => {}
            _ => finding("an image mcuboot::sign made does not verify"),
        }
    }
}

/// ESP32 Secure Boot V2 image (`esp32::verify` with the fixture's P-256 key, with and without
/// a minimum secure version, and the app descriptor); any input signed with that key by
/// `esp32::sign` must verify.
pub fn esp32(data: &[u8]) {
    let fx = fixture::get();
    let Ok(key) = FirmwareKey::from_signer(&fx.site_issuing) else {
        finding("the fixture's firmware key")
    };
    let _ = esp32::verify(data, &key, None);
    let _ = esp32::verify(data, &key, Some(1));
    let _ = esp32::app_descriptor(data);
    if let Ok(signed) = esp32::sign(data, &fx.site_issuing) {
        if esp32::verify(&signed.bytes, &key, None).is_err() {
            finding("an image esp32::sign made does not verify");
        }
    }
}

/// PKCS#11 URI (`Pkcs11Uri::parse`, `parse_key`, `parse_token`) and key reference
/// (`KeyRef::parse`); a URI that parses must read back the same from its own text.
pub fn pkcs11_uri(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = Pkcs11Uri::parse(s) {
        match Pkcs11Uri::parse(&u.to_string()) {
            Ok(back) if back == u => {}
            _ => finding("a PKCS#11 URI does not read back from its own text"),
        }
        let _ = (
            u.token_only(),
            u.with_object("fuzz"),
            u.matches_token("fuzz", "stamp", "soft", "1"),
            u.token_description(),
        );
    }
    let _ = Pkcs11Uri::parse_key(s);
    let _ = Pkcs11Uri::parse_token(s);
    let _ = KeyRef::parse(s);
}
