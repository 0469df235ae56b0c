//! `stamp cloud gateway`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use stamp_cloud::gateway::{self, Gateway, ServerIdentity};
use stamp_cloud::state::GatewayState;
use stamp_service::config::LogFormat;

use crate::commands::daemon;
use crate::Globals;

/// How long open device connections get to end after SIGTERM or Ctrl-C.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Run a TLS gateway that requires a device client certificate and admits only genuine devices
/// (the decision of `stamp cloud verify`, per connection). Each device gets one JSON line with
/// the verdict; refused devices are disconnected and logged as possible counterfeits; a device
/// serial connected twice at once is flagged `concurrent-use`. A provisional serial is bound to
/// the first public key seen with it (in the state file); a certificate with that serial and
/// another key is refused as `clone`. The state file also keeps the highest registry sequence
/// accepted, so a restart on an older registry file is refused. Logs go to standard error
/// (filter: STAMP_LOG); the first line on standard output gives the addresses listened on. An
/// operations listener (`--ops-listen`, default 127.0.0.1:8884) serves `/healthz` and `/metrics`
/// over plain HTTP. SIGTERM or Ctrl-C stops accepting, gives open connections up to 10 seconds
/// to end, and exits 0. When the registry file changes, the gateway verifies it and, if it is
/// newer and under the same OEM root, judges later connections with it (revocations take effect
/// without a restart); a file it refuses is logged and the registry in use stays.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The registry (`stamp hq export --format registry`).
    #[arg(long, value_name = "FILE")]
    registry: PathBuf,
    /// The OEM root's SHA-256 (hex, colons allowed): a registry under any other root is
    /// refused. Required unless --trust-registry-root.
    #[arg(long, value_name = "SHA256")]
    root_fingerprint: Option<String>,
    /// Trust whatever OEM root the registry file carries, unpinned (a rogue OEM's registry would
    /// pass): for experiments only; prints a warning.
    #[arg(long, conflicts_with = "root_fingerprint")]
    trust_registry_root: bool,
    /// The gateway's state file (SQLite; created if missing): the highest registry sequence
    /// accepted and the provisional serials' keys. Default: gateway-state.db beside the
    /// registry file. Gateways sharing it share one key per provisional serial.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Refuse a registry older than this sequence.
    #[arg(long, value_name = "N", default_value = "0")]
    min_sequence: u64,
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8883")]
    listen: String,
    /// The gateway's certificate chain (PEM); without it a self-signed certificate is made.
    #[arg(long, value_name = "FILE", requires = "server_key")]
    server_cert: Option<PathBuf>,
    /// The gateway's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "server_cert")]
    server_key: Option<PathBuf>,
    /// Where to write the self-signed certificate, for devices' --ca.
    #[arg(long, value_name = "FILE", conflicts_with = "server_cert")]
    write_server_cert: Option<PathBuf>,
    /// Replace --write-server-cert FILE if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
    /// How often to look for a new registry in the file, in seconds (0: never).
    #[arg(long, value_name = "SECONDS", default_value = "10")]
    reload_secs: u64,
    /// Log format on standard error, `text` or `json`; the level comes from STAMP_LOG (default info).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = daemon::parse_log_format)]
    log_format: LogFormat,
    /// Address of the operations listener (`/healthz`, `/metrics` over plain HTTP, no client
    /// certificate), or `off` (port 0: any free port).
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:8884",
          value_parser = daemon::parse_ops_listen)]
    ops_listen: daemon::OpsListen,
}

/// The gateway as the operations listener reports it.
struct Probe(Arc<Gateway>);

impl stamp_service::ops::Probe for Probe {
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    fn metrics(&self) -> String {
        self.0.render_metrics()
    }
}

/// Runs `stamp cloud gateway`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    daemon::init_logging(a.log_format)?;
    if let Some(p) = &a.write_server_cert {
        crate::commands::check_output(p, a.force)?;
    }
    let pin = crate::commands::cloud::verify::root_pin(a.root_fingerprint.as_deref(), a.trust_registry_root)?;
    let reg = crate::commands::cloud::verify::load_registry(&a.registry, pin, a.min_sequence)?;
    let info = crate::commands::cloud::verify::RegistryInfo::of(&reg);
    let state_path = a.state.clone().unwrap_or_else(|| default_state(&a.registry));
    let state = GatewayState::open(&state_path)
        .with_context(|| format!("cannot open the gateway state file {}", state_path.display()))?;
    let gw = Arc::new(
        Gateway::new(reg, state)
            .with_context(|| format!("registry {} refused by the gateway's state", a.registry.display()))?,
    );
    let identity = match (&a.server_cert, &a.server_key) {
        (Some(c), Some(k)) => ServerIdentity::from_pem(
            &crate::commands::read_bounded(c, 1 << 20)?,
            &crate::commands::read_bounded(k, 1 << 20)?,
        )?,
        _ => {
            let host = a.listen.rsplit_once(':').map_or("localhost", |(h, _)| h);
            let mut names = vec!["localhost".to_owned()];
            if host != "localhost" && !host.is_empty() {
                names.push(host.trim_start_matches('[').trim_end_matches(']').to_owned());
            }
            let (id, pem) = ServerIdentity::self_signed(names)?;
            if let Some(p) = &a.write_server_cert {
                crate::commands::write_output(p, pem.as_bytes(), 0o644, a.force)?;
            }
            id
        }
    };
    let config = gateway::tls_config(identity)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ops = match a.ops_listen.0 {
            Some(o) => {
                let l = tokio::net::TcpListener::bind(o)
                    .await
                    .with_context(|| format!("cannot listen on {o} (--ops-listen)"))?;
                let bound = l.local_addr()?;
                tokio::spawn(stamp_service::ops::serve(l, Arc::new(Probe(gw.clone())), stop_rx));
                Some(bound)
            }
            None => None,
        };
        tracing::info!(
            %addr,
            ops = ops.map(|o| o.to_string()),
            sequence = info.sequence,
            devices = info.devices,
            "cloud gateway listening"
        );
        {
            let mut out = crate::output::stdout();
            if g.json {
                let v = serde_json::json!({
                    "listening": addr.to_string(),
                    "ops": ops.map(|o| o.to_string()),
                    "registry": info,
                });
                writeln!(out, "{v}")?;
            } else {
                let ops = ops.map_or_else(|| "off".to_owned(), |o| format!("http://{o}"));
                writeln!(
                    out,
                    "listening on {addr}; registry {} under OEM root {} ({}); health and metrics on {ops}",
                    info.sequence,
                    info.root_fingerprint,
                    crate::output::count(info.devices as u64, "device", "devices")
                )?;
            }
            out.flush()?;
        }
        if a.reload_secs > 0 {
            tokio::spawn(watch_registry(gw.clone(), a.registry.clone(), a.reload_secs));
        }
        gateway::serve_until(listener, config, gw.clone(), daemon::stop_signal(), STOP_GRACE).await?;
        let _ = stop_tx.send(true);
        tracing::info!(
            still_open = gw.metrics().connections_open(),
            "cloud gateway stopped"
        );
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// `gateway-state.db` in the registry file's directory.
fn default_state(registry: &Path) -> PathBuf {
    registry
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("gateway-state.db")
}

/// The file's identity as far as a reload cares: modification time and length.
fn stamp_of(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Polls the registry file; verifies a changed one under the OEM root in use and above the
/// sequence in use, and swaps it in.
async fn watch_registry(gw: Arc<Gateway>, path: PathBuf, secs: u64) {
    let mut seen = stamp_of(&path);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
        let now = stamp_of(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let current = gw.registry();
        let pin = hex::encode(current.root_sha256());
        let loaded = crate::commands::cloud::verify::load_registry(&path, Some(&pin), current.sequence() + 1);
        match loaded.map_err(|e| format!("{e:#}")).and_then(|r| {
            let (sequence, devices) = (r.sequence(), r.device_count());
            gw.replace_registry(r)
                .map(|()| (sequence, devices))
                .map_err(|e| e.to_string())
        }) {
            Ok((sequence, devices)) => tracing::info!(sequence, devices, "registry reloaded"),
            Err(e) => {
                gw.metrics().registry_reload(false);
                tracing::warn!(
                    error = %e,
                    sequence = current.sequence(),
                    "registry file changed but was refused; the registry in use stays"
                );
            }
        }
    }
}
