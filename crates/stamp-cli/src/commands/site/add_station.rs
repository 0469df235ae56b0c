//! `stamp site add-station`

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use stamp_station::client::{STATION_CA, STATION_CERT, STATION_KEY};

use crate::output::emit;
use crate::Globals;

/// Add a line station: generate its TLS key, issue its station certificate from the site issuing
/// CA, record it at the site, and write what the station needs to OUT_DIR: `station.key` (its
/// private key, PKCS#8 PEM, mode 0600), `station.crt` (its certificate) and `ca.pem` (the OEM root,
/// which the station trusts for the site service's certificate).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Station name (its certificate's CN; recorded in the audit log with every request):
    /// 1-64 characters of a-z, 0-9, '-' and '.'.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Directory to write the station's files to (created, mode 0700).
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    out: PathBuf,
    /// Replace the station files in DIR if they exist (without --force, an existing one is
    /// refused before anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

#[derive(Serialize)]
struct Report {
    name: String,
    certificate_sha256: String,
    key: PathBuf,
    certificate: PathBuf,
    ca: PathBuf,
}

/// Writes a station's files into `out` (replacing them only with `force`).
pub fn write_station_files(
    out: &std::path::Path,
    creds: &stamp_site::stations::StationCredentials,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let key = out.join(STATION_KEY);
    let cert = out.join(STATION_CERT);
    let ca = out.join(STATION_CA);
    let key_pem = zeroize::Zeroizing::new(stamp_core::ceremony::pem("PRIVATE KEY", &creds.key_pkcs8));
    let write = crate::commands::write_output;
    write(&key, key_pem.as_bytes(), 0o600, force)?;
    write(
        &cert,
        stamp_core::cert::to_pem(&creds.certificate).as_bytes(),
        0o644,
        force,
    )?;
    write(
        &ca,
        stamp_core::cert::to_pem(&creds.root).as_bytes(),
        0o644,
        force,
    )?;
    Ok((key, cert, ca))
}

/// Creates the station's output directory (0700) and checks it holds none of the station's files
/// (unless `force`).
pub fn prepare_out_dir(out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    for name in [STATION_KEY, STATION_CERT, STATION_CA] {
        crate::commands::check_output(&out.join(name), force)?;
    }
    Ok(())
}

/// Runs `stamp site add-station`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    stamp_core::profile::check_station_name(&a.name)?;
    prepare_out_dir(&a.out, a.force)?;
    let pass = crate::commands::keys(g);
    let mut site = stamp_site::Site::open(&a.dir, pass)?;
    let creds = site.add_station(&a.name, crate::commands::now())?;
    let (key, certificate, ca) = write_station_files(&a.out, &creds, a.force)?;
    let r = Report {
        name: creds.name.clone(),
        certificate_sha256: hex::encode(creds.cert_sha256),
        key,
        certificate,
        ca,
    };
    emit(g.json, &r, || {
        outln!(
            "Station {} added (certificate SHA-256 {})",
            r.name,
            r.certificate_sha256
        )?;
        outln!("  key         {} (give it to the station only)", r.key.display())?;
        outln!("  certificate {}", r.certificate.display())?;
        outln!("  trusts      {} (OEM root)", r.ca.display())?;
        Ok(())
    })
}
