//! `stamp cloud gateway`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use stamp_cloud::gateway::{self, Gateway, ServerIdentity};

use crate::Globals;

/// Run a TLS gateway that requires a device client certificate and admits only genuine devices
/// (the decision of `stamp cloud verify`, per connection). Each device gets one JSON line with
/// the verdict; refused devices are disconnected and logged as possible counterfeits; a device
/// certificate connected twice at once is flagged `concurrent-use`. Logs go to standard error;
/// the first line on standard output gives the address listened on.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The registry (`stamp hq export --format registry`).
    #[arg(long, value_name = "FILE")]
    registry: PathBuf,
    /// Refuse a registry whose OEM root has another SHA-256.
    #[arg(long, value_name = "SHA256")]
    root_fingerprint: Option<String>,
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
}

/// Runs `stamp cloud gateway`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STAMP_LOG").unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let reg = super::cloud_verify::load_registry(&a.registry, a.root_fingerprint.as_deref(), a.min_sequence)?;
    let info = super::cloud_verify::RegistryInfo::of(&reg);
    let identity = match (&a.server_cert, &a.server_key) {
        (Some(c), Some(k)) => ServerIdentity::from_pem(
            &super::read_bounded(c, 1 << 20)?,
            &super::read_bounded(k, 1 << 20)?,
        )?,
        _ => {
            let host = a.listen.rsplit_once(':').map_or("localhost", |(h, _)| h);
            let mut names = vec!["localhost".to_owned()];
            if host != "localhost" && !host.is_empty() {
                names.push(host.trim_start_matches('[').trim_end_matches(']').to_owned());
            }
            let (id, pem) = ServerIdentity::self_signed(names)?;
            if let Some(p) = &a.write_server_cert {
                stamp_store::write_atomic(p, pem.as_bytes(), 0o644)?;
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
        {
            let mut out = std::io::stdout().lock();
            if g.json {
                let v = serde_json::json!({"listening": addr.to_string(), "registry": info});
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "listening on {addr}; registry {} under OEM root {} ({} devices)",
                    info.sequence, info.root_fingerprint, info.devices
                )?;
            }
            out.flush()?;
        }
        gateway::serve(listener, config, Arc::new(Gateway::new(reg))).await?;
        Ok(())
    })
}
