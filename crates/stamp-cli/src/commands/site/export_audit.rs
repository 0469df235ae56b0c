//! `stamp site export-audit`

use std::path::PathBuf;

use crate::output::emit;
use crate::Globals;

/// Export the audit log for HQ: the entries since the last export, a new signed checkpoint and a
/// consistency proof from the previous export's checkpoint, signed by the site identity and
/// encrypted to the HQ authority (docs/formats/audit.md). The export itself is logged.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Where to write the bundle.
    #[arg(short = 'o', long = "out", value_name = "BUNDLE")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
    /// Start after the checkpoint at this log size instead of the last export (when HQ never
    /// received a bundle; 0 exports the whole log).
    #[arg(long, value_name = "SIZE")]
    since: Option<u64>,
}

/// Runs `stamp site export-audit`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let pass = crate::commands::keys(g);
    let mut site = stamp_site::Site::open(&a.dir, pass)?;
    let r = site.export_audit(&a.out, a.since, crate::commands::now())?;
    emit(g.json, &r, || {
        outln!(
            "Exported entries {}..{} ({} entries) to {}",
            r.previous_size,
            r.size,
            r.entries,
            r.bundle.display()
        )?;
        outln!("Checkpoint: log size {}, root {}", r.size, r.root)?;
        Ok(())
    })
}
