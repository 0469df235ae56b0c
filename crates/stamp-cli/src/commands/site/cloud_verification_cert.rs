//! `stamp site cloud-verification-cert`

use std::path::PathBuf;

use crate::Globals;

/// Write the "verification certificate" a cloud asks for when this site's issuing CA is
/// registered (AWS IoT `register-ca-certificate --verification-cert`, Azure IoT DPS proof of
/// possession): subject CN = the cloud's code, signed by the site issuing CA key, for a throwaway
/// key that is forgotten at once. Only the site can make it: HQ never holds this key.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
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

/// Runs `stamp site cloud-verification-cert`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let site = stamp_site::Site::open(&a.dir, crate::commands::keys(g))?;
    let key = stamp_keys::device::generate(stamp_core::entitlement::DeviceKeyType::P256)?;
    let der = site.cloud_verification_cert(&a.code, &key.spki_der, crate::commands::now())?;
    drop(key);
    crate::commands::hq::cloud_verification_cert::write(g, "site issuing CA", a.code, a.out, a.force, &der)
}
