//! `stamp hq init`

use std::path::PathBuf;

use clap::ValueEnum;
use stamp_core::key::SignatureAlgorithm;
use stamp_hq::InitOptions;
use stamp_keys::StoreTarget;

use crate::output::emit;
use crate::Globals;

/// Key algorithms for the OEM root.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RootKey {
    /// ECDSA P-384 (default).
    P384,
    /// ECDSA P-256.
    P256,
}

/// Create an HQ directory: the OEM root CA, the HQ authority (a signing key and a key-agreement
/// key, each with a certificate under the root) and the HQ database. Prints the root's SHA-256
/// fingerprint: give it to every site, which pins it when installing credentials.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory to create (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The OEM's name, as it appears in certificate subjects (O=).
    #[arg(long, value_name = "NAME")]
    org: String,
    /// OEM root key algorithm.
    #[arg(long, value_enum, default_value = "p384")]
    root_key: RootKey,
    /// Where to create the keys: `file:` (passphrase-encrypted files in DIR/keys) or a PKCS#11
    /// token, `pkcs11:token=LABEL` (module and PIN from --pkcs11-module and --pkcs11-pin-file;
    /// see docs/hsm.md).
    #[arg(long, value_name = "STORE", default_value = "file:")]
    key_store: StoreTarget,
}

/// Runs `stamp hq init`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let keys = crate::commands::new_keys(g, a.key_store.clone());
    let opts = InitOptions {
        org: a.org,
        root_algorithm: match a.root_key {
            RootKey::P384 => SignatureAlgorithm::EcdsaP384Sha384,
            RootKey::P256 => SignatureAlgorithm::EcdsaP256Sha256,
        },
    };
    let r = stamp_hq::init(&a.dir, &opts, keys, crate::commands::now())?;
    emit(g.json, &r, || {
        outln!("Created HQ directory {} for {}", r.dir.display(), r.org)?;
        outln!("Keys in: {}", a.key_store)?;
        outln!("OEM root certificate:  {}", r.root_cert.display())?;
        outln!(
            "HQ authority (signing): {}",
            r.hq_authority_signing_cert.display()
        )?;
        outln!(
            "HQ authority (key agreement): {}",
            r.hq_authority_key_agreement_cert.display()
        )?;
        outln!("OEM root SHA-256 fingerprint (give this to every site):")?;
        outln!("  {}", r.root_fingerprint)?;
        Ok(())
    })
}
