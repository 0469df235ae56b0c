//! One module per subcommand.

pub mod args;
pub mod demo;
pub mod hq_amend;
pub mod hq_enroll_site;
pub mod hq_entitle;
pub mod hq_entitlements;
pub mod hq_init;
pub mod hq_sites;
pub mod site_import;
pub mod site_init;
pub mod site_install;
pub mod site_status;

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Subcommand;
use stamp_keys::{KeyConfig, PassphraseSource, PinSource, Pkcs11Config, StoreTarget};

use crate::Globals;

/// `stamp hq ...`
#[derive(Subcommand, Debug)]
pub enum HqCommand {
    /// Create an HQ directory: OEM root CA, HQ authority keys and certificates, database.
    Init(hq_init::Args),
    /// Verify a site's request and issue its certificates; write the credentials file.
    EnrollSite(hq_enroll_site::Args),
    /// List enrolled sites.
    Sites(hq_sites::Args),
    /// Grant a site a production run (quota, rates, window, serials), sealed to the site.
    Entitle(Box<hq_entitle::Args>),
    /// Top up, move, suspend, resume or revoke an entitlement (a new sealed package).
    Amend(hq_amend::Args),
    /// List entitlements.
    Entitlements(hq_entitlements::Args),
}

/// `stamp site ...`
#[derive(Subcommand, Debug)]
pub enum SiteCommand {
    /// Create a site directory: identity and issuing CA keys, database, and the enrollment request.
    Init(site_init::Args),
    /// Verify the credentials HQ returned and install them.
    Install(site_install::Args),
    /// Verify a sealed entitlement package from HQ and apply it.
    Import(site_import::Args),
    /// Show entitlements with quota used and remaining, rates and windows.
    Status(site_status::Args),
}

/// Runs an HQ command.
pub fn run_hq(cmd: HqCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        HqCommand::Init(a) => hq_init::run(a, g),
        HqCommand::EnrollSite(a) => hq_enroll_site::run(a, g),
        HqCommand::Sites(a) => hq_sites::run(a, g),
        HqCommand::Entitle(a) => hq_entitle::run(*a, g),
        HqCommand::Amend(a) => hq_amend::run(a, g),
        HqCommand::Entitlements(a) => hq_entitlements::run(a, g),
    }
}

/// Runs a site command.
pub fn run_site(cmd: SiteCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        SiteCommand::Init(a) => site_init::run(a, g),
        SiteCommand::Install(a) => site_install::run(a, g),
        SiteCommand::Import(a) => site_import::run(a, g),
        SiteCommand::Status(a) => site_status::run(a, g),
    }
}

/// How to open a role's existing keys, each by the reference in its database: the passphrase
/// (`--passphrase-file`, `$STAMP_PASSPHRASE_FILE` or a prompt) is asked for only if a software key
/// is used, the PKCS#11 module and PIN only if a token key is.
pub fn keys(g: &Globals) -> KeyConfig {
    KeyConfig {
        new_keys: StoreTarget::File,
        passphrase: PassphraseSource::Obtain {
            file: g.passphrase_file.clone(),
            creating: false,
        },
        pkcs11: pkcs11_config(g),
    }
}

/// Like [`keys`], for a command that creates keys in `target` (`--key-store`).
pub fn new_keys(g: &Globals, target: StoreTarget) -> KeyConfig {
    KeyConfig {
        new_keys: target,
        passphrase: PassphraseSource::Obtain {
            file: g.passphrase_file.clone(),
            creating: true,
        },
        pkcs11: pkcs11_config(g),
    }
}

/// The PKCS#11 module and PIN from `--pkcs11-module` and `--pkcs11-pin-file` (else their
/// environment variables).
pub fn pkcs11_config(g: &Globals) -> Pkcs11Config {
    Pkcs11Config {
        module: g.pkcs11_module.clone(),
        pin: g
            .pkcs11_pin_file
            .clone()
            .map_or(PinSource::Default, PinSource::File),
        ..Default::default()
    }
}

/// Reads a file of at most `max` bytes.
pub fn read_bounded(path: &Path, max: usize) -> anyhow::Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if buf.len() > max {
        bail!(
            "{} is larger than {max} bytes; it is not a file stamp expects here",
            path.display()
        );
    }
    Ok(buf)
}

/// The current time.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
