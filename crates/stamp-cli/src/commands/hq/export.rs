//! `stamp hq export`

use std::io::Write;
use std::path::PathBuf;

use crate::output::emit;
use crate::Globals;

/// What to export.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    /// The signed stamp registry (OEM root, site CAs, entitlement ranges, genuine devices,
    /// revocations) for `stamp cloud verify` and `stamp cloud gateway`.
    Registry,
    /// AWS IoT bulk registration input: one JSON object per line per registered device.
    AwsBulk,
    /// AWS IoT just-in-time registration material: the OEM root and site issuing CAs (JSON).
    AwsJitr,
    /// Azure IoT DPS enrollment groups, one per site issuing CA (JSON).
    AzureDps,
}

/// Export what the cloud needs from HQ (formats: docs/cloud.md). The registry is signed by the HQ
/// authority signing key and carries a sequence number one higher than the previous export; the
/// other formats are read from HQ's registry of reconciled devices and its enrolled sites.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// What to export.
    #[arg(long, value_enum)]
    format: Format,
    /// Where to write it.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
    /// Registry: days after issue that a device HQ has not reconciled yet counts as provisional
    /// (then `not-reconciled`); 0: no limit. Export and reconcile more often than this.
    #[arg(long, value_name = "DAYS", default_value = "30",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(stamp_core::registry::MAX_PROVISIONAL_DAYS)))]
    provisional_days: u32,
}

#[derive(serde::Serialize)]
struct Written {
    format: &'static str,
    out: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registry: Option<stamp_hq::cloud::RegistryReport>,
}

/// Runs `stamp hq export`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let written = match a.format {
        Format::Registry => {
            let mut hq = stamp_hq::Hq::open(&a.dir, crate::commands::keys(g))?;
            let (bytes, report) = hq.export_registry(a.provisional_days, crate::commands::now())?;
            crate::commands::write_output(&a.out, &bytes, 0o644, a.force)?;
            Written {
                format: "registry",
                out: a.out,
                lines: None,
                registry: Some(report),
            }
        }
        f => {
            let store: stamp_hq::HqStore = crate::commands::open_store(&a.dir)?;
            let (name, data, lines) = match f {
                Format::AwsBulk => {
                    let mut buf = Vec::new();
                    let n = store.export_aws_bulk(&mut buf)?;
                    ("aws-bulk", buf, Some(n))
                }
                Format::AwsJitr => (
                    "aws-jitr",
                    json(&crate::commands::cloud::formats::aws_jitr(&store)?)?,
                    None,
                ),
                _ => (
                    "azure-dps",
                    json(&crate::commands::cloud::formats::azure_dps(&store)?)?,
                    None,
                ),
            };
            crate::commands::write_output(&a.out, &data, 0o644, a.force)?;
            Written {
                format: name,
                out: a.out,
                lines,
                registry: None,
            }
        }
    };
    emit(g.json, &written, || match (&written.registry, written.lines) {
        (Some(r), _) => {
            outln!(
                "Registry {} written to {} ({}): {}, {}, {}, {}",
                r.sequence,
                written.out.display(),
                crate::output::count(r.bytes as u64, "byte", "bytes"),
                crate::output::count(r.sites as u64, "site", "sites"),
                crate::output::count(r.entitlements as u64, "entitlement", "entitlements"),
                crate::output::count(r.devices as u64, "device", "devices"),
                crate::output::count(r.revocations as u64, "revocation", "revocations")
            )?;
            outln!(
                "OEM root fingerprint (pin it in verifiers): {}",
                r.root_fingerprint
            )
        }
        (None, Some(n)) => outln!("{} devices written to {}", n, written.out.display()),
        _ => outln!("{} material written to {}", written.format, written.out.display()),
    })
}

fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(v)?;
    out.write_all(b"\n")?;
    Ok(out)
}
