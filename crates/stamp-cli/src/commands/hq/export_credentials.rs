//! `stamp hq export-credentials`

use std::path::PathBuf;

use stamp_core::SiteId;

use crate::output::emit;
use crate::Globals;

/// Write again the credentials file of an enrolled site (what `stamp hq enroll-site -o` wrote),
/// from HQ's records: the OEM root, HQ's certificates and the site's three certificates, with the
/// request fingerprint. It holds no secret; the site installs it with `stamp site install`, as
/// the first copy. No passphrase needed.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The enrolled site.
    #[arg(long, value_name = "ID")]
    site: SiteId,
    /// Where to write the credentials file.
    #[arg(short = 'o', long = "out", value_name = "CREDENTIALS")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

#[derive(serde::Serialize)]
struct Report {
    site_id: SiteId,
    request_fingerprint: String,
    credentials: PathBuf,
    sha256: String,
}

/// Runs `stamp hq export-credentials`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let store: stamp_hq::HqStore = crate::commands::open_store(&a.dir)?;
    let creds = store.site_credentials(&a.site)?;
    let json = creds.to_json();
    crate::commands::write_output(&a.out, &json, 0o644, a.force)?;
    let r = Report {
        site_id: a.site,
        request_fingerprint: creds.request_fingerprint,
        credentials: a.out,
        sha256: hex::encode(stamp_core::fingerprint::sha256(&json)),
    };
    emit(g.json, &r, || {
        outln!(
            "Credentials of site {} (request {}) written to {}",
            r.site_id,
            r.request_fingerprint,
            r.credentials.display()
        )?;
        outln!("  SHA-256 {}", r.sha256)?;
        Ok(())
    })
}
