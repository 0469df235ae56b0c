//! `stamp hq revoke-device`

use std::path::PathBuf;

use stamp_core::SiteId;
use stamp_hq::cloud::RevokeTarget;

use crate::output::{emit, CliError};
use crate::Globals;

/// Revoke a device (by serial or certificate SHA-256), every device of an entitlement, or every
/// device of a site. Verifiers refuse them once they load the next registry (`stamp hq export
/// --format registry`); AWS bulk exports leave them out. With `--site-update`, also write the
/// entitlement update that carries a device or entitlement revocation to its site (`stamp site
/// import`), which then refuses to renew those devices and lists them in its CRL (`stamp site
/// crl`). A revoked site's certificates are listed in the OEM root's CRL (`stamp hq crl`).
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "cert_sha256", "entitlement", "site"])))]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// A device serial (every certificate with it).
    #[arg(long, value_name = "N")]
    serial: Option<u64>,
    /// One device certificate, by SHA-256 (hex, colons allowed).
    #[arg(long, value_name = "HEX")]
    cert_sha256: Option<String>,
    /// Every device of an entitlement.
    #[arg(long, value_name = "ID")]
    entitlement: Option<String>,
    /// Every device of a site.
    #[arg(long, value_name = "ID")]
    site: Option<SiteId>,
    /// Why (recorded and published in the registry; at most 256 characters).
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// Also write the sealed entitlement update that revokes the devices at their site.
    #[arg(long, value_name = "FILE", conflicts_with = "site")]
    site_update: Option<PathBuf>,
    /// Replace --site-update FILE if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

/// Runs `stamp hq revoke-device`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let target = match (a.serial, a.cert_sha256, a.entitlement, a.site) {
        (Some(n), None, None, None) => RevokeTarget::Serial(n),
        (None, Some(h), None, None) => match stamp_core::fingerprint::parse_sha256(&h) {
            Some(h) => RevokeTarget::Certificate(h),
            None => {
                return Err(CliError::usage(
                    "--cert-sha256 must be 64 hex digits (colons allowed)",
                ))
            }
        },
        (None, None, Some(e), None) => RevokeTarget::Entitlement(e),
        (None, None, None, Some(s)) => RevokeTarget::Site(s),
        _ => {
            return Err(CliError::usage(
                "give exactly one of --serial, --cert-sha256, --entitlement, --site",
            ))
        }
    };
    if let Some(p) = &a.site_update {
        crate::commands::check_output(p, a.force)?;
    }
    let mut hq = stamp_hq::Hq::open(&a.dir, crate::commands::keys(g))?;
    let r = hq.revoke(
        &target,
        &a.reason,
        a.site_update.as_deref(),
        crate::commands::now(),
    )?;
    emit(g.json, &r, || {
        outln!(
            "Revoked {} ({}); {} revocations recorded",
            r.revoked,
            r.reason,
            r.revocations
        )?;
        let hq = a.dir.display();
        outln!(
            "Export a new registry for verifiers: stamp hq export --dir {hq} --format registry -o registry.cose"
        )?;
        match &r.site_update {
            Some(p) => outln!(
                "Entitlement update for site {} (sequence {}): {}; the site applies it with \
                 stamp site import --dir SITE_DIR {}",
                p.entitlement.site_id,
                p.sequence,
                p.package.display(),
                p.package.display()
            )?,
            None if matches!(target, RevokeTarget::Site(_)) => {
                outln!("Publish a new OEM root CRL for X.509 verifiers: stamp hq crl --dir {hq} -o root.crl")?
            }
            None => outln!(
                "Not carried to the site: only a revocation made with --site-update FILE reaches \
                 the site's CRL (stamp site import --dir SITE_DIR FILE, then stamp site crl)"
            )?,
        }
        Ok(())
    })
}
