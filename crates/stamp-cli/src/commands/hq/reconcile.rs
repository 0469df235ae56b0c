//! `stamp hq reconcile`

use std::fs::File;
use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use stamp_hq::reconcile::{Progress, ReconcileOptions, ReconcileReport};

use crate::output::emit;
use crate::Globals;

/// Verify a site's audit bundle and check that the site kept its entitlements.
///
/// First the bundle is verified (docs/formats/audit.md, "What HQ checks"): every part signed by
/// the site identity certificate HQ issued, encrypted to HQ, the signed checkpoint, the
/// consistency proof from the last checkpoint HQ accepted from that site, and the entries
/// hashing to exactly the checkpoint's root. Any failure there REJECTS the bundle with an error
/// naming what failed (truncated, reordered, altered, deleted or duplicated entries, chunks
/// spliced from another bundle or site, replayed or older bundles, a bad proof, a wrong signer,
/// not encrypted to HQ) and HQ records nothing, except equivocation: a checkpoint for a log size
/// HQ has seen with another root is kept beside the first as evidence.
///
/// A bundle that verifies is accepted: HQ's copy of the site's log advances. Its entries are then
/// checked against the entitlements as the log applied them: quota, rate limits (no more than N in
/// any interval of the period's length, across bundles), production window, suspension and
/// revocation, serial ranges, serials and public keys never certified twice, HQ-generated keys used
/// once, every certificate issued by the site's issuing CA with its grant's device profile, every
/// package applied in sequence (`package-skipped` otherwise), and every package HQ sealed for the
/// site applied by `--package-grace` after HQ sealed it (`package-not-applied` otherwise). Each
/// violation is reported with the log entries behind it; devices that break no rule are recorded in
/// HQ's registry of genuine devices (`stamp hq devices`).
///
/// Exit status: 0 when the bundle verified and no rule was broken; 1 when it was rejected or
/// violations were found (the report is still printed, with "ok": false); 2 on a usage error.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The audit bundle a site exported (`stamp site export-audit`).
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
    /// How long after HQ sealed a package for the site (HQ's clock) the reconciled log may still
    /// not have applied it: every package older than that and above the log's last applied one
    /// is reported as `package-not-applied` (a violation). A number with a unit: `s`, `m`, `h`
    /// or `d` (e.g. `36h`, `7d`, `0s`).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = crate::commands::args::parse_duration)]
    package_grace: time::Duration,
    /// SQLite page cache for the reconciliation, in MiB: most of its memory (the rest does not
    /// grow with the bundle); less makes a large bundle slower (more writes), never different.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    cache_mib: u32,
    /// Threads checking certificate signatures ahead of the in-order checks (default: one per
    /// core, at most 8; 0: none). Never changes the result.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

/// Progress on stderr for bundles of at least this many entries.
const PROGRESS_FROM: u64 = 10_000;

/// Shows progress on stderr: a line rewritten in place on a terminal, else a line every 10%.
struct ProgressLine {
    terminal: bool,
    last: Option<Instant>,
    last_tenth: u64,
}

impl ProgressLine {
    fn update(&mut self, p: Progress) {
        if p.entries_total < PROGRESS_FROM {
            return;
        }
        let done = p.entries_done == p.entries_total;
        let mut err = std::io::stderr().lock();
        if self.terminal {
            if done
                || self
                    .last
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(200))
            {
                self.last = Some(Instant::now());
                let _ = write!(
                    err,
                    "\rreconciling: {} of {} entries checked",
                    p.entries_done, p.entries_total
                );
                if done {
                    let _ = writeln!(err);
                }
            }
        } else {
            let tenth = p.entries_done.saturating_mul(10) / p.entries_total.max(1);
            if tenth > self.last_tenth || done {
                self.last_tenth = tenth;
                let _ = writeln!(
                    err,
                    "reconciling: {} of {} entries checked",
                    p.entries_done, p.entries_total
                );
            }
        }
    }
}

/// Runs `stamp hq reconcile`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let pass = crate::commands::keys(g);
    let mut hq = stamp_hq::Hq::open(&a.dir, pass)?;
    let file = File::open(&a.bundle).with_context(|| format!("cannot open {}", a.bundle.display()))?;
    let mut progress = ProgressLine {
        terminal: std::io::stderr().is_terminal(),
        last: None,
        last_tenth: 0,
    };
    let options = ReconcileOptions {
        package_grace: a.package_grace,
        cache_mib: a.cache_mib,
        threads: a.threads,
    };
    let report = hq.reconcile_with_options(
        BufReader::with_capacity(1 << 16, file),
        crate::commands::now(),
        options,
        &mut |p| progress.update(p),
    )?;
    drop(hq);
    emit(g.json, &report, || print_text(&report))?;
    if !report.ok {
        // The report is the output; the exit status says it found violations.
        return Err(crate::output::AlreadyReported(format!(
            "{} policy violations in the bundle (see the report)",
            report.violations.len() as u64 + report.violations_omitted
        ))
        .into());
    }
    Ok(())
}

fn print_text(r: &ReconcileReport) -> std::io::Result<()> {
    outln!(
        "Bundle {} from site {}: entries {} to {} ({} entries)",
        r.bundle_id,
        r.site_id,
        r.first_index,
        (r.first_index + r.entries).saturating_sub(1),
        r.entries
    )?;
    match &r.previous {
        Some(p) => outln!("  extends the log from size {} (root {})", p.size, p.root)?,
        None => outln!("  the site's first bundle")?,
    }
    outln!(
        "  checkpoint accepted: size {}, root {}",
        r.checkpoint.size,
        r.checkpoint.root
    )?;
    outln!(
        "  devices issued {}, recorded as genuine {}; entitlement packages applied {}",
        r.devices_issued,
        r.devices_recorded,
        r.entitlements_applied
    )?;
    if !r.refusals_by_reason.is_empty() {
        let list: Vec<String> = r
            .refusals_by_reason
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        outln!("  refused requests: {}", list.join(", "))?;
    }
    if r.ok {
        outln!("OK: every entry kept the site's entitlements.")?;
        return Ok(());
    }
    let total = r.violations.len() as u64 + r.violations_omitted;
    outln!("VIOLATIONS: {total}")?;
    for v in &r.violations {
        let grant = v
            .entitlement_id
            .as_deref()
            .map(|g| format!(" [{g}]"))
            .unwrap_or_default();
        outln!("  {}{grant}: {}", v.kind, v.detail)?;
        let list: Vec<String> = v.entries.iter().map(u64::to_string).collect();
        let more = v.entry_count.saturating_sub(v.entries.len() as u64);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        outln!("    entries: {}{more}", list.join(", "))?;
    }
    if r.violations_omitted > 0 {
        outln!("  ... and {} more violations not listed", r.violations_omitted)?;
    }
    outln!(
        "The checkpoint was accepted and genuine devices recorded; the violations above need investigating."
    )?;
    Ok(())
}
