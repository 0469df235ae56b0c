//! A token whose sessions, login or module state disappear under a running signer: the signer
//! reconnects and retries once; a token that is really gone is a clear error. Its own test binary,
//! since it finalises the module for the whole process.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod softhsm;

use softhsm::*;
use stamp_core::key::{verify_signature, KeyAgreementAlgorithm, SignatureAlgorithm, Signer};
use stamp_keys::pkcs11::Pkcs11Error;
use stamp_keys::{KeyStore, KeyStoreError};

fn signs(signer: &dyn Signer) -> Result<(), stamp_core::key::KeyError> {
    let sig = signer.sign(b"m")?;
    assert!(verify_signature(
        signer.algorithm(),
        signer.public_key(),
        b"m",
        &sig
    ));
    Ok(())
}

/// Finalises the module as another part of the process (or a crashed HSM client) would: every
/// session of the process is closed and the library forgets its state.
fn finalize_module() {
    use cryptoki::context::Pkcs11;
    let ctx = Pkcs11::new(module_path()).unwrap();
    ctx.finalize().unwrap();
}

#[test]
fn lost_sessions_are_reconnected_and_a_lost_token_is_reported() {
    let hsm = softhsm_with(&["reconnect"], None);
    let store = store(hsm, "reconnect", USER_PIN);
    let (_, signer) = store
        .generate_signer("k", SignatureAlgorithm::EcdsaP384Sha384)
        .unwrap();
    let (_, ka) = store
        .generate_key_agreement("ka", KeyAgreementAlgorithm::EcdhP256)
        .unwrap();
    signs(signer.as_ref()).unwrap();

    // Logged out behind the signer's back (login state is shared by all sessions).
    raw_session("reconnect").logout().unwrap();
    signs(signer.as_ref()).unwrap();

    // Every session closed and the module finalised: initialised again, logged in, retried.
    finalize_module();
    signs(signer.as_ref()).unwrap();
    finalize_module();
    assert_eq!(ka.agree(ka.public_key()).unwrap().len(), 32);

    // Threads signing while the login goes away, again and again, all succeed: each loss is
    // repaired by one reconnect. (Finalising the module while other threads are inside it is
    // undefined behaviour in PKCS#11, so that is only done above, between operations.)
    let signer: std::sync::Arc<dyn Signer> = std::sync::Arc::from(signer);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (s, stop) = (signer.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    signs(s.as_ref()).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(40));
        raw_session("reconnect").logout().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(40));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        assert!(t.join().unwrap() > 0);
    }

    // The token really gone (deleted while the module was down): a clear error, no hang.
    finalize_module();
    let out = std::process::Command::new("softhsm2-util")
        .args(["--delete-token", "--token", "reconnect"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = signer.sign(b"m").unwrap_err().to_string();
    assert!(e.contains("token \"reconnect\" not found"), "{e}");
    let reopened = store.open_signer(&stamp_keys::KeyRef::parse("pkcs11:token=reconnect;object=k").unwrap());
    assert!(
        matches!(
            reopened,
            Err(KeyStoreError::Pkcs11(Pkcs11Error::TokenNotFound { .. }))
        ),
        "{:?}",
        reopened.err()
    );
}
