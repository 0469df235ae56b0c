//! `stamp site status`

use std::path::PathBuf;

use serde::Serialize;
use stamp_site::entitlements::GrantStatus;

use crate::output::emit;
use crate::Globals;

/// Show the site's entitlements: status, quota used and remaining, rate limits, windows.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Serialize)]
struct Status {
    site_id: String,
    installed: bool,
    last_sequence: u64,
    entitlements: Vec<GrantStatus>,
}

/// Runs `stamp site status`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let store: stamp_site::SiteStore = crate::commands::open_store(&a.dir)?;
    let s = Status {
        site_id: store.site_id()?.to_string(),
        installed: store.installed()?,
        last_sequence: store.last_sequence()?,
        entitlements: stamp_site::entitlements::grant_statuses(&store, crate::commands::now())?,
    };
    emit(g.json, &s, || {
        outln!(
            "Site {} ({})",
            s.site_id,
            if s.installed {
                "credentials installed"
            } else {
                "not yet installed"
            }
        )?;
        if s.entitlements.is_empty() {
            outln!("No entitlements.")?;
        }
        for e in &s.entitlements {
            outln!(
                "{}\t{}\t{}/{}\tissued {} of {} ({} left)\trate {}\t{} to {}{}",
                e.entitlement_id,
                e.status.name(),
                e.oem_id,
                e.product_id,
                e.issued,
                e.quota,
                e.remaining,
                crate::output::rates(&e.rate_limits),
                e.not_before,
                e.not_after,
                if e.in_window { "" } else { " (outside window)" }
            )?;
            for f in &e.firmware {
                outln!(
                    "  firmware {} ({}, key {}, sha256 {})",
                    f.version,
                    f.format,
                    f.key,
                    f.sha256
                )?;
            }
            if e.all_devices_revoked {
                outln!("  every device revoked by HQ (see stamp site crl)")?;
            } else if !e.revoked_devices.is_empty() {
                outln!(
                    "  {} device(s) revoked by HQ (see stamp site crl)",
                    e.revoked_devices.len()
                )?;
            }
        }
        Ok(())
    })
}
