//! `stamp site verify-log`

use std::path::PathBuf;

use crate::output::emit;
use crate::Globals;

/// Check the site's own audit log: every entry decodes, indexes are consecutive, times never go
/// back, every leaf hash matches its entry, and the entries give the stored Merkle root.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Runs `stamp site verify-log`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let store: stamp_site::SiteStore = crate::commands::open_store(&a.dir)?;
    let (size, root) = store.verify_log()?;
    let root = hex::encode(root);
    emit(
        g.json,
        &serde_json::json!({ "ok": true, "size": size, "root": root }),
        || {
            outln!("Audit log OK: {size} entries, root {root}")?;
            Ok(())
        },
    )
}
