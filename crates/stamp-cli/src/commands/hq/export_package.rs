//! `stamp hq export-package`

use std::path::PathBuf;

use stamp_core::SiteId;
use stamp_hq::entitle::PackageSelector;

use crate::output::emit;
use crate::Globals;

/// Write again a package HQ sealed (`stamp hq entitle`, `amend` or `revoke-device`), byte-identical
/// to the original, chosen by site and sequence or by entitlement and sequence. A site applies
/// packages strictly in sequence, so a lost file would stop it from applying any later package:
/// HQ keeps every package it sealed. Sending one twice is harmless (the site refuses a replay).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The site the package is sealed to.
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "entitlement",
        conflicts_with = "entitlement"
    )]
    site: Option<SiteId>,
    /// The entitlement the package grants or amends (its site is the entitlement's).
    #[arg(long, value_name = "ID")]
    entitlement: Option<String>,
    /// The package's sequence number for its site (the number `stamp site import` asks for).
    #[arg(long, value_name = "N")]
    sequence: u64,
    /// Where to write the package.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

#[derive(serde::Serialize)]
struct Report {
    package: PathBuf,
    site_id: String,
    sequence: u64,
    entitlement_id: String,
    action: String,
    created_at: String,
    sha256: String,
}

/// Runs `stamp hq export-package`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let store: stamp_hq::HqStore = crate::commands::open_store(&a.dir)?;
    let which = match (&a.site, &a.entitlement) {
        (Some(site), _) => PackageSelector::Site(site, a.sequence),
        (None, Some(id)) => PackageSelector::Entitlement(id, a.sequence),
        (None, None) => return Err(crate::output::CliError::usage("give --site or --entitlement")),
    };
    let p = store.sealed_package(which)?;
    crate::commands::write_output(&a.out, &p.sealed, 0o644, a.force)?;
    let r = Report {
        package: a.out,
        sha256: hex::encode(stamp_core::fingerprint::sha256(&p.sealed)),
        site_id: p.site_id,
        sequence: p.sequence,
        entitlement_id: p.entitlement_id,
        action: p.action,
        created_at: p.created_at,
    };
    emit(g.json, &r, || {
        outln!(
            "Wrote package {} of site {} ({} of {}, sealed {}) to {}",
            r.sequence,
            r.site_id,
            r.action,
            r.entitlement_id,
            r.created_at,
            r.package.display()
        )?;
        outln!("  SHA-256 {}", r.sha256)?;
        Ok(())
    })
}
