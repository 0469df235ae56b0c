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
/// the site's audit log, and a certificate is returned only after its entry is on disk. Stops
/// gracefully on SIGTERM or Ctrl-C. Entitlements imported while it runs take effect within seconds.
/// See docs/service.md.
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
    /// Replace --write-cert FILE if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
    /// Print the default configuration, every option commented, and exit.
    #[arg(long)]
    print_config: bool,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                () = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => ctrl_c.await,
    }
    tracing::info!("stop signal received");
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
    config.check()?;
    if let Some(p) = &a.write_cert {
        crate::commands::check_output(p, a.force)?;
    }
    init_logging(config.log_format);
    let dir = a.dir.context("--dir is required")?;
    let pass = crate::commands::keys(g);
    let site = stamp_site::Site::open(&dir, pass)?;
    if let Some(id) = config.default_entitlement() {
        super::require_entitlement(&site, id, &dir)?;
    }
    let names = config.server_names.clone();
    let server = Server::new(site, config)?;
    let addr = server.local_addr();
    if let Some(path) = &a.write_cert {
        let pem = stamp_core::cert::to_pem(server.certificate());
        crate::commands::write_output(path, pem.as_bytes(), 0o644, a.force)?;
    }
    let url = format!("https://{addr}");
    {
        let mut out = crate::output::stdout();
        if g.json {
            let v = serde_json::json!({ "listening": addr.to_string(), "url": url, "server_names": names });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "Site service listening on {url} (certificate for {}); stop with Ctrl-C or SIGTERM",
                names.join(", ")
            )?;
        }
        out.flush()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("stamp-service")
        .enable_all()
        .build()?;
    let result = runtime.block_on(server.run(stop_signal()));
    // The engine has committed every queued entry; nothing left to wait for.
    runtime.shutdown_background();
    Ok(result?)
}
