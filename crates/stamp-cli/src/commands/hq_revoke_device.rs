//! `stamp hq revoke-device`

use std::path::PathBuf;

use anyhow::bail;
use stamp_core::SiteId;
use stamp_hq::cloud::RevokeTarget;

use crate::output::emit;
use crate::Globals;

/// Revoke a device (by serial or certificate SHA-256), every device of an entitlement, or every
/// device of a site. Verifiers refuse them once they load the next registry (`stamp hq export
/// --format registry`); AWS bulk exports leave them out.
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
}

/// Runs `stamp hq revoke-device`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let target = match (a.serial, a.cert_sha256, a.entitlement, a.site) {
        (Some(n), None, None, None) => RevokeTarget::Serial(n),
        (None, Some(h), None, None) => match stamp_core::fingerprint::parse_sha256(&h) {
            Some(h) => RevokeTarget::Certificate(h),
            None => bail!("--cert-sha256 must be 64 hex digits"),
        },
        (None, None, Some(e), None) => RevokeTarget::Entitlement(e),
        (None, None, None, Some(s)) => RevokeTarget::Site(s),
        _ => bail!("give exactly one of --serial, --cert-sha256, --entitlement, --site"),
    };
    let mut hq = stamp_hq::Hq::open(&a.dir, super::keys(g))?;
    let r = hq.revoke(&target, &a.reason, super::now())?;
    emit(g.json, &r, || {
        println!(
            "Revoked {} ({}); {} revocations recorded",
            r.revoked, r.reason, r.revocations
        );
        println!("Export a new registry for verifiers: stamp hq export --format registry");
    })
}
