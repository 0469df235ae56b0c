//! `stamp site import`

use std::path::PathBuf;

use stamp_site::entitlements::MAX_PACKAGE;

use crate::output::emit;
use crate::Globals;

/// Verify a sealed entitlement package from HQ and apply it. Everything is checked before
/// anything changes: size, signature by the HQ authority under this site's OEM root, addressed to
/// this site, decryption, sequence (strictly increasing: no replay, no rollback), payload, window.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The package from `stamp hq entitle` or `stamp hq amend`.
    #[arg(value_name = "FILE")]
    package: PathBuf,
}

/// Runs `stamp site import`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let bytes = super::read_bounded(&a.package, MAX_PACKAGE)?;
    let mut site = stamp_site::Site::open(&a.dir, super::keys(g))?;
    let now = super::now();
    let verified = site.verify_entitlement(&bytes, now)?;
    let r = site.apply_entitlement(verified, now)?;
    emit(g.json, &r, || {
        let e = &r.entitlement;
        println!(
            "Applied {} of {} (sequence {})",
            r.action, e.entitlement_id, r.sequence
        );
        println!(
            "  {} ({}/{}): {}, quota {}, window {} to {}",
            e.product_name,
            e.oem_id,
            e.product_id,
            e.status.name(),
            e.quota,
            e.not_before,
            e.not_after
        );
    })
}
