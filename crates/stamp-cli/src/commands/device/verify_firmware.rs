//! `stamp device verify-firmware`

use std::path::PathBuf;

use anyhow::Context;
use stamp_core::firmware::{esp32, mcuboot, FirmwareKey, Version, MAX_IMAGE_LEN};

use crate::commands::hq::sign_firmware::FormatArg;
use crate::output::emit;
use crate::Globals;

/// Verify a signed firmware image the way the device's bootloader does, with the OEM's firmware
/// public key: refuses a modified or truncated image, another key's signature, and (with
/// --min-version) a rollback.
///
/// mcuboot: --min-version is major.minor.revision (the build number is not compared, as in
/// MCUboot's downgrade prevention). esp32-sbv2: --min-version is the ESP-IDF app's secure_version
/// (anti-rollback), read from the app descriptor.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Signed image format.
    #[arg(long, value_enum)]
    format: FormatArg,
    /// The firmware public key (PEM PUBLIC KEY, e.g. HQ/certs/firmware-NAME.pub.pem).
    #[arg(long, value_name = "PUBKEY.pem")]
    key_file: PathBuf,
    /// Refuse images older than this.
    #[arg(long, value_name = "VERSION")]
    min_version: Option<String>,
    /// The signed image.
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
}

/// Runs `stamp device verify-firmware`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let pem = crate::commands::read_bounded(&a.key_file, 16 * 1024)?;
    let key = FirmwareKey::from_pem(&String::from_utf8_lossy(&pem))
        .with_context(|| format!("cannot use {} as a firmware key", a.key_file.display()))?;
    let image = crate::commands::read_bounded(&a.image, MAX_IMAGE_LEN)?;
    let what = format!("{} is not a valid signed image for this key", a.image.display());
    let result = match a.format {
        FormatArg::Mcuboot => {
            let min = a
                .min_version
                .as_deref()
                .map(|s| {
                    s.parse::<Version>()
                        .map_err(|e| crate::output::CliError::usage(format!("--min-version {s:?}: {e}")))
                })
                .transpose()?;
            let v = mcuboot::verify(&image, &key, min).context(what)?;
            serde_json::json!({ "format": "mcuboot", "valid": true, "image": v })
        }
        FormatArg::Esp32Sbv2 => {
            let min = a
                .min_version
                .as_deref()
                .map(|s| {
                    s.parse::<u32>().map_err(|_| {
                        crate::output::CliError::usage(format!(
                            "--min-version for esp32-sbv2 is a secure_version number, not {s:?}"
                        ))
                    })
                })
                .transpose()?;
            let v = esp32::verify(&image, &key, min).context(what)?;
            serde_json::json!({ "format": "esp32-sbv2", "valid": true, "image": v })
        }
    };
    emit(g.json, &result, || {
        outln!(
            "OK: {} is signed by {} ({})",
            a.image.display(),
            a.key_file.display(),
            key.algorithm().name()
        )?;
        let img = &result["image"];
        if let Some(v) = img.get("version").and_then(|v| v.as_str()) {
            outln!("Version: {v}")?;
        }
        if let Some(v) = img.get("secure_version").and_then(|v| v.as_u64()) {
            outln!("secure_version: {v}")?;
        }
        Ok(())
    })
}
