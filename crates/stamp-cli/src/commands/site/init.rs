//! `stamp site init`

use std::path::PathBuf;

use stamp_core::SiteId;
use stamp_keys::StoreTarget;

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
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
    /// Where to create the keys: `file:` (passphrase-encrypted files in DIR/keys) or a PKCS#11
    /// token, `pkcs11:token=LABEL` (module and PIN from --pkcs11-module and --pkcs11-pin-file;
    /// see docs/hsm.md).
    #[arg(long, value_name = "STORE", default_value = "file:")]
    key_store: StoreTarget,
}

/// Runs `stamp site init`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let keys = crate::commands::new_keys(g, a.key_store.clone());
    let r = stamp_site::init(&a.dir, &a.site_id, keys, &a.out, crate::commands::now())?;
    emit(g.json, &r, || {
        outln!(
            "Created site directory {} for site {}",
            r.dir.display(),
            r.site_id
        )?;
        outln!("Keys in: {}", a.key_store)?;
        outln!("Request for HQ: {}", r.request.display())?;
        outln!(
            "Request fingerprint (read this out to HQ): {}",
            r.request_fingerprint
        )?;
        Ok(())
    })
}
