//! `stamp site hand-out`

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use stamp_site::engine::{Engine, IssueError};

use crate::output::emit;
use crate::Globals;

/// Hand out HQ-generated device keys (for devices that cannot make their own), each at most once,
/// with a certificate for it. For each device `OUT_DIR/<serial>.key.pem` (the private key, PKCS#8,
/// mode 0600: program it into the device and delete it), `<serial>.crt.pem`, `<serial>.chain.pem`
/// and `<serial>.stamp.json` (serial, device data and the per-device secrets in hex). Every hand-out
/// is recorded durably in the audit log first.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The entitlement holding HQ-generated keys.
    #[arg(long, value_name = "ID")]
    entitlement: String,
    /// How many keys to hand out.
    #[arg(long, value_name = "N", default_value = "1")]
    count: u64,
    /// Station name recorded in the audit log.
    #[arg(long, value_name = "NAME", default_value = "batch")]
    station: String,
    /// Directory to write keys, certificates and stamps to (created if missing, mode 0700; an
    /// existing one must be empty).
    #[arg(short = 'o', long = "out", value_name = "OUT_DIR")]
    out: PathBuf,
    /// Write into OUT_DIR even if it is not empty, replacing files of the same name (without
    /// --force, a non-empty OUT_DIR is refused before anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

#[derive(Serialize)]
struct Handed {
    device_serial: u64,
    key_index: u64,
    key: PathBuf,
    certificate: PathBuf,
    stamp: PathBuf,
}

#[derive(Serialize)]
struct Report {
    ok: bool,
    entitlement: String,
    requested: u64,
    handed_out: Vec<Handed>,
    refused: Option<String>,
}

/// Runs `stamp site hand-out`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output_dir(&a.out, a.force)?;
    let pass = crate::commands::keys(g);
    let site = stamp_site::Site::open(&a.dir, pass)?;
    super::require_entitlement(&site, &a.entitlement, &a.dir)?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let engine = Engine::start(&site)?;
    let chain_pem: String = engine
        .chain()
        .iter()
        .map(|c| stamp_core::cert::to_pem(c))
        .collect();
    let mut handed = Vec::new();
    let mut refused = None;
    for _ in 0..a.count {
        match engine.hand_out(&a.entitlement, &a.station, crate::commands::now()) {
            Ok((stamp, key)) => {
                let base = a.out.join(stamp.device_serial.to_string());
                let key_path = base.with_extension("key.pem");
                let key_pem = zeroize::Zeroizing::new(stamp_core::ceremony::pem("PRIVATE KEY", &key.pkcs8));
                let write = crate::commands::write_output;
                write(&key_path, key_pem.as_bytes(), 0o600, a.force)?;
                let cert = base.with_extension("crt.pem");
                let pem = stamp_core::cert::to_pem(&stamp.certificate);
                write(&cert, pem.as_bytes(), 0o644, a.force)?;
                write(
                    &base.with_extension("chain.pem"),
                    chain_pem.as_bytes(),
                    0o644,
                    a.force,
                )?;
                let secrets: BTreeMap<&String, String> = key
                    .secrets
                    .iter()
                    .map(|(n, v)| (n, hex::encode(v.as_slice())))
                    .collect();
                let stamp_json =
                    serde_json::json!({ "stamp": &stamp, "hq_key_index": key.index, "secrets": secrets });
                let stamp_path = base.with_extension("stamp.json");
                write(
                    &stamp_path,
                    &serde_json::to_vec_pretty(&stamp_json)?,
                    0o600,
                    a.force,
                )?;
                handed.push(Handed {
                    device_serial: stamp.device_serial,
                    key_index: key.index,
                    key: key_path,
                    certificate: cert,
                    stamp: stamp_path,
                });
            }
            Err(IssueError::Refused(r)) => {
                refused = Some(r.code().to_owned());
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    engine.shutdown();
    let report = Report {
        ok: refused.is_none(),
        entitlement: a.entitlement,
        requested: a.count,
        handed_out: handed,
        refused,
    };
    emit(g.json, &report, || {
        outln!(
            "Handed out {} of {} keys under {}",
            report.handed_out.len(),
            report.requested,
            report.entitlement
        )?;
        if let Some(r) = &report.refused {
            outln!("  then refused: {r}")?;
        }
        outln!(
            "Keys, certificates and stamps in {} (delete the keys once programmed)",
            a.out.display()
        )?;
        Ok(())
    })?;
    if let Some(r) = report.refused {
        return Err(crate::output::AlreadyReported(format!("refused: {r}")).into());
    }
    Ok(())
}
