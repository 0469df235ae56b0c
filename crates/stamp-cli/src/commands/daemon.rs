//! What the long-running commands (`stamp site serve`, `stamp cloud gateway`) share: one logging
//! set-up and one stop signal.

use stamp_service::config::LogFormat;

/// The environment variable holding the log filter (tracing-subscriber's `EnvFilter` syntax, e.g.
/// `info`, `warn`, `stamp_service=debug`); default `info`.
pub const LOG_ENV: &str = "STAMP_LOG";

/// `--log-format`: `text` or `json`.
pub fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{s:?} is not a log format: use text or json")),
    }
}

/// `--ops-listen`: an address, or `off` (`None`).
#[derive(Clone, Copy, Debug)]
pub struct OpsListen(pub Option<std::net::SocketAddr>);

/// Parses `--ops-listen` as the configuration's `ops_listen` is parsed.
pub fn parse_ops_listen(s: &str) -> Result<OpsListen, String> {
    stamp_service::config::parse_ops_listen(s).map(OpsListen)
}

/// Logs to standard error, filtered by `STAMP_LOG`: text lines (with colours only when standard
/// error is a terminal) or one JSON object per line. A filter that does not parse is refused.
pub fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&v).map_err(|e| {
            anyhow::anyhow!(
                "{LOG_ENV}={v:?} is not a log filter ({e}); use e.g. info, warn or stamp_service=debug"
            )
        })?,
        _ => tracing_subscriber::EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // A subscriber set already (a second call in one process) stays.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT), and logs which.
pub async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                () = ctrl_c => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        }
        Err(_) => {
            ctrl_c.await;
            "SIGINT"
        }
    };
    tracing::info!(signal, "stop signal received");
}
