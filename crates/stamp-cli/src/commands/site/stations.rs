//! `stamp site stations`

use std::path::PathBuf;

use crate::output::emit;
use crate::Globals;

/// List the site's line stations (name, certificate hash, added, revoked).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Runs `stamp site stations`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let store: stamp_site::SiteStore = crate::commands::open_store(&a.dir)?;
    let stations = store.stations()?;
    emit(g.json, &serde_json::json!({ "stations": stations }), || {
        if stations.is_empty() {
            outln!("No stations; add one with `stamp site add-station`.")?;
        }
        for s in &stations {
            let state = match s.revoked_ms {
                Some(ms) => format!("revoked {}", crate::output::timestamp_ms(ms)),
                None => "active".to_owned(),
            };
            outln!(
                "{:<24} added {}  {state:<28} {}",
                s.name,
                crate::output::timestamp_ms(s.added_ms),
                s.cert_sha256
            )?;
        }
        Ok(())
    })
}
