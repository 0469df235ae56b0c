//! The PKCS#11 backend against a real SoftHSM2 token made by the test.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod softhsm;

use std::sync::Arc;

use aws_lc_rs::agreement;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use softhsm::*;
use stamp_core::key::{verify_signature, KeyAgreementAlgorithm, SignatureAlgorithm, Signer};
use stamp_keys::pkcs11::Pkcs11Error;
use stamp_keys::{KeyRef, KeyStore, KeyStoreError};

const TOKENS: &[&str] = &["keys", "wrong-pin", "guard"];

fn hsm() -> &'static SoftHsm {
    softhsm_with(TOKENS, None)
}

/// One test at a time: `raw_session` opens its own cryptoki context, and dropping it finalizes
/// the module for the whole process, which ends every session of a test running beside it
/// (SoftHSM2 then answers CKR_GENERAL_ERROR).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn private_key(session: &cryptoki::session::Session, label: &str) -> cryptoki::object::ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1, "one private key labelled {label}");
    found[0]
}

fn bool_attr(
    session: &cryptoki::session::Session,
    h: cryptoki::object::ObjectHandle,
    t: AttributeType,
) -> bool {
    let attrs = session.get_attributes(h, &[t]).unwrap();
    match attrs.as_slice() {
        [Attribute::Sensitive(b)
        | Attribute::AlwaysSensitive(b)
        | Attribute::NeverExtractable(b)
        | Attribute::Extractable(b)
        | Attribute::Local(b)
        | Attribute::Token(b)
        | Attribute::Private(b)
        | Attribute::Sign(b)
        | Attribute::Derive(b)
        | Attribute::Decrypt(b)
        | Attribute::Unwrap(b)] => *b,
        other => panic!("{t:?}: {other:?}"),
    }
}

#[test]
fn keys_are_made_in_the_token_and_their_private_values_cannot_be_read() {
    let _serial = serial();
    let hsm = hsm();
    let store = store(hsm, "keys", USER_PIN);
    let (p256, _) = store
        .generate_signer("attr-p256", SignatureAlgorithm::EcdsaP256Sha256)
        .unwrap();
    assert_eq!(p256.to_string(), "pkcs11:token=keys;object=attr-p256");
    store
        .generate_signer("attr-p384", SignatureAlgorithm::EcdsaP384Sha384)
        .unwrap();
    store
        .generate_signer("attr-ed25519", SignatureAlgorithm::Ed25519)
        .unwrap();
    store
        .generate_key_agreement("attr-ecdh", KeyAgreementAlgorithm::EcdhP256)
        .unwrap();

    let s = raw_session("keys");
    for (label, signs) in [
        ("attr-p256", true),
        ("attr-p384", true),
        ("attr-ed25519", true),
        ("attr-ecdh", false),
    ] {
        let h = private_key(&s, label);
        for (t, want) in [
            (AttributeType::Token, true),
            (AttributeType::Private, true),
            (AttributeType::Sensitive, true),
            (AttributeType::AlwaysSensitive, true),
            (AttributeType::NeverExtractable, true),
            (AttributeType::Local, true),
            (AttributeType::Extractable, false),
            (AttributeType::Sign, signs),
            (AttributeType::Derive, !signs),
            (AttributeType::Decrypt, false),
            (AttributeType::Unwrap, false),
        ] {
            assert_eq!(bool_attr(&s, h, t), want, "{label}: {t:?}");
        }
        // Reading the private value fails: the token reports it sensitive and returns nothing.
        assert!(
            matches!(
                s.get_attribute_info(h, &[AttributeType::Value])
                    .unwrap()
                    .as_slice(),
                [AttributeInfo::Sensitive]
            ),
            "{label}: CKA_VALUE"
        );
        assert!(s.get_attributes(h, &[AttributeType::Value]).unwrap().is_empty());
    }
}

#[test]
fn token_signatures_verify_with_aws_lc_and_openssl() {
    let _serial = serial();
    let hsm = hsm();
    let store = store(hsm, "keys", USER_PIN);
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg");
    std::fs::write(&msg, b"a certificate to be signed, or any message").unwrap();
    for (name, alg) in [
        ("sig-p256", SignatureAlgorithm::EcdsaP256Sha256),
        ("sig-p384", SignatureAlgorithm::EcdsaP384Sha384),
        ("sig-ed25519", SignatureAlgorithm::Ed25519),
    ] {
        let (r, made) = store.generate_signer(name, alg).unwrap();
        // Opened again by its reference, as a role does.
        let reopened = store
            .open_signer(&KeyRef::parse(&r.to_string()).unwrap())
            .unwrap();
        assert_eq!(reopened.algorithm(), alg);
        assert_eq!(reopened.public_key(), made.public_key());
        for signer in [made.as_ref(), reopened.as_ref()] {
            let message = std::fs::read(&msg).unwrap();
            let sig = signer.sign(&message).unwrap();
            assert!(
                verify_signature(alg, signer.public_key(), &message, &sig),
                "{name}: aws-lc-rs"
            );
            assert!(!verify_signature(alg, signer.public_key(), b"other", &sig));

            let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", signer.spki_der()));
            let pubkey = dir.path().join(format!("{name}.pem"));
            let sigfile = dir.path().join(format!("{name}.sig"));
            std::fs::write(&pubkey, pem).unwrap();
            std::fs::write(&sigfile, &sig).unwrap();
            let (p, sf, m) = (
                pubkey.to_str().unwrap(),
                sigfile.to_str().unwrap(),
                msg.to_str().unwrap(),
            );
            let out = match alg {
                SignatureAlgorithm::Ed25519 => openssl(&[
                    "pkeyutl", "-verify", "-pubin", "-inkey", p, "-rawin", "-in", m, "-sigfile", sf,
                ]),
                SignatureAlgorithm::EcdsaP256Sha256 => {
                    openssl(&["dgst", "-sha256", "-verify", p, "-signature", sf, m])
                }
                SignatureAlgorithm::EcdsaP384Sha384 => {
                    openssl(&["dgst", "-sha384", "-verify", p, "-signature", sf, m])
                }
                SignatureAlgorithm::Rsa3072PssSha256 => panic!("RSA keys are not made in tokens"),
            };
            assert!(
                out.status.success(),
                "{name}: openssl refused the signature: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn token_sign_fixed_is_r_s_and_verifies_with_the_fixed_algorithms() {
    use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
    let _serial = serial();
    let hsm = hsm();
    let store = store(hsm, "keys", USER_PIN);
    let msg = b"a COSE Sig_structure";
    for (name, alg) in [
        ("fixed-p256", SignatureAlgorithm::EcdsaP256Sha256),
        ("fixed-p384", SignatureAlgorithm::EcdsaP384Sha384),
        ("fixed-ed25519", SignatureAlgorithm::Ed25519),
    ] {
        let (r, signer) = store.generate_signer(name, alg).unwrap();
        let fixed_alg: &dyn VerificationAlgorithm = match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_FIXED,
            SignatureAlgorithm::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_FIXED,
            SignatureAlgorithm::Ed25519 => &signature::ED25519,
            SignatureAlgorithm::Rsa3072PssSha256 => panic!("RSA keys are not made in tokens"),
        };
        let fixed = signer.sign_fixed(msg).unwrap();
        assert_eq!(fixed.len(), alg.fixed_signature_len(), "{name}");
        UnparsedPublicKey::new(fixed_alg, signer.public_key())
            .verify(msg, &fixed)
            .unwrap_or_else(|_| panic!("{name}: the fixed signature does not verify"));
        assert!(UnparsedPublicKey::new(fixed_alg, signer.public_key())
            .verify(b"other", &fixed)
            .is_err());
        // The DER form still verifies as X.509 expects it.
        let der = signer.sign(msg).unwrap();
        assert!(verify_signature(alg, signer.public_key(), msg, &der), "{name}");

        // Debug names the key; a token's private key never leaves it, and the PIN is not shown.
        let shown = format!("{signer:?} {signer:#?}");
        assert!(
            shown.starts_with(&format!("Pkcs11Signer({r}, {})", alg.name())),
            "{shown}"
        );
        assert!(!shown.contains(USER_PIN) && !shown.contains(SO_PIN), "{shown}");
    }
    let (r, ka) = store
        .generate_key_agreement("fixed-ecdh", KeyAgreementAlgorithm::EcdhP256)
        .unwrap();
    let shown = format!("{ka:?}");
    assert_eq!(shown, format!("Pkcs11KeyAgreement({r}, ecdh-p256)"));
}

#[test]
fn ecdh_in_the_token_agrees_with_software() {
    let _serial = serial();
    let hsm = hsm();
    let store = store(hsm, "keys", USER_PIN);
    for (name, alg, lc) in [
        (
            "ecdh-p256",
            KeyAgreementAlgorithm::EcdhP256,
            &agreement::ECDH_P256,
        ),
        (
            "ecdh-p384",
            KeyAgreementAlgorithm::EcdhP384,
            &agreement::ECDH_P384,
        ),
    ] {
        let (r, made) = store.generate_key_agreement(name, alg).unwrap();
        let key = store.open_key_agreement(&r).unwrap();
        assert_eq!(key.public_key(), made.public_key());
        let eph = agreement::PrivateKey::generate(lc).unwrap();
        let eph_pub = eph.compute_public_key().unwrap();
        let ours = key.agree(eph_pub.as_ref()).unwrap();
        let peer = agreement::UnparsedPublicKey::new(lc, key.public_key());
        let theirs = agreement::agree(&eph, peer, (), |s| Ok(s.to_vec())).unwrap();
        assert_eq!(*ours, theirs, "{name}");
        let mut bad = eph_pub.as_ref().to_vec();
        bad[10] ^= 1;
        assert!(matches!(
            key.agree(&bad),
            Err(stamp_core::key::KeyError::BadPeerKey(_))
        ));
        // A signing key is not a key-agreement key, and the reverse.
        assert!(matches!(
            store.open_signer(&r),
            Err(KeyStoreError::WrongAlgorithm { .. })
        ));
    }
}

#[test]
fn many_threads_sign_at_once_through_the_session_pool() {
    let _serial = serial();
    let hsm = hsm();
    let store = store(hsm, "keys", USER_PIN);
    let (_, signer) = store
        .generate_signer("pool", SignatureAlgorithm::EcdsaP256Sha256)
        .unwrap();
    let signer: Arc<dyn Signer> = Arc::from(signer);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let signer = signer.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let m = format!("thread {t} message {i}");
                    let sig = signer.sign(m.as_bytes()).unwrap();
                    assert!(verify_signature(
                        signer.algorithm(),
                        signer.public_key(),
                        m.as_bytes(),
                        &sig
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn errors_are_specific() {
    let _serial = serial();
    let hsm = hsm();
    fn pkcs11<T>(r: Result<T, KeyStoreError>) -> Pkcs11Error {
        match r {
            Err(KeyStoreError::Pkcs11(e)) => e,
            Err(other) => panic!("expected a PKCS#11 error, got {other}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    let wrong = store(hsm, "wrong-pin", "9999");
    let e = pkcs11(wrong.generate_signer("k", SignatureAlgorithm::EcdsaP256Sha256));
    assert!(matches!(e, Pkcs11Error::WrongPin { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("wrong PIN for PKCS#11 token \"wrong-pin\""),
        "{e}"
    );
    // The refused PIN is not offered to the token again (each try counts towards locking it).
    let e = pkcs11(wrong.generate_signer("k", SignatureAlgorithm::EcdsaP256Sha256));
    assert!(e.to_string().contains("not tried again"), "{e}");

    let missing = store(hsm, "no-such-token", USER_PIN);
    let e = pkcs11(missing.generate_signer("k", SignatureAlgorithm::EcdsaP256Sha256));
    assert!(matches!(e, Pkcs11Error::TokenNotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("\"keys\""),
        "lists the tokens present: {e}"
    );

    // A token initialised by its security officer but with no user PIN yet.
    {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        let ctx = Pkcs11::new(module_path()).unwrap();
        let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let free = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| !ctx.get_token_info(*s).unwrap().token_initialized())
            .expect("SoftHSM2 always offers a free slot");
        ctx.init_token(
            free,
            &cryptoki::types::AuthPin::from(SO_PIN.to_owned()),
            "no-user-pin",
        )
        .unwrap();
    }
    let fresh = store(hsm, "no-user-pin", USER_PIN);
    let e = pkcs11(fresh.generate_signer("k", SignatureAlgorithm::EcdsaP256Sha256));
    assert!(matches!(e, Pkcs11Error::TokenNotInitialized(_)), "{e}");

    let ok = store(hsm, "keys", USER_PIN);
    let nope = KeyRef::parse("pkcs11:token=keys;object=no-such-key").unwrap();
    let e = pkcs11(ok.open_signer(&nope));
    assert!(matches!(e, Pkcs11Error::KeyNotFound(_)), "{e}");

    ok.generate_signer("twice", SignatureAlgorithm::EcdsaP256Sha256)
        .unwrap();
    let e = pkcs11(ok.generate_signer("twice", SignatureAlgorithm::EcdsaP256Sha256));
    assert!(matches!(e, Pkcs11Error::LabelExists { .. }), "{e}");

    let dir = tempfile::tempdir().unwrap();
    for (module, want_load_error) in [
        (dir.path().join("no-such-module.so"), false),
        (secret_file(dir.path(), "not-a-module.so", "hello"), true),
    ] {
        let cfg = stamp_keys::Pkcs11Config {
            module: Some(module),
            ..Default::default()
        };
        let s = stamp_keys::pkcs11::Pkcs11Store::new(cfg, None);
        let r = KeyRef::parse("pkcs11:token=keys;object=x").unwrap();
        let e = pkcs11(s.open_signer(&r));
        if want_load_error {
            assert!(matches!(e, Pkcs11Error::ModuleLoad { .. }), "{e}");
        } else {
            assert!(matches!(e, Pkcs11Error::ModuleNotFound(_)), "{e}");
        }
    }

    // A PIN file others can read is refused before the token is touched.
    let pin = secret_file(dir.path(), "pin", USER_PIN);
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cfg = stamp_keys::Pkcs11Config {
        module: Some(hsm.module.clone()),
        pin: stamp_keys::PinSource::File(pin),
        ..Default::default()
    };
    let s = stamp_keys::pkcs11::Pkcs11Store::new(
        cfg,
        Some(stamp_keys::Pkcs11Uri::parse_token("pkcs11:token=guard").unwrap()),
    );
    let e = pkcs11(s.generate_signer("k", SignatureAlgorithm::EcdsaP256Sha256));
    assert!(matches!(e, Pkcs11Error::PinFileInsecure { .. }), "{e}");
}

#[test]
fn a_failed_ceremony_leaves_no_key_in_the_token() {
    let _serial = serial();
    let hsm = hsm();
    let dir = tempfile::tempdir().unwrap();
    let cfg = stamp_keys::KeyConfig {
        new_keys: "pkcs11:token=guard".parse().unwrap(),
        passphrase: stamp_keys::PassphraseSource::Obtain {
            file: None,
            creating: true,
        },
        pkcs11: stamp_keys::Pkcs11Config {
            module: Some(hsm.module.clone()),
            pin: stamp_keys::PinSource::Given(stamp_keys::Pin::new(USER_PIN.into())),
            ..Default::default()
        },
    };
    let keys = stamp_keys::open_store(dir.path(), cfg);
    let count = |label: &str| {
        raw_session("guard")
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .unwrap()
            .len()
    };
    {
        let _guard = keys.guard_new_keys();
        keys.generate_signer("dropped", SignatureAlgorithm::EcdsaP256Sha256)
            .unwrap();
        keys.generate_key_agreement("dropped-ka", KeyAgreementAlgorithm::EcdhP256)
            .unwrap();
        assert_eq!(count("dropped"), 2, "private and public key objects");
    }
    assert_eq!(count("dropped"), 0);
    assert_eq!(count("dropped-ka"), 0);
    let guard = keys.guard_new_keys();
    keys.generate_signer("kept", SignatureAlgorithm::EcdsaP256Sha256)
        .unwrap();
    guard.keep();
    assert_eq!(count("kept"), 2);
    // No passphrase was ever needed: every key is in the token.
}
