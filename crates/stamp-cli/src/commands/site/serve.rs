//! `stamp site serve`

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use stamp_service::config::{LogFormat, DEFAULT_CONFIG, MAX_CONFIG};
use stamp_service::{Config, Server};

use crate::Globals;

/// Run the site service: line stations provision devices over mutual TLS, with a JSON API
/// (`/api/v1/...`) and EST (`/.well-known/est/...`), plus `/healthz` and `/metrics`. Every station
/// must present its station certificate (`stamp site add-station`); every outcome is recorded in
/// the site's audit log, and a certificate is returned only after its entry is on disk. An
/// operations listener (`--ops-listen`, default 127.0.0.1:8444) serves `/healthz` and `/metrics`
/// over plain HTTP for load balancers and Prometheus. Logs go to standard error (filter:
/// STAMP_LOG). Stops gracefully on SIGTERM or Ctrl-C. Entitlements imported while it runs take
/// effect within seconds. See docs/service.md.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR", required_unless_present = "print_config")]
    dir: Option<PathBuf>,
    /// Address to listen on (overrides the configuration's `listen`; port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Configuration file (TOML; `--print-config` shows every option).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Entitlement for EST requests without a label (overrides the configuration); the site must
    /// have imported it (else `unknown-entitlement`, before the service starts).
    #[arg(long, value_name = "ID")]
    default_entitlement: Option<String>,
    /// Write the service's TLS certificate (PEM, issued at this start for a fresh key) to FILE
    /// before serving, e.g. to inspect or lint it.
    #[arg(long, value_name = "FILE")]
    write_cert: Option<PathBuf>,
    /// Log format on standard error, `text` or `json` (overrides the configuration's
    /// `log_format`); the level comes from STAMP_LOG (default info).
    #[arg(long, value_name = "FORMAT", value_parser = crate::commands::daemon::parse_log_format)]
    log_format: Option<LogFormat>,
    /// Address of the operations listener (`/healthz`, `/metrics` over plain HTTP, no client
    /// certificate), or `off` (overrides the configuration's `ops_listen`; port 0: any free port).
    #[arg(long, value_name = "ADDR|off")]
    ops_listen: Option<String>,
    /// Replace --write-cert FILE if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
    /// Print the default configuration, every option commented, and exit.
    #[arg(long)]
    print_config: bool,
}

/// Runs `stamp site serve`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    if a.print_config {
        out!("{DEFAULT_CONFIG}")?;
        return Ok(());
    }
    let mut config = match &a.config {
        Some(path) => {
            let bytes = crate::commands::read_bounded(path, MAX_CONFIG)?;
            let text =
                String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
            Config::parse(&text).with_context(|| format!("configuration {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(l) = a.listen {
        config.listen = l;
    }
    if let Some(e) = a.default_entitlement {
        config.default_entitlement = e;
    }
    if let Some(f) = a.log_format {
        config.log_format = f;
    }
    if let Some(o) = a.ops_listen {
        config.ops_listen = o;
    }
    config.check()?;
    if let Some(p) = &a.write_cert {
        crate::commands::check_output(p, a.force)?;
    }
    crate::commands::daemon::init_logging(config.log_format)?;
    let dir = a.dir.context("--dir is required")?;
    let pass = crate::commands::keys(g);
    let site = stamp_site::Site::open(&dir, pass)?;
    if let Some(id) = config.default_entitlement() {
        super::require_entitlement(&site, id, &dir)?;
    }
    let names = config.server_names.clone();
    let server = Server::new(site, config)?;
    let addr = server.local_addr();
    let ops = server.ops_addr();
    if let Some(path) = &a.write_cert {
        let pem = stamp_core::cert::to_pem(server.certificate());
        crate::commands::write_output(path, pem.as_bytes(), 0o644, a.force)?;
    }
    let url = format!("https://{addr}");
    {
        let mut out = crate::output::stdout();
        if g.json {
            let v = serde_json::json!({
                "listening": addr.to_string(),
                "url": url,
                "server_names": names,
                "ops": ops.map(|a| a.to_string()),
            });
            writeln!(out, "{v}")?;
        } else {
            let ops = ops.map_or_else(|| "off".to_owned(), |a| format!("http://{a}"));
            writeln!(
                out,
                "Site service listening on {url} (certificate for {}); health and metrics on {ops}; stop with Ctrl-C or SIGTERM",
                names.join(", ")
            )?;
        }
        out.flush()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("stamp-service")
        .enable_all()
        .build()?;
    let result = runtime.block_on(server.run(crate::commands::daemon::stop_signal()));
    // The engine has committed every queued entry; nothing left to wait for.
    runtime.shutdown_background();
    Ok(result?)
}
