//! `stamp hq entitlements`

use std::path::PathBuf;

use stamp_core::SiteId;

use crate::output::emit;
use crate::Globals;

/// List the entitlements HQ has granted, as amended, with their serial ranges.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Only this site's.
    #[arg(long, value_name = "ID")]
    site: Option<SiteId>,
}

/// Runs `stamp hq entitlements`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let store: stamp_hq::HqStore = crate::commands::open_store(&a.dir)?;
    let list = store.entitlements(a.site.as_ref())?;
    emit(g.json, &serde_json::json!({ "entitlements": list }), || {
        if list.is_empty() {
            outln!("No entitlements.")?;
        }
        for e in &list {
            let ranges: Vec<String> = e
                .serial_ranges
                .iter()
                .map(|r| format!("{}..={}", r.first, r.last))
                .collect();
            outln!(
                "{}\tsite {}\t{}\t{}/{}\tquota {}\trate {}\tserials {}\t{} to {}",
                e.entitlement_id,
                e.site_id,
                e.status.name(),
                e.product.oem_id,
                e.product.product_id,
                e.quota,
                crate::output::rates(&e.rate_limits),
                ranges.join(","),
                e.not_before,
                e.not_after
            )?;
        }
        Ok(())
    })
}
