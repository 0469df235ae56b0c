//! `stamp hq firmware-key-digest`

use std::path::PathBuf;

use stamp_core::firmware::esp32;

use crate::output::emit;
use crate::Globals;

/// Write a firmware key's ESP32 Secure Boot V2 public-key digest: the 32 bytes to burn into an
/// eFuse key block (`espefuse burn-key BLOCK_KEY0 FILE SECURE_BOOT_DIGEST0`), the same as
/// `espsecure digest-sbv2-public-key` computes.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The firmware key's name.
    #[arg(long, value_name = "NAME")]
    key: String,
    /// Where to write the 32-byte digest.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

/// Runs `stamp hq firmware-key-digest`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let store: stamp_hq::HqStore = crate::commands::open_store(&a.dir)?;
    let key = stamp_hq::firmware::public_key(&store, &a.key)?;
    let digest = esp32::public_key_digest(&key)?;
    crate::commands::write_output(&a.out, &digest, 0o644, a.force)?;
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    emit(
        g.json,
        &serde_json::json!({ "key": a.key, "digest": hex, "out": a.out }),
        || {
            outln!("ESP32 Secure Boot V2 key digest of {}: {hex}", a.key)?;
            outln!("Written to {}", a.out.display())?;
            Ok(())
        },
    )
}
