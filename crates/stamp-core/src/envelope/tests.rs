//! Tests of sealed envelopes: round trips, every layout and algorithm check, and bounds.

use super::*;
use crate::cose::der_to_fixed;
use crate::profile::tests::TestSigner;
use crate::profile::{self_signed_root, Serial, Validity};
use aws_lc_rs::rand::SystemRandom;

const CT: &str = "application/vnd.stamp.entitlement+cbor";
const MAX: usize = 1 << 20;

/// A one-certificate chain for a test signer.
trait Chain {
    fn chain(&self) -> Vec<Vec<u8>>;
}

impl Chain for TestSigner {
    /// A self-signed certificate for this key, as a one-certificate chain.
    fn chain(&self) -> Vec<Vec<u8>> {
        let validity = Validity::starting(
            time::macros::datetime!(2026-01-01 0:00 UTC),
            time::Duration::days(365),
        );
        vec![self_signed_root(self, "Test OEM", validity, Serial::from_random([7; 16])).unwrap()]
    }
}

/// A key-agreement key on an in-memory aws-lc-rs key.
struct TestKa {
    alg: KeyAgreementAlgorithm,
    key: agreement::PrivateKey,
    public: Vec<u8>,
}

impl TestKa {
    fn new(alg: KeyAgreementAlgorithm) -> Self {
        let key = agreement::PrivateKey::generate(alg.agreement()).unwrap();
        let public = key.compute_public_key().unwrap().as_ref().to_vec();
        TestKa { alg, key, public }
    }

    fn recipient<'a>(&'a self, recipient_id: &'a [u8]) -> Recipient<'a> {
        Recipient {
            alg: self.alg,
            public_key: &self.public,
            key_id: b"kid-1",
            recipient_id,
        }
    }
}

impl std::fmt::Debug for TestKa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TestKa({}, {})",
            KeyAgreement::key_ref(self),
            KeyAgreement::algorithm(self).name()
        )
    }
}

impl KeyAgreement for TestKa {
    fn algorithm(&self) -> KeyAgreementAlgorithm {
        self.alg
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn agree(&self, peer: &[u8]) -> Result<crate::key::SharedSecret, KeyError> {
        let peer = agreement::UnparsedPublicKey::new(self.alg.agreement(), peer);
        agreement::agree(&self.key, peer, KeyError::BadPeerKey(self.alg.name()), |s| {
            Ok(Zeroizing::new(s.to_vec()))
        })
    }
    fn key_ref(&self) -> &str {
        "test-ka"
    }
}

struct Fixture {
    signer: TestSigner,
    chain: Vec<Vec<u8>>,
    ka: TestKa,
    envelope: Vec<u8>,
}

const SITE: &[u8] = b"shenzhen-1";
const PLAIN: &[u8] = b"entitlement: 1000 devices";

fn fixture(sig: SignatureAlgorithm, ka: KeyAgreementAlgorithm) -> Fixture {
    let signer = TestSigner::new(sig);
    let chain = signer.chain();
    let ka = TestKa::new(ka);
    let envelope = seal(
        CT,
        PLAIN,
        &signer,
        &chain,
        &ka.recipient(SITE),
        b"",
        &SystemRandom::new(),
    )
    .unwrap();
    Fixture {
        signer,
        chain,
        ka,
        envelope,
    }
}

/// Parses, verifies and opens with the fixture's own keys.
fn open_all(f: &Fixture, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    parse(bytes, MAX)?
        .verify(f.signer.algorithm(), f.signer.public_key(), b"")?
        .open(&f.ka, SITE)
}

const SIGS: [SignatureAlgorithm; 3] = [
    SignatureAlgorithm::EcdsaP256Sha256,
    SignatureAlgorithm::EcdsaP384Sha384,
    SignatureAlgorithm::Ed25519,
];
const KAS: [KeyAgreementAlgorithm; 2] = [KeyAgreementAlgorithm::EcdhP256, KeyAgreementAlgorithm::EcdhP384];

#[test]
fn round_trips_every_algorithm_pair() {
    for sig in SIGS {
        for ka in KAS {
            let f = fixture(sig, ka);
            let parsed = parse(&f.envelope, MAX).unwrap();
            assert_eq!(parsed.chain(), f.chain.as_slice());
            assert_eq!(parsed.content_type(), CT);
            assert_eq!(parsed.key_id(), b"kid-1");
            assert_eq!(parsed.signature_algorithm(), sig);
            let verified = parsed.verify(sig, f.signer.public_key(), b"").unwrap();
            assert_eq!(verified.content_type(), CT);
            assert_eq!(verified.key_id(), b"kid-1");
            assert_eq!(verified.chain(), f.chain.as_slice());
            assert_eq!(verified.open(&f.ka, SITE).unwrap().as_slice(), PLAIN);
        }
    }
}

#[test]
fn round_trips_chains_and_sizes() {
    let signer = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let other = TestSigner::new(SignatureAlgorithm::EcdsaP384Sha384);
    let ka = TestKa::new(KeyAgreementAlgorithm::EcdhP256);
    let rng = SystemRandom::new();
    let mut chain = signer.chain();
    for _ in 0..3 {
        chain.push(other.chain().remove(0));
    }
    for plain in [&b""[..], &[0x5a; 1000][..], &vec![1u8; 200_000][..]] {
        for n in 1..=MAX_CHAIN_LEN {
            let env = seal(CT, plain, &signer, &chain[..n], &ka.recipient(SITE), b"x", &rng).unwrap();
            let parsed = parse(&env, MAX).unwrap();
            assert_eq!(parsed.chain(), &chain[..n]);
            let out = parsed
                .verify(signer.algorithm(), signer.public_key(), b"x")
                .unwrap()
                .open(&ka, SITE)
                .unwrap();
            assert_eq!(out.as_slice(), plain);
        }
    }
}

#[test]
fn layout_is_the_documented_one() {
    let f = fixture(
        SignatureAlgorithm::EcdsaP256Sha256,
        KeyAgreementAlgorithm::EcdhP256,
    );
    let v: Value = ciborium::de::from_reader(f.envelope.as_slice()).unwrap();
    let Value::Tag(18, sign1) = v else {
        panic!("not tag 18")
    };
    let Value::Array(sign1) = *sign1 else {
        panic!("not an array")
    };
    assert_eq!(sign1.len(), 4);
    let Value::Bytes(protected) = &sign1[0] else {
        panic!()
    };
    let protected: Value = ciborium::de::from_reader(protected.as_slice()).unwrap();
    let expected = Value::Map(vec![
        (Value::from(1), Value::from(-7)),
        (Value::from(3), Value::Text(CT.into())),
        (Value::from(33), Value::Bytes(f.chain[0].clone())),
    ]);
    assert_eq!(protected, expected);
    assert_eq!(sign1[1], Value::Map(vec![]));
    assert!(matches!(&sign1[3], Value::Bytes(s) if s.len() == 64));
    let Value::Bytes(payload) = &sign1[2] else {
        panic!()
    };
    let v: Value = ciborium::de::from_reader(payload.as_slice()).unwrap();
    let Value::Tag(96, enc) = v else {
        panic!("not tag 96")
    };
    let Value::Array(enc) = *enc else { panic!() };
    assert_eq!(enc.len(), 4);
    assert_eq!(enc[0], Value::Bytes(vec![0xa1, 0x01, 0x03]));
    let Value::Map(u) = &enc[1] else { panic!() };
    assert!(
        matches!(u.as_slice(), [(Value::Integer(l), Value::Bytes(iv))] if i128::from(*l) == 5 && iv.len() == 12)
    );
    assert!(matches!(&enc[2], Value::Bytes(c) if c.len() == PLAIN.len() + 16));
    let Value::Array(rs) = &enc[3] else { panic!() };
    let [Value::Array(r)] = rs.as_slice() else {
        panic!()
    };
    assert_eq!(r.len(), 3);
    assert_eq!(r[0], Value::Bytes(vec![0xa1, 0x01, 0x38, 0x1e]));
    let Value::Map(ru) = &r[1] else { panic!() };
    assert_eq!(ru.len(), 2);
    assert_eq!(ru[0], (Value::from(4), Value::Bytes(b"kid-1".to_vec())));
    assert_eq!(ru[1].0, Value::from(-1));
    let Value::Map(k) = &ru[1].1 else { panic!() };
    let labels: Vec<_> = k.iter().map(|(l, _)| l.clone()).collect();
    assert_eq!(
        labels,
        [Value::from(1), Value::from(-1), Value::from(-2), Value::from(-3)]
    );
    assert_eq!(k[0].1, Value::from(2));
    assert_eq!(k[1].1, Value::from(1));
    assert!(matches!(&r[2], Value::Bytes(w) if w.len() == 40));
}

#[test]
fn kdf_context_is_rfc_9053() {
    let protected = protected_with_bytes(
        HeaderBuilder::new()
            .algorithm(iana::Algorithm::ECDH_ES_A256KW)
            .build(),
    )
    .unwrap();
    let ctx = kdf_context(b"site-a", &protected).unwrap();
    // [-5, [null, null, null], [h'736974652d61', null, null], [256, h'a101381e']]
    assert_eq!(
        hex::encode(ctx),
        "8424 83f6f6f6 8346736974652d61f6f6 82190100 44a101381e".replace(' ', "")
    );
}

#[test]
fn der_signatures_become_fixed_length() {
    // r = 1, s = 0x80 (needs a sign byte).
    assert_eq!(
        der_to_fixed(&[0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80], 4),
        Some(vec![0, 0, 0, 1, 0, 0, 0, 0x80])
    );
    // Full-width r and s with sign bytes.
    let mut der = vec![0x30, 0x0c, 0x02, 0x05, 0x00, 0xff, 0xfe, 0xfd, 0xfc];
    der.extend([0x02, 0x03, 0x01, 0x02, 0x03]);
    assert_eq!(
        der_to_fixed(&der, 4),
        Some(vec![0xff, 0xfe, 0xfd, 0xfc, 0, 0x01, 0x02, 0x03])
    );
    for bad in [
        &[][..],
        &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x80][..], // negative s
        &[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01][..], // zero r
        &[0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01][..], // non-minimal r
        &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00][..], // trailing byte
        &[0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01][..], // length too long
        &[0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01][..], // not a SEQUENCE
        &[0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01][..], // non-minimal length
    ] {
        assert_eq!(der_to_fixed(bad, 4), None, "{bad:02x?}");
    }
    // Too wide for the field.
    assert_eq!(
        der_to_fixed(&[0x30, 0x08, 0x02, 0x03, 1, 2, 3, 0x02, 0x01, 0x01], 2),
        None
    );
}

#[test]
fn every_bit_flip_fails_without_panicking() {
    for sig in [SignatureAlgorithm::Ed25519, SignatureAlgorithm::EcdsaP256Sha256] {
        let f = fixture(sig, KeyAgreementAlgorithm::EcdhP256);
        assert_eq!(open_all(&f, &f.envelope).unwrap().as_slice(), PLAIN);
        let mut bytes = f.envelope.clone();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                bytes[i] ^= 1 << bit;
                assert!(
                    open_all(&f, &bytes).is_err(),
                    "flipping bit {bit} of byte {i} went unnoticed"
                );
                bytes[i] ^= 1 << bit;
            }
        }
    }
}

#[test]
fn random_corruption_never_panics_or_opens() {
    let f = fixture(SignatureAlgorithm::Ed25519, KeyAgreementAlgorithm::EcdhP384);
    // xorshift64: deterministic, so a failure can be replayed.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..3000 {
        let mut bytes = f.envelope.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 4 {
                0 => bytes[at] = next() as u8,
                1 => bytes[at] ^= 0x80,
                2 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, next() as u8),
            }
        }
        if bytes != f.envelope {
            assert!(open_all(&f, &bytes).is_err(), "round {round} opened");
        }
    }
}

#[test]
fn truncation_and_trailing_bytes_fail() {
    let f = fixture(SignatureAlgorithm::Ed25519, KeyAgreementAlgorithm::EcdhP256);
    for n in 0..f.envelope.len() {
        assert!(
            parse(&f.envelope[..n], MAX).is_err(),
            "prefix of {n} bytes parsed"
        );
    }
    let mut longer = f.envelope.clone();
    longer.push(0);
    assert!(matches!(parse(&longer, MAX), Err(EnvelopeError::TrailingBytes)));
    longer.extend_from_slice(&f.envelope);
    assert!(matches!(parse(&longer, MAX), Err(EnvelopeError::TrailingBytes)));
    assert!(matches!(
        parse(&f.envelope, f.envelope.len() - 1),
        Err(EnvelopeError::TooLarge { .. })
    ));
    assert!(parse(&f.envelope, f.envelope.len()).is_ok());
}

#[test]
fn huge_declared_lengths_fail_cleanly() {
    // Tag 18, array of 4, then a byte string claiming 2^63 bytes.
    let bytes = [
        0xd2, 0x84, 0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
    ];
    assert!(matches!(parse(&bytes, MAX), Err(EnvelopeError::Malformed(_))));
    // An array claiming 2^32 elements.
    let bytes = [0xd2, 0x9a, 0xff, 0xff, 0xff, 0xff, 0x00];
    assert!(matches!(parse(&bytes, MAX), Err(EnvelopeError::Malformed(_))));
    // Deep nesting.
    let mut deep = vec![0xd2];
    deep.extend(std::iter::repeat_n(0x81, 10_000));
    deep.push(0x00);
    assert!(matches!(parse(&deep, MAX), Err(EnvelopeError::Malformed(_))));
}

#[test]
fn wrong_recipient_key_fails() {
    let f = fixture(
        SignatureAlgorithm::EcdsaP256Sha256,
        KeyAgreementAlgorithm::EcdhP256,
    );
    for other in [
        TestKa::new(KeyAgreementAlgorithm::EcdhP256),
        TestKa::new(KeyAgreementAlgorithm::EcdhP384),
    ] {
        let v = parse(&f.envelope, MAX)
            .unwrap()
            .verify(f.signer.algorithm(), f.signer.public_key(), b"")
            .unwrap();
        assert!(matches!(
            v.open(&other, SITE),
            Err(EnvelopeError::NotAddressedToUs)
        ));
    }
}

#[test]
fn re_addressing_fails() {
    let f = fixture(
        SignatureAlgorithm::EcdsaP256Sha256,
        KeyAgreementAlgorithm::EcdhP256,
    );
    for other_id in [&b"shenzhen-2"[..], b"", b"shenzhen-1\0"] {
        let v = parse(&f.envelope, MAX)
            .unwrap()
            .verify(f.signer.algorithm(), f.signer.public_key(), b"")
            .unwrap();
        assert!(matches!(
            v.open(&f.ka, other_id),
            Err(EnvelopeError::NotAddressedToUs)
        ));
    }
}

#[test]
fn content_aad_binds_the_recipient_id_too() {
    // The key derivation names SITE but the content was encrypted with another external_aad:
    // the content key unwraps, and the content must still refuse to decrypt.
    let signer = TestSigner::new(SignatureAlgorithm::Ed25519);
    let ka = TestKa::new(KeyAgreementAlgorithm::EcdhP256);
    let rng = SystemRandom::new();
    let env = seal_inner(
        CT,
        PLAIN,
        &signer,
        &signer.chain(),
        &ka.recipient(SITE),
        b"other",
        b"",
        &rng,
    )
    .unwrap();
    let v = parse(&env, MAX)
        .unwrap()
        .verify(signer.algorithm(), signer.public_key(), b"")
        .unwrap();
    assert!(matches!(v.open(&ka, SITE), Err(EnvelopeError::DecryptFailed)));
}

#[test]
fn external_aad_is_checked() {
    let signer = TestSigner::new(SignatureAlgorithm::EcdsaP384Sha384);
    let ka = TestKa::new(KeyAgreementAlgorithm::EcdhP384);
    let rng = SystemRandom::new();
    let env = seal(
        CT,
        PLAIN,
        &signer,
        &signer.chain(),
        &ka.recipient(SITE),
        b"ctx",
        &rng,
    )
    .unwrap();
    for wrong in [&b""[..], b"ctx2", b"CTX"] {
        let r = parse(&env, MAX)
            .unwrap()
            .verify(signer.algorithm(), signer.public_key(), wrong);
        assert!(matches!(r, Err(EnvelopeError::BadSignature)));
    }
    let v = parse(&env, MAX)
        .unwrap()
        .verify(signer.algorithm(), signer.public_key(), b"ctx")
        .unwrap();
    assert_eq!(v.open(&ka, SITE).unwrap().as_slice(), PLAIN);
}

#[test]
fn wrong_signer_key_fails() {
    let f = fixture(
        SignatureAlgorithm::EcdsaP256Sha256,
        KeyAgreementAlgorithm::EcdhP256,
    );
    let other = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let r = parse(&f.envelope, MAX)
        .unwrap()
        .verify(other.algorithm(), other.public_key(), b"");
    assert!(matches!(r, Err(EnvelopeError::SignerNotChainLeaf)));
    let r = parse(&f.envelope, MAX)
        .unwrap()
        .verify(SignatureAlgorithm::Ed25519, f.signer.public_key(), b"");
    assert!(matches!(r, Err(EnvelopeError::SignerAlgorithmMismatch { .. })));
    // A chain whose leaf is another key than the one that signed.
    let mut sign1 = coset_sign1(&f.envelope);
    let bad_chain = Value::Bytes(other.chain().remove(0));
    sign1.protected = ProtectedHeader {
        original_data: None,
        header: HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .content_type(CT.into())
            .value(LABEL_X5CHAIN, bad_chain)
            .build(),
    };
    let bytes = sign1.to_tagged_vec().unwrap();
    let r = parse(&bytes, MAX)
        .unwrap()
        .verify(other.algorithm(), other.public_key(), b"");
    assert!(matches!(r, Err(EnvelopeError::BadSignature)));
}

fn coset_sign1(bytes: &[u8]) -> CoseSign1 {
    coset::CoseSign1::from_tagged_slice(bytes).unwrap()
}

/// Re-signs an envelope after changing its structure, so that only the structural checks (not
/// the signature) can refuse it.
fn mutate(
    f: &Fixture,
    sign1_edit: impl FnOnce(&mut CoseSign1),
    encrypt_edit: impl FnOnce(&mut CoseEncrypt),
) -> Vec<u8> {
    let mut sign1 = coset_sign1(&f.envelope);
    let mut enc = CoseEncrypt::from_tagged_slice(sign1.payload.as_deref().unwrap()).unwrap();
    encrypt_edit(&mut enc);
    enc.protected.original_data = None;
    for r in &mut enc.recipients {
        r.protected.original_data = None;
    }
    sign1.payload = Some(enc.to_tagged_vec().unwrap());
    sign1_edit(&mut sign1);
    sign1.protected.original_data = None;
    let tbs = sign1.tbs_data(b"");
    sign1.signature = f.signer.sign_fixed(&tbs).unwrap();
    sign1.to_tagged_vec().unwrap()
}

fn set_alg(p: &mut ProtectedHeader, alg: iana::Algorithm) {
    p.header.alg = Some(coset::Algorithm::Assigned(alg));
    p.original_data = None;
}

#[test]
fn the_mutation_helper_alone_is_accepted() {
    let f = fixture(
        SignatureAlgorithm::EcdsaP256Sha256,
        KeyAgreementAlgorithm::EcdhP256,
    );
    let same = mutate(&f, |_| {}, |_| {});
    assert_eq!(open_all(&f, &same).unwrap().as_slice(), PLAIN);
}

#[test]
fn changed_algorithms_are_refused() {
    let f = fixture(
        SignatureAlgorithm::EcdsaP256Sha256,
        KeyAgreementAlgorithm::EcdhP256,
    );
    let unsupported = |bytes: &[u8], what: &str| {
        let r = parse(bytes, MAX);
        assert!(
            matches!(&r, Err(EnvelopeError::UnsupportedAlgorithm(w)) if *w == what),
            "{what}: {r:?}"
        );
    };
    // Signature algorithm: another ECDSA identifier, and one outside the registry.
    unsupported(
        &mutate(&f, |s| set_alg(&mut s.protected, iana::Algorithm::ESP256), |_| {}),
        "signature",
    );
    unsupported(
        &mutate(&f, |s| set_alg(&mut s.protected, iana::Algorithm::PS256), |_| {}),
        "signature",
    );
    // EdDSA with an ECDSA signature of the same length parses, but does not verify as P-256.
    let eddsa = mutate(&f, |s| set_alg(&mut s.protected, iana::Algorithm::EdDSA), |_| {});
    let r = parse(&eddsa, MAX)
        .unwrap()
        .verify(f.signer.algorithm(), f.signer.public_key(), b"");
    assert!(matches!(r, Err(EnvelopeError::SignerAlgorithmMismatch { .. })));
    // ES384 with a 64-byte signature.
    let es384 = mutate(&f, |s| set_alg(&mut s.protected, iana::Algorithm::ES384), |_| {});
    assert!(matches!(parse(&es384, MAX), Err(EnvelopeError::Malformed(_))));
    // Content encryption.
    unsupported(
        &mutate(
            &f,
            |_| {},
            |e| set_alg(&mut e.protected, iana::Algorithm::A128GCM),
        ),
        "content encryption",
    );
    // Key agreement.
    unsupported(
        &mutate(
            &f,
            |_| {},
            |e| set_alg(&mut e.recipients[0].protected, iana::Algorithm::ECDH_ES_A128KW),
        ),
        "key agreement",
    );
    unsupported(
        &mutate(
            &f,
            |_| {},
            |e| set_alg(&mut e.recipients[0].protected, iana::Algorithm::ECDH_ES_HKDF_256),
        ),
        "key agreement",
    );
}

#[test]
fn algorithms_outside_the_protected_header_are_refused() {
    let f = fixture(
        SignatureAlgorithm::EcdsaP256Sha256,
        KeyAgreementAlgorithm::EcdhP256,
    );
    let malformed = |bytes: Vec<u8>| {
        let r = parse(&bytes, MAX);
        assert!(matches!(r, Err(EnvelopeError::Malformed(_))), "{r:?}");
    };
    // Unprotected alg on the COSE_Sign1 (also when repeated from the protected header).
    malformed(mutate(
        &f,
        |s| s.unprotected.alg = Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)),
        |_| {},
    ));
    // Alg moved from protected to unprotected.
    malformed(mutate(
        &f,
        |s| {
            s.protected.header.alg = None;
            s.protected.original_data = None;
            s.unprotected.alg = Some(coset::Algorithm::Assigned(iana::Algorithm::ES256));
        },
        |_| {},
    ));
    malformed(mutate(
        &f,
        |_| {},
        |e| e.unprotected.alg = Some(coset::Algorithm::Assigned(iana::Algorithm::A256GCM)),
    ));
    malformed(mutate(
        &f,
        |_| {},
        |e| {
            e.recipients[0].protected = ProtectedHeader::default();
            e.recipients[0].unprotected.alg =
                Some(coset::Algorithm::Assigned(iana::Algorithm::ECDH_ES_A256KW));
        },
    ));
}

#[test]
fn other_structures_are_refused() {
    let f = fixture(
        SignatureAlgorithm::EcdsaP256Sha256,
        KeyAgreementAlgorithm::EcdhP256,
    );
    let malformed = |bytes: &[u8]| {
        let r = parse(bytes, MAX);
        assert!(matches!(r, Err(EnvelopeError::Malformed(_))), "{r:?}");
    };
    let sign1 = coset_sign1(&f.envelope);
    let payload = sign1.payload.clone().unwrap();
    // Encrypt-only (no signature layer).
    malformed(&payload);
    // Untagged COSE_Sign1.
    malformed(&sign1.clone().to_vec().unwrap());
    // COSE_Sign1 under another tag (COSE_Encrypt0, COSE_Sign, self-described CBOR).
    for tag in [16u64, 98, 55799] {
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(
            &Value::Tag(tag, Box::new(sign1.clone().to_cbor_value().unwrap())),
            &mut bytes,
        )
        .unwrap();
        malformed(&bytes);
    }
    // Signature missing, empty, detached payload.
    let mut bytes = Vec::new();
    let Value::Array(mut a) = sign1.clone().to_cbor_value().unwrap() else {
        panic!()
    };
    a.pop();
    ciborium::ser::into_writer(&Value::Tag(18, Box::new(Value::Array(a))), &mut bytes).unwrap();
    malformed(&bytes);
    let mut s = sign1.clone();
    s.signature = Vec::new();
    malformed(&s.to_tagged_vec().unwrap());
    let mut s = sign1.clone();
    s.payload = None;
    malformed(&s.to_tagged_vec().unwrap());
    // Payload untagged or under another tag: COSE_Encrypt0 (16).
    let enc = CoseEncrypt::from_tagged_slice(&payload).unwrap();
    for payload in [enc.clone().to_vec().unwrap(), {
        let mut b = Vec::new();
        ciborium::ser::into_writer(
            &Value::Tag(16, Box::new(enc.clone().to_cbor_value().unwrap())),
            &mut b,
        )
        .unwrap();
        b
    }] {
        malformed(&mutate(&f, |s| s.payload = Some(payload), |_| {}));
    }
    // Extra bytes inside the payload, after the COSE_Encrypt.
    let mut longer = payload.clone();
    longer.push(0);
    malformed(&mutate(&f, |s| s.payload = Some(longer), |_| {}));
    // Structure changes inside, each re-signed.
    malformed(&mutate(&f, |s| s.protected.header.rest.clear(), |_| {})); // no x5chain
    malformed(&mutate(&f, |s| s.protected.header.content_type = None, |_| {}));
    malformed(&mutate(
        &f,
        |s| {
            s.protected
                .header
                .crit
                .push(RegisteredLabelWithPrivate::Assigned(iana::HeaderParameter::Alg))
        },
        |_| {},
    ));
    malformed(&mutate(
        &f,
        |s| s.protected.header.rest.push((Label::Int(99), Value::Null)),
        |_| {},
    ));
    malformed(&mutate(&f, |s| s.unprotected.key_id = b"k".to_vec(), |_| {}));
    malformed(&mutate(&f, |_| {}, |e| e.unprotected.iv = vec![0; 16]));
    malformed(&mutate(&f, |_| {}, |e| e.ciphertext = None));
    malformed(&mutate(&f, |_| {}, |e| e.ciphertext = Some(vec![0; 15])));
    malformed(&mutate(
        &f,
        |_| {},
        |e| e.recipients.push(e.recipients[0].clone()),
    ));
    malformed(&mutate(
        &f,
        |_| {},
        |e| e.recipients[0].unprotected.key_id.clear(),
    ));
    malformed(&mutate(
        &f,
        |_| {},
        |e| e.recipients[0].unprotected.key_id = vec![1; 65],
    ));
    malformed(&mutate(
        &f,
        |_| {},
        |e| e.recipients[0].ciphertext = Some(vec![0; 48]),
    ));
    malformed(&mutate(&f, |_| {}, |e| e.recipients[0].unprotected.rest.clear()));
    malformed(&mutate(
        &f,
        |_| {},
        |e| {
            let r = e.recipients[0].clone();
            e.recipients[0].recipients.push(r);
        },
    ));
    malformed(&mutate(
        &f,
        |_| {},
        |e| {
            e.recipients[0]
                .unprotected
                .rest
                .push((Label::Int(-24), Value::Bytes(SITE.to_vec())))
        },
    ));
}

#[test]
fn bad_ephemeral_keys_are_refused() {
    let f = fixture(SignatureAlgorithm::Ed25519, KeyAgreementAlgorithm::EcdhP256);
    let with_key = |edit: &dyn Fn(&mut CoseKey)| {
        mutate(
            &f,
            |_| {},
            |e| {
                let (_, v) = &mut e.recipients[0].unprotected.rest[0];
                let mut key = CoseKey::from_cbor_value(v.clone()).unwrap();
                edit(&mut key);
                *v = key.to_cbor_value().unwrap();
            },
        )
    };
    let refused = |bytes: Vec<u8>| {
        let r = parse(&bytes, MAX);
        assert!(
            matches!(
                r,
                Err(EnvelopeError::Malformed(_) | EnvelopeError::UnsupportedAlgorithm(_))
            ),
            "{r:?}"
        );
    };
    // Off the curve.
    refused(with_key(&|k| {
        let x = k.params.iter_mut().find(|(l, _)| *l == Label::Int(-2)).unwrap();
        if let Value::Bytes(b) = &mut x.1 {
            b[31] ^= 1;
        }
    }));
    // Compressed y, wrong curve, extra parameter, key with an alg, OKP key type.
    refused(with_key(&|k| {
        let y = k.params.iter_mut().find(|(l, _)| *l == Label::Int(-3)).unwrap();
        y.1 = Value::Bool(true);
    }));
    refused(with_key(&|k| {
        let crv = k.params.iter_mut().find(|(l, _)| *l == Label::Int(-1)).unwrap();
        crv.1 = Value::from(2);
    }));
    refused(with_key(&|k| {
        k.params.push((Label::Int(-4), Value::Bytes(vec![1; 32])))
    }));
    refused(with_key(&|k| {
        k.alg = Some(coset::Algorithm::Assigned(iana::Algorithm::ECDH_ES_A256KW))
    }));
    refused(with_key(&|k| k.kty = KeyType::Assigned(iana::KeyType::OKP)));
}

#[test]
fn sealing_refuses_bad_input() {
    let signer = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let chain = signer.chain();
    let ka = TestKa::new(KeyAgreementAlgorithm::EcdhP256);
    let rng = SystemRandom::new();
    let r = ka.recipient(SITE);
    let invalid = |res: Result<Vec<u8>, EnvelopeError>| {
        assert!(matches!(res, Err(EnvelopeError::InvalidInput(_))), "{res:?}");
    };
    for ct in [
        "",
        "text",
        "a/b/c",
        " a/b",
        "a/b\n",
        "tÿpe/x",
        &format!("a/{}", "b".repeat(200)),
    ] {
        invalid(seal(ct, PLAIN, &signer, &chain, &r, b"", &rng));
    }
    invalid(seal(CT, PLAIN, &signer, &[], &r, b"", &rng));
    invalid(seal(
        CT,
        PLAIN,
        &signer,
        &vec![chain[0].clone(); 5],
        &r,
        b"",
        &rng,
    ));
    invalid(seal(CT, PLAIN, &signer, &[vec![]], &r, b"", &rng));
    invalid(seal(
        CT,
        PLAIN,
        &signer,
        &[vec![0x30; MAX_CERT_DER + 1]],
        &r,
        b"",
        &rng,
    ));
    invalid(seal(
        CT,
        PLAIN,
        &signer,
        &TestSigner::new(signer.algorithm()).chain(),
        &r,
        b"",
        &rng,
    ));
    invalid(seal(
        CT,
        PLAIN,
        &signer,
        &chain,
        &Recipient { key_id: b"", ..r },
        b"",
        &rng,
    ));
    invalid(seal(
        CT,
        PLAIN,
        &signer,
        &chain,
        &Recipient {
            key_id: &[1; 65],
            ..r
        },
        b"",
        &rng,
    ));
    invalid(seal(
        CT,
        PLAIN,
        &signer,
        &chain,
        &Recipient {
            recipient_id: b"",
            ..r
        },
        b"",
        &rng,
    ));
    invalid(seal(
        CT,
        PLAIN,
        &signer,
        &chain,
        &Recipient {
            recipient_id: &[1; 257],
            ..r
        },
        b"",
        &rng,
    ));
    let mut off_curve = ka.public.clone();
    off_curve[40] ^= 1;
    invalid(seal(
        CT,
        PLAIN,
        &signer,
        &chain,
        &Recipient {
            public_key: &off_curve,
            ..r
        },
        b"",
        &rng,
    ));
    let p384 = TestKa::new(KeyAgreementAlgorithm::EcdhP384);
    invalid(seal(
        CT,
        PLAIN,
        &signer,
        &chain,
        &Recipient {
            public_key: &p384.public,
            ..r
        },
        b"",
        &rng,
    ));
}

/// A signer whose backend signs with another key than it reports.
struct LyingSigner(TestSigner, TestSigner);

impl std::fmt::Debug for LyingSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LyingSigner({}, {})",
            Signer::key_ref(self),
            Signer::algorithm(self).name()
        )
    }
}

impl Signer for LyingSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
    fn public_key(&self) -> &[u8] {
        self.0.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.1.sign(message)
    }
    fn key_ref(&self) -> &str {
        "lying"
    }
}

#[test]
fn sealing_checks_the_signers_signature() {
    let honest = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    let chain = honest.chain();
    let lying = LyingSigner(honest, TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256));
    let ka = TestKa::new(KeyAgreementAlgorithm::EcdhP256);
    let r = seal(
        CT,
        PLAIN,
        &lying,
        &chain,
        &ka.recipient(SITE),
        b"",
        &SystemRandom::new(),
    );
    assert!(matches!(r, Err(EnvelopeError::Crypto(_))), "{r:?}");
}

#[test]
fn each_seal_is_fresh() {
    let signer = TestSigner::new(SignatureAlgorithm::Ed25519);
    let chain = signer.chain();
    let ka = TestKa::new(KeyAgreementAlgorithm::EcdhP256);
    let rng = SystemRandom::new();
    let a = seal(CT, PLAIN, &signer, &chain, &ka.recipient(SITE), b"", &rng).unwrap();
    let b = seal(CT, PLAIN, &signer, &chain, &ka.recipient(SITE), b"", &rng).unwrap();
    assert_ne!(a, b);
    assert_eq!(a.len(), b.len());
}
