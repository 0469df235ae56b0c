//! `stamp site install`

use std::path::PathBuf;

use stamp_core::ceremony::MAX_FILE;
use stamp_core::fingerprint;

use crate::output::{confirm, emit};
use crate::Globals;

/// Install the credentials HQ issued: check that they chain to the OEM root (pinned with
/// --root-fingerprint, or shown for confirmation), that every certificate has its profile, and
/// that the site certificates are for this site's own keys; then store them.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The credentials file from `stamp hq enroll-site`.
    #[arg(value_name = "CREDENTIALS")]
    credentials: PathBuf,
    /// SHA-256 fingerprint of the OEM root as `stamp hq init` printed it (colons optional).
    #[arg(long, value_name = "SHA256", conflicts_with = "yes")]
    root_fingerprint: Option<String>,
    /// Do not ask to confirm the root fingerprint.
    #[arg(long)]
    yes: bool,
}

/// Runs `stamp site install`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let pin = match &a.root_fingerprint {
        Some(text) => match fingerprint::parse_sha256(text) {
            Some(p) => Some(p),
            None => {
                return Err(crate::output::CliError::usage(
                    "--root-fingerprint must be a SHA-256 fingerprint (64 hex digits, colons optional)",
                ))
            }
        },
        None => None,
    };
    let bytes = crate::commands::read_bounded(&a.credentials, MAX_FILE)?;
    let mut site = stamp_site::Site::open(&a.dir, crate::commands::keys(g))?;
    let now = crate::commands::now();
    let creds = site.verify_credentials(&bytes, pin.as_ref(), now)?;
    if pin.is_none() && !a.yes {
        eprintln!("OEM root SHA-256 fingerprint: {}", creds.root_fingerprint);
        confirm(
            "Is this the OEM root fingerprint HQ gave you?",
            "pass --root-fingerprint SHA256 (or --yes if you checked it some other way)",
        )?;
    }
    let r = site.install(&creds, now)?;
    emit(g.json, &r, || {
        outln!("Installed credentials for site {}", r.site_id)?;
        outln!("OEM root fingerprint: {}", r.root_fingerprint)?;
        for (name, path) in &r.certs {
            outln!("  {name}: {}", path.display())?;
        }
        Ok(())
    })
}
