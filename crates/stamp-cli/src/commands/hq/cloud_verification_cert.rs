//! `stamp hq cloud-verification-cert`

use std::path::PathBuf;

use crate::output::emit;
use crate::Globals;

/// Write the "verification certificate" a cloud asks for when the OEM root is registered as a CA
/// (AWS IoT `register-ca-certificate --verification-cert`, Azure IoT DPS proof of possession):
/// subject CN = the cloud's code, signed by the OEM root key, for a throwaway key that is
/// forgotten at once. A site issuing CA is proven at its site, which alone holds its key:
/// `stamp site cloud-verification-cert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The CA to prove: only `root` (HQ holds no site issuing CA key).
    #[arg(long, value_name = "CA", default_value = "root")]
    ca: String,
    /// The registration or verification code the cloud gave.
    #[arg(long, value_name = "CODE")]
    code: String,
    /// Where to write the certificate (PEM).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

/// What was written.
#[derive(serde::Serialize)]
pub struct Written {
    /// The CA proven.
    pub ca: String,
    /// The code (subject CN).
    pub code: String,
    /// The certificate file.
    pub out: PathBuf,
    /// SHA-256 of the certificate.
    pub sha256: String,
}

/// Runs `stamp hq cloud-verification-cert`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    if a.ca != "root" {
        anyhow::bail!(
            "HQ can prove only the OEM root (--ca root); a site issuing CA's key is at its site: run `stamp site cloud-verification-cert` there"
        );
    }
    crate::commands::check_output(&a.out, a.force)?;
    let hq = stamp_hq::Hq::open(&a.dir, crate::commands::keys(g))?;
    let key = stamp_keys::device::generate(stamp_core::entitlement::DeviceKeyType::P256)?;
    let der = hq.root_verification_cert(&a.code, &key.spki_der, crate::commands::now())?;
    drop(key);
    write(g, "root", a.code, a.out, a.force, &der)
}

/// Writes a verification certificate and reports it.
pub fn write(
    g: &Globals,
    ca: &str,
    code: String,
    out: PathBuf,
    force: bool,
    der: &[u8],
) -> anyhow::Result<()> {
    crate::commands::write_output(&out, stamp_core::cert::to_pem(der).as_bytes(), 0o644, force)?;
    let w = Written {
        ca: ca.to_owned(),
        code,
        out,
        sha256: stamp_core::fingerprint::cert_sha256(der),
    };
    emit(g.json, &w, || {
        outln!(
            "Verification certificate for {} (CN={}) written to {}",
            w.ca,
            w.code,
            w.out.display()
        )?;
        outln!("Its key was thrown away: the certificate proves possession of the CA key and nothing else.")?;
        Ok(())
    })
}
