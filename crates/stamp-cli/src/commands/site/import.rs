//! `stamp site import`

use std::path::PathBuf;

use anyhow::bail;
use stamp_site::entitlements::{ImportReport, VerifiedEntitlement, MAX_PACKAGE};
use stamp_site::inbox::{EngineLock, Outcome};
use stamp_site::Site;

use crate::output::emit;
use crate::Globals;

/// Verify a sealed entitlement package from HQ and apply it. Everything is checked before
/// anything changes: size, signature by the HQ authority under this site's OEM root, addressed to
/// this site, decryption, sequence (strictly increasing: no replay, no rollback), payload, window.
/// While the site service (or another issuing run) is running, the package is handed to it and
/// applied between two of its requests, so that the audit log records every device after the
/// terms it was issued under; this waits for that.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The package from `stamp hq entitle`, `stamp hq amend` or `stamp hq revoke-device`.
    #[arg(value_name = "FILE")]
    package: PathBuf,
    /// Seconds to wait for a running service to apply the package (it checks at its reload
    /// interval); after that the package stays queued and is applied when the service next checks.
    #[arg(long, value_name = "SECONDS", default_value = "30")]
    wait: u64,
}

/// Runs `stamp site import`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let bytes = crate::commands::read_bounded(&a.package, MAX_PACKAGE)?;
    let mut site = stamp_site::Site::open(&a.dir, crate::commands::keys(g))?;
    let now = crate::commands::now();
    let verified = site.verify_entitlement(&bytes, now)?;
    let r = match EngineLock::try_acquire(&a.dir)? {
        Some(_lock) => site.apply_entitlement(verified, now)?,
        None => hand_to_engine(&site, &verified, &bytes, &a, g)?,
    };
    emit(g.json, &r, || {
        let e = &r.entitlement;
        outln!(
            "Applied {} of {} (sequence {})",
            r.action,
            e.entitlement_id,
            r.sequence
        )?;
        outln!(
            "  {} ({}/{}): {}, quota {}, window {} to {}",
            e.product_name,
            e.oem_id,
            e.product_id,
            e.status.name(),
            e.quota,
            e.not_before,
            e.not_after
        )?;
        Ok(())
    })
}

/// Queues the package for the running engine and waits for its decision.
fn hand_to_engine(
    site: &Site,
    verified: &VerifiedEntitlement,
    bytes: &[u8],
    a: &Args,
    g: &Globals,
) -> anyhow::Result<ImportReport> {
    let sequence = verified.sequence();
    site.queue_package(sequence, bytes)?;
    if !g.json {
        eprintln!("The site service (or another issuing run) is running; handing the package to it...");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.wait);
    loop {
        match site.take_outcome(sequence, crate::commands::now())? {
            Some(Outcome::Applied(r)) => return Ok(*r),
            Some(Outcome::Refused(e)) => bail!("the running engine refused the package: {e}"),
            None if std::time::Instant::now() >= deadline => bail!(
                "the running engine has not applied package {sequence} within {} s; it stays queued in {} and is applied when the service next checks (its reload_interval_secs)",
                a.wait,
                a.dir.join(stamp_site::inbox::INBOX_DIR).display()
            ),
            None => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}
