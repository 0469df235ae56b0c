//! `stamp hq add-firmware-key`

use std::path::PathBuf;

use clap::ValueEnum;
use stamp_core::key::SignatureAlgorithm;

use crate::output::emit;
use crate::Globals;

/// Firmware key algorithms.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FirmwareAlgorithm {
    /// ECDSA P-256: MCUboot and ESP32 Secure Boot V2 (ECDSA).
    EcdsaP256,
    /// Ed25519: MCUboot.
    Ed25519,
    /// RSA-3072 with PSS: ESP32 Secure Boot V2 (RSA) and MCUboot.
    Rsa3072,
}

impl From<FirmwareAlgorithm> for SignatureAlgorithm {
    fn from(a: FirmwareAlgorithm) -> Self {
        match a {
            FirmwareAlgorithm::EcdsaP256 => SignatureAlgorithm::EcdsaP256Sha256,
            FirmwareAlgorithm::Ed25519 => SignatureAlgorithm::Ed25519,
            FirmwareAlgorithm::Rsa3072 => SignatureAlgorithm::Rsa3072PssSha256,
        }
    }
}

/// Create a named firmware-signing key in the HQ key store, with a certificate under the OEM root
/// (profile firmware-signing, extended key usage codeSigning). Writes the certificate and the
/// public key as PEM and prints the key's MCUboot key hash and ESP32 Secure Boot V2 eFuse digest.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The key's name (1-64 characters of a-z, 0-9, '-' and '.').
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Key algorithm: ecdsa-p256 (MCUboot, ESP32), ed25519 (MCUboot), rsa3072 (ESP32, MCUboot).
    #[arg(long, value_enum)]
    algorithm: FirmwareAlgorithm,
    /// Where to create the key: `file:` (the HQ key store's encrypted files) or a PKCS#11 token,
    /// `pkcs11:token=LABEL` (ECDSA P-256 or Ed25519; see docs/hsm.md).
    #[arg(long, value_name = "STORE", default_value = "file:")]
    key_store: stamp_keys::StoreTarget,
}

/// Runs `stamp hq add-firmware-key`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let mut keys = crate::commands::keys(g);
    keys.new_keys = a.key_store;
    let mut hq = stamp_hq::Hq::open(&a.dir, keys)?;
    let r = hq.add_firmware_key(&a.name, a.algorithm.into(), crate::commands::now())?;
    emit(g.json, &r, || {
        outln!(
            "Created firmware key {} ({}; signs {})",
            r.name,
            r.algorithm,
            r.formats.join(", ")
        )?;
        outln!("Certificate: {}", r.certificate.display())?;
        outln!("Public key:  {}", r.public_key.display())?;
        if let Some(h) = &r.mcuboot_key_hash {
            outln!("MCUboot key hash:                {h}")?;
        }
        if let Some(d) = &r.esp32_sbv2_key_digest {
            outln!("ESP32 Secure Boot V2 key digest: {d}")?;
        }
        Ok(())
    })
}
