//! `stamp hq amend`

use std::path::PathBuf;

use stamp_core::entitlement::Status;
use stamp_hq::entitle::AmendRequest;

use crate::commands::args::parse_time;
use crate::output::emit;
use crate::Globals;

/// Change an entitlement already sent to a site: add to its quota (with a new serial range), move
/// or shorten its window, suspend, resume or revoke it. Writes a new sealed package with the
/// site's next sequence number; the site applies packages strictly in order.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The entitlement to change (see `stamp hq entitlements`).
    #[arg(long, value_name = "ID")]
    entitlement: String,
    /// Devices to add to the quota.
    #[arg(long, value_name = "N", default_value = "0")]
    add_quota: u64,
    /// New start of the production window.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    not_before: Option<time::OffsetDateTime>,
    /// New end of the production window (earlier ends production sooner).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    not_after: Option<time::OffsetDateTime>,
    /// Stop production until resumed.
    #[arg(long, conflicts_with_all = ["resume", "revoke"])]
    suspend: bool,
    /// Resume a suspended entitlement.
    #[arg(long, conflicts_with = "revoke")]
    resume: bool,
    /// Stop production for good.
    #[arg(long)]
    revoke: bool,
    /// Where to write the sealed package.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

/// Runs `stamp hq amend`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let status = match (a.suspend, a.resume, a.revoke) {
        (true, _, _) => Some(Status::Suspended),
        (_, true, _) => Some(Status::Active),
        (_, _, true) => Some(Status::Revoked),
        _ => None,
    };
    if a.add_quota == 0 && a.not_before.is_none() && a.not_after.is_none() && status.is_none() {
        return Err(crate::output::CliError::usage(
            "nothing to change: give --add-quota, --not-before, --not-after, --suspend, --resume or --revoke",
        ));
    }
    let mut hq = stamp_hq::Hq::open(&a.dir, crate::commands::keys(g))?;
    let req = AmendRequest {
        entitlement_id: a.entitlement,
        add_quota: a.add_quota,
        not_before: a.not_before.map(|t| t.unix_timestamp()),
        not_after: a.not_after.map(|t| t.unix_timestamp()),
        status,
        revoke: None,
    };
    let r = hq.amend(&req, &a.out, crate::commands::now())?;
    emit(g.json, &r, || {
        let e = &r.entitlement;
        outln!(
            "Amended {} for site {} (sequence {})",
            e.entitlement_id,
            e.site_id,
            r.sequence
        )?;
        outln!(
            "  status {}, quota {}, window {} to {}",
            e.status.name(),
            e.quota,
            e.not_before,
            e.not_after
        )?;
        outln!("Sealed package for the site: {}", r.package.display())?;
        Ok(())
    })
}
