//! A token that lacks mechanisms (SoftHSM2 configured to offer only ECDSA): asking for Ed25519 or
//! ECDH is a clear "not supported" error naming the mechanism, and nothing is left in the token.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod softhsm;

use softhsm::*;
use stamp_core::key::{KeyAgreementAlgorithm, SignatureAlgorithm};
use stamp_keys::pkcs11::Pkcs11Error;
use stamp_keys::{KeyStore, KeyStoreError};

#[test]
fn missing_mechanisms_are_reported_by_name() {
    let hsm = softhsm_with(&["limited"], Some("CKM_ECDSA,CKM_EC_KEY_PAIR_GEN"));
    let store = store(hsm, "limited", USER_PIN);
    store
        .generate_signer("p256", SignatureAlgorithm::EcdsaP256Sha256)
        .unwrap();
    match store.generate_signer("ed", SignatureAlgorithm::Ed25519) {
        Err(KeyStoreError::Pkcs11(e @ Pkcs11Error::MechanismNotSupported { .. })) => {
            assert!(e.to_string().contains("CKM_EC_EDWARDS_KEY_PAIR_GEN"), "{e}");
        }
        other => panic!("expected mechanism not supported, got {:?}", other.err()),
    }
    match store.generate_key_agreement("ka", KeyAgreementAlgorithm::EcdhP256) {
        Err(KeyStoreError::Pkcs11(e @ Pkcs11Error::MechanismNotSupported { .. })) => {
            assert!(e.to_string().contains("CKM_ECDH1_DERIVE"), "{e}");
            assert!(e.to_string().contains("ecdh-p256"), "{e}");
        }
        other => panic!("expected mechanism not supported, got {:?}", other.err()),
    }
    let s = raw_session("limited");
    for label in ["ed", "ka"] {
        let found = s
            .find_objects(&[cryptoki::object::Attribute::Label(label.as_bytes().to_vec())])
            .unwrap();
        assert!(found.is_empty(), "{label}: nothing was created");
    }
}

#[test]
fn rsa_keys_are_refused_in_tokens_with_a_clear_error() {
    // One SoftHSM per test binary: the same configuration as the test above.
    let hsm = softhsm_with(&["limited"], Some("CKM_ECDSA,CKM_EC_KEY_PAIR_GEN"));
    let store = store(hsm, "limited", USER_PIN);
    match store.generate_signer("fw", SignatureAlgorithm::Rsa3072PssSha256) {
        Err(KeyStoreError::Pkcs11(e @ Pkcs11Error::MechanismNotSupported { .. })) => {
            assert!(e.to_string().contains("RSA"), "{e}");
        }
        other => panic!("expected RSA to be refused, got {:?}", other.err()),
    }
}
