//! `stamp hq firmware`

use std::path::PathBuf;

use crate::output::emit;
use crate::Globals;

/// List the firmware keys (with their MCUboot key hash and ESP32 eFuse digest) and every signed
/// release (version, format, key, digests, time).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Runs `stamp hq firmware`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let store: stamp_hq::HqStore = crate::commands::open_store(&a.dir)?;
    let keys = stamp_hq::firmware::keys(&a.dir, &store)?;
    let releases = stamp_hq::firmware::releases(&store)?;
    emit(
        g.json,
        &serde_json::json!({ "keys": keys, "releases": releases }),
        || {
            if keys.is_empty() {
                outln!("No firmware keys.")?;
            }
            for k in &keys {
                outln!(
                    "key {}\t{}\t{}\tpublic key {}",
                    k.name,
                    k.algorithm,
                    k.formats.join(","),
                    k.public_key.display()
                )?;
            }
            if releases.is_empty() {
                outln!("No releases.")?;
            }
            for r in &releases {
                outln!(
                    "release {}\t{}\tkey {}\tsha256 {}\t{}",
                    r.version,
                    r.format,
                    r.key,
                    r.sha256,
                    r.signed_at
                )?;
            }
            Ok(())
        },
    )
}
