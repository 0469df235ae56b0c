//! `stamp device simulate`

use std::path::PathBuf;

use stamp_station::simulate::{self, Protocol, SimKey, SimulateOptions, SimulationReport};

use crate::output::emit;
use crate::Globals;

/// Simulate devices on a production line: each generates its own key pair, makes a CSR, enrolls
/// through the station's mutual-TLS connection to the site service (EST or the JSON API), checks
/// the returned chain up to the OEM root (clientAuth), and stores its stamp in
/// `OUT_DIR/<serial>/`: `device.key` (0600), `device.crt`, `chain.pem`, `stamp.json`. Prints
/// devices provisioned, refusals by reason and latency percentiles.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The site service, `https://HOST:PORT` (a name its certificate was issued for).
    #[arg(long, value_name = "URL")]
    server: String,
    /// Station directory (`stamp site add-station -o DIR`): station.key, station.crt, ca.pem.
    #[arg(long, value_name = "DIR")]
    station_dir: PathBuf,
    /// Number of devices.
    #[arg(long, value_name = "N", default_value = "100")]
    count: u64,
    /// Devices enrolling at the same time (one connection each).
    #[arg(long, value_name = "C", default_value = "16")]
    concurrency: usize,
    /// Device key type.
    #[arg(long, value_enum, value_name = "TYPE", default_value = "p256")]
    key_type: KeyArg,
    /// Enrollment protocol.
    #[arg(long, value_enum, default_value = "est")]
    protocol: ProtocolArg,
    /// Entitlement to enroll under (the EST label). Default: the service's default entitlement.
    #[arg(long, value_name = "ID")]
    entitlement: Option<String>,
    /// Where the devices store their stamps (created if missing; an existing one must be empty).
    #[arg(short = 'o', long = "out", value_name = "OUT_DIR")]
    out: PathBuf,
    /// Write into OUT_DIR even if it is not empty (without --force, a non-empty OUT_DIR is
    /// refused before anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

/// Device key types.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KeyArg {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048.
    Rsa2048,
}

/// Protocols.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ProtocolArg {
    /// EST (RFC 7030) simpleenroll.
    Est,
    /// The JSON API.
    Json,
}

/// Runs a simulation with a progress bar (hidden when `quiet`); its figures rounded for output.
pub fn run_with_progress(opts: &SimulateOptions, quiet: bool) -> anyhow::Result<SimulationReport> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(opts.count)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} devices {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let tick = || bar.inc(1);
    let r = simulate::simulate(opts, &tick);
    bar.finish_and_clear();
    Ok(crate::output::round_simulation(r?))
}

/// Prints a report's summary lines.
pub fn print_summary(r: &SimulationReport) -> std::io::Result<()> {
    outln!(
        "Provisioned {} of {} devices in {:.2} s ({:.0} devices/s) over {:?}",
        r.provisioned,
        r.requested,
        r.seconds,
        r.devices_per_second,
        r.protocol
    )?;
    for (code, n) in &r.refused {
        outln!("  refused ({code}): {n}")?;
    }
    for (kind, n) in &r.failed {
        outln!("  failed ({kind}): {n}")?;
    }
    outln!(
        "  latency per device: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.latency_ms.p50,
        r.latency_ms.p90,
        r.latency_ms.p99,
        r.latency_ms.max
    )?;
    Ok(())
}

/// Runs `stamp device simulate`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output_dir(&a.out, a.force)?;
    let opts = SimulateOptions {
        server: a.server,
        station_dir: a.station_dir,
        count: a.count,
        concurrency: a.concurrency,
        key: match a.key_type {
            KeyArg::P256 => SimKey::P256,
            KeyArg::P384 => SimKey::P384,
            KeyArg::Ed25519 => SimKey::Ed25519,
            KeyArg::Rsa2048 => SimKey::Rsa2048,
        },
        protocol: match a.protocol {
            ProtocolArg::Est => Protocol::Est,
            ProtocolArg::Json => Protocol::Json,
        },
        entitlement: a.entitlement,
        out_dir: a.out,
    };
    let r = run_with_progress(&opts, g.json)?;
    emit(g.json, &r, || {
        print_summary(&r)?;
        outln!("Stamps in {}", r.out_dir.display())?;
        Ok(())
    })?;
    if r.provisioned < r.requested {
        return Err(crate::output::AlreadyReported(format!(
            "{} of {} devices were not provisioned (see the summary)",
            r.requested - r.provisioned,
            r.requested
        ))
        .into());
    }
    Ok(())
}
