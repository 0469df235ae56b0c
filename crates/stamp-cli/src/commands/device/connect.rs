//! `stamp device connect`

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use stamp_cloud::client::{self, DeviceCredentials};

use crate::output::{emit, AlreadyReported};
use crate::Globals;

/// Connect to a stamp gateway as a device, with its saved stamp: the device certificate and
/// chain, and its private key. Prints the gateway's verdict; exit status 0 when admitted, 1 when
/// refused.
///
/// Layouts of DIR: `cert.pem` (+ `chain.pem`) and `key.pem`; what `stamp device simulate` (and
/// the demo) saves per device: `device.crt` + `chain.pem` and `device.key`; or, with --name NAME,
/// what `stamp site issue` and `stamp site hand-out` write: `NAME.crt.pem` + `NAME.chain.pem`,
/// and the key in `NAME.key.pem`. --key-file names the key file in any layout.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory holding the device's stamp.
    #[arg(long = "stamp", value_name = "DIR")]
    dir: PathBuf,
    /// The device's file name prefix in DIR (NAME.crt.pem, NAME.chain.pem).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The device's private key (PEM), if not in DIR.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// The gateway (`stamp cloud gateway`), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    gateway: String,
    /// Certificates that identify the gateway (PEM; `stamp cloud gateway --write-server-cert`).
    #[arg(long, value_name = "FILE")]
    ca_file: PathBuf,
    /// Once admitted, stay connected this many seconds.
    #[arg(long, value_name = "SECONDS", default_value = "0")]
    hold: u64,
}

const MAX_PEM: usize = 256 * 1024;

fn read_opt(p: &Path) -> anyhow::Result<Vec<u8>> {
    if p.is_file() {
        crate::commands::read_bounded(p, MAX_PEM)
    } else {
        Ok(Vec::new())
    }
}

/// Runs `stamp device connect`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let (cert, chain, key) = match &a.name {
        Some(n) => (
            a.dir.join(format!("{n}.crt.pem")),
            a.dir.join(format!("{n}.chain.pem")),
            a.dir.join(format!("{n}.key.pem")),
        ),
        None if !a.dir.join("cert.pem").exists() && a.dir.join("device.crt").is_file() => (
            a.dir.join("device.crt"),
            a.dir.join("chain.pem"),
            a.dir.join("device.key"),
        ),
        None => (
            a.dir.join("cert.pem"),
            a.dir.join("chain.pem"),
            a.dir.join("key.pem"),
        ),
    };
    let key = a.key_file.clone().unwrap_or(key);
    if !cert.is_file() {
        bail!("no device certificate at {}", cert.display());
    }
    let mut chain_pem = crate::commands::read_bounded(&cert, MAX_PEM)?;
    chain_pem.push(b'\n');
    chain_pem.extend(read_opt(&chain)?);
    let key_pem = zeroize::Zeroizing::new(crate::commands::read_bounded(&key, MAX_PEM)?);
    let ca = crate::commands::read_bounded(&a.ca_file, MAX_PEM)?;
    let reply = client::connect(
        &a.gateway,
        &ca,
        &DeviceCredentials {
            chain_pem: &chain_pem,
            key_pem: &key_pem,
        },
        Duration::from_secs(a.hold),
    )?;
    emit(g.json, &reply, || {
        if reply.admitted {
            outln!(
                "ADMITTED ({}): serial {} of site {}{}",
                reply.standing,
                reply.device_serial.unwrap_or_default(),
                reply.site_id.as_deref().unwrap_or("?"),
                if reply.flags.is_empty() {
                    String::new()
                } else {
                    format!(" [flags: {}]", reply.flags.join(", "))
                }
            )?;
        } else {
            outln!(
                "REFUSED [{}]: {}",
                reply.reason.as_deref().unwrap_or("?"),
                reply.detail
            )?;
        }
        Ok(())
    })?;
    if reply.admitted {
        Ok(())
    } else {
        Err(AlreadyReported(format!("refused: {}", reply.reason.unwrap_or_default())).into())
    }
}
