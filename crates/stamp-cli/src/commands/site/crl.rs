//! `stamp site crl`

use std::path::PathBuf;

use crate::Globals;

/// Write the site issuing CA's next CRL: every certificate this site issued (first issue and
/// renewals) to a device HQ revoked in an entitlement update applied here (`stamp hq
/// revoke-device --site-update`, then `stamp site import`). Verifiers that check revocation
/// (`openssl verify -crl_check`) then refuse those devices. Publish a new one before its
/// next-update time; each CRL's number is one more than the last.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Days until the CRL's next update (1-366).
    #[arg(long, value_name = "DAYS", default_value = "7")]
    days: u32,
    /// Write DER instead of PEM.
    #[arg(long)]
    der: bool,
    /// Where to write the CRL.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

/// Runs `stamp site crl`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let mut site = stamp_site::Site::open(&a.dir, crate::commands::keys(g))?;
    let (crl, r) = site.crl(a.days, crate::commands::now())?;
    crate::commands::emit_crl(g, &a.out, &crl, a.der, a.force, &r, "Site issuing CA")
}
