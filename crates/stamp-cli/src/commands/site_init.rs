//! `stamp site init`

use std::path::PathBuf;

use stamp_core::SiteId;

use crate::output::emit;
use crate::Globals;

/// Create a site directory: the site identity signing key, identity key-agreement key and issuing
/// CA key, the site database, and the enrollment request file to carry to HQ. Prints the
/// request's short fingerprint: read it out to HQ over the phone.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory to create (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The site's ID: 1-48 characters of a-z, 0-9 and '-'.
    #[arg(long, value_name = "ID")]
    site_id: SiteId,
    /// Where to write the request file.
    #[arg(short = 'o', long = "out", value_name = "REQUEST")]
    out: PathBuf,
}

/// Runs `stamp site init`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let pass = super::passphrase(g, true)?;
    let r = stamp_site::init(&a.dir, &a.site_id, pass, &a.out, super::now())?;
    emit(g.json, &r, || {
        println!(
            "Created site directory {} for site {}",
            r.dir.display(),
            r.site_id
        );
        println!("Request for HQ: {}", r.request.display());
        println!(
            "Request fingerprint (read this out to HQ): {}",
            r.request_fingerprint
        );
    })
}
