//! `stamp hq devices`

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use stamp_core::SiteId;
use stamp_hq::reconcile::DeviceRecord;

use crate::Globals;

/// List HQ's registry of genuine devices: every device certificate a reconciled audit bundle
/// recorded and that broke no rule (see `stamp hq reconcile`). Rows are streamed, so the list may
/// be as long as the registry.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Only the devices of this site.
    #[arg(long, value_name = "ID")]
    site: Option<SiteId>,
    /// Include each device certificate (PEM).
    #[arg(long)]
    certificates: bool,
}

#[derive(serde::Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    device: &'a DeviceRecord,
    issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_pem: Option<String>,
}

/// Runs `stamp hq devices`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let store: stamp_hq::HqStore = crate::commands::open_store(&a.dir)?;
    if let Some(site) = &a.site {
        if !store.site_enrolled(site)? {
            return Err(stamp_hq::HqError::UnknownSite(site.clone()).into());
        }
    }
    let json = g.json;
    let mut out = BufWriter::new(crate::output::stdout());
    let mut count = 0u64;
    if json {
        write!(out, "{{\"devices\": [")?;
    }
    store.for_each_device(a.site.as_ref(), |d| {
        let io = |e: std::io::Error| stamp_hq::HqError::Io {
            path: "<stdout>".into(),
            source: e,
        };
        if json {
            let row = Row {
                device: &d,
                issued_at: crate::output::timestamp_ms(d.issued_at_ms),
                certificate_pem: a.certificates.then(|| stamp_core::cert::to_pem(&d.certificate)),
            };
            let sep = if count == 0 { "\n  " } else { ",\n  " };
            let text = serde_json::to_string(&row)?;
            write!(out, "{sep}{text}").map_err(io)?;
        } else {
            writeln!(
                out,
                "{}\t{}\tserial {}\t{}\tcert {}\tentry {}{}",
                d.site_id,
                d.entitlement_id,
                d.device_serial,
                crate::output::timestamp_ms(d.issued_at_ms),
                d.certificate_sha256,
                d.log_index,
                if d.superseded { "\tsuperseded" } else { "" }
            )
            .map_err(io)?;
            if a.certificates {
                write!(out, "{}", stamp_core::cert::to_pem(&d.certificate)).map_err(io)?;
            }
        }
        count += 1;
        Ok(())
    })?;
    if json {
        writeln!(out, "\n], \"count\": {count}}}")?;
    } else if count == 0 {
        writeln!(
            out,
            "No genuine devices recorded yet (reconcile audit bundles with `stamp hq reconcile`)."
        )?;
    }
    out.flush()?;
    Ok(())
}
