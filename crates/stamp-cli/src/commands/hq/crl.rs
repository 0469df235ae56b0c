//! `stamp hq crl`

use std::path::PathBuf;

use crate::Globals;

/// Write the OEM root's next CRL: every certificate the root issued to a revoked site (its
/// issuing CA and identity certificates), so that any X.509 verifier checking revocation
/// (`openssl verify -crl_check_all`) refuses the site and every device under it. Publish a new
/// one before its next-update time; each CRL's number is one more than the last.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Days until the CRL's next update (1-366).
    #[arg(long, value_name = "DAYS", default_value = "30")]
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

/// Runs `stamp hq crl`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let mut hq = stamp_hq::Hq::open(&a.dir, crate::commands::keys(g))?;
    let (crl, r) = hq.root_crl(a.days, crate::commands::now())?;
    crate::commands::emit_crl(g, &a.out, &crl, a.der, a.force, &r, "OEM root")
}
