//! `stamp hq enroll-site`

use std::path::PathBuf;

use stamp_core::ceremony::MAX_FILE;

use crate::output::{confirm, emit};
use crate::Globals;

/// Enroll a factory site: verify every CSR in its request file and the signature binding them,
/// show the request's fingerprint, issue the site identity (signing and key agreement) and
/// issuing CA certificates under the OEM root, record the site, and write the credentials file to
/// carry back to the site.
///
/// The fingerprint must match the one the site read out over the phone: pass it with
/// --fingerprint, or confirm it at the prompt.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The site's request file (from `stamp site init`).
    #[arg(value_name = "REQUEST")]
    request: PathBuf,
    /// Where to write the credentials file.
    #[arg(short = 'o', long = "out", value_name = "CREDENTIALS")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
    /// The request fingerprint the site read out (e.g. 3f2a-91bc-04de-77a1-c0ff); enrollment is
    /// refused if it differs.
    #[arg(long, value_name = "FINGERPRINT", conflicts_with = "yes")]
    fingerprint: Option<String>,
    /// Do not ask to confirm the fingerprint (you compared it some other way).
    #[arg(long)]
    yes: bool,
}

/// Runs `stamp hq enroll-site`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let bytes = crate::commands::read_bounded(&a.request, MAX_FILE)?;
    let request = stamp_hq::read_request(&bytes)?;
    let short = request.short_fingerprint();
    if a.fingerprint.is_none() && !a.yes {
        eprintln!("Request from site {}: fingerprint {short}", request.site_id);
        confirm(
            "Does this fingerprint match the one the site read out?",
            "pass --fingerprint FINGERPRINT (or --yes if you compared it some other way)",
        )?;
    }
    let mut hq = stamp_hq::Hq::open(&a.dir, crate::commands::keys(g))?;
    let r = hq.enroll_site(&request, a.fingerprint.as_deref(), &a.out, crate::commands::now())?;
    emit(g.json, &r, || {
        outln!(
            "Enrolled site {} (request fingerprint {})",
            r.site_id,
            r.request_fingerprint
        )?;
        outln!("Credentials for the site: {}", r.credentials.display())?;
        outln!(
            "Site issuing CA certificate: {}",
            r.site_issuing_ca_cert.display()
        )?;
        Ok(())
    })
}
