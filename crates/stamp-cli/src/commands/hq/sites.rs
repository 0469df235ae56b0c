//! `stamp hq sites`

use std::path::PathBuf;

use serde::Serialize;

use crate::output::emit;
use crate::Globals;

/// List the sites HQ has enrolled.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Serialize)]
struct Site {
    site_id: String,
    enrolled_at: String,
}

/// Runs `stamp hq sites`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let store: stamp_hq::HqStore = crate::commands::open_store(&a.dir)?;
    let sites: Vec<Site> = store
        .sites()?
        .into_iter()
        .map(|(site_id, enrolled_at)| Site {
            site_id,
            enrolled_at: crate::output::timestamp_text(&enrolled_at),
        })
        .collect();
    emit(g.json, &serde_json::json!({ "sites": sites }), || {
        if sites.is_empty() {
            outln!("No sites enrolled.")?;
        }
        for s in &sites {
            outln!("{}\tenrolled {}", s.site_id, s.enrolled_at)?;
        }
        Ok(())
    })
}
