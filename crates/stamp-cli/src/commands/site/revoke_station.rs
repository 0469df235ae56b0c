//! `stamp site revoke-station`

use std::path::PathBuf;

use crate::output::emit;
use crate::Globals;

/// Revoke a line station: the site service refuses its requests from the next one on (refusal
/// `station-revoked`, logged). A revoked name is never used again.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The station's name.
    #[arg(long, value_name = "NAME")]
    name: String,
}

/// Runs `stamp site revoke-station`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let pass = crate::commands::keys(g);
    let mut site = stamp_site::Site::open(&a.dir, pass)?;
    let info = site.revoke_station(&a.name, crate::commands::now())?;
    emit(g.json, &info, || {
        outln!("Station {} is revoked", info.name)?;
        Ok(())
    })
}
