//! One module per subcommand.

pub mod args;
pub mod cloud_formats;
pub mod cloud_gateway;
pub mod cloud_verify;
pub mod demo;
pub mod device_connect;
pub mod device_simulate;
pub mod device_verify_firmware;
pub mod hq_add_firmware_key;
pub mod hq_amend;
pub mod hq_cloud_verification_cert;
pub mod hq_crl;
pub mod hq_devices;
pub mod hq_enroll_site;
pub mod hq_entitle;
pub mod hq_entitlements;
pub mod hq_export;
pub mod hq_export_package;
pub mod hq_firmware;
pub mod hq_firmware_key_digest;
pub mod hq_init;
pub mod hq_reconcile;
pub mod hq_revoke_device;
pub mod hq_sign_firmware;
pub mod hq_sites;
pub mod site_add_station;
pub mod site_cloud_verification_cert;
pub mod site_crl;
pub mod site_export_audit;
pub mod site_hand_out;
pub mod site_import;
pub mod site_init;
pub mod site_install;
pub mod site_issue;
pub mod site_revoke_station;
pub mod site_serve;
pub mod site_stations;
pub mod site_status;
pub mod site_verify_log;

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
    /// Create a named firmware-signing key with a code-signing certificate under the OEM root.
    AddFirmwareKey(hq_add_firmware_key::Args),
    /// Sign a firmware release (MCUboot image or ESP32 Secure Boot V2) and record it.
    #[command(disable_version_flag = true)]
    SignFirmware(Box<hq_sign_firmware::Args>),
    /// List firmware keys and signed releases.
    Firmware(hq_firmware::Args),
    /// Write a firmware key's ESP32 Secure Boot V2 eFuse digest.
    FirmwareKeyDigest(hq_firmware_key_digest::Args),
    // About text: the doc comment of `hq_reconcile::Args` (short and long help).
    Reconcile(hq_reconcile::Args),
    // About text: the doc comment of `hq_devices::Args`.
    Devices(hq_devices::Args),
    /// Export what the cloud needs: the signed stamp registry, AWS IoT or Azure IoT DPS material.
    Export(hq_export::Args),
    /// Write again a package HQ sealed, byte-identical, by site or entitlement and sequence.
    ExportPackage(hq_export_package::Args),
    /// Revoke a device, an entitlement's devices or a site's devices (published in the registry).
    RevokeDevice(hq_revoke_device::Args),
    /// Write a cloud CA-registration verification certificate signed by the OEM root.
    CloudVerificationCert(hq_cloud_verification_cert::Args),
    /// Write the OEM root's CRL of revoked sites' certificates.
    Crl(hq_crl::Args),
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
    /// Issue device certificates from CSR files, offline, with a progress bar.
    Issue(site_issue::Args),
    /// Hand out HQ-generated device keys with their certificates, each at most once.
    HandOut(site_hand_out::Args),
    /// Export the audit log (signed, encrypted to HQ) with a checkpoint and consistency proof.
    ExportAudit(site_export_audit::Args),
    /// Check the site's own audit log for consistency.
    VerifyLog(site_verify_log::Args),
    /// Add a line station: its TLS key and station certificate, for the site service.
    AddStation(site_add_station::Args),
    /// Revoke a line station.
    RevokeStation(site_revoke_station::Args),
    /// List the line stations.
    Stations(site_stations::Args),
    /// Run the site service (mutual TLS; JSON API and EST) for line stations.
    Serve(site_serve::Args),
    /// Write a cloud CA-registration verification certificate signed by the site issuing CA.
    CloudVerificationCert(site_cloud_verification_cert::Args),
    /// Write the site issuing CA's CRL of devices HQ revoked.
    Crl(site_crl::Args),
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
        HqCommand::Reconcile(a) => hq_reconcile::run(a, g),
        HqCommand::Devices(a) => hq_devices::run(a, g),
        HqCommand::Export(a) => hq_export::run(a, g),
        HqCommand::ExportPackage(a) => hq_export_package::run(a, g),
        HqCommand::RevokeDevice(a) => hq_revoke_device::run(a, g),
        HqCommand::Crl(a) => hq_crl::run(a, g),
        HqCommand::CloudVerificationCert(a) => hq_cloud_verification_cert::run(a, g),
        HqCommand::AddFirmwareKey(a) => hq_add_firmware_key::run(a, g),
        HqCommand::SignFirmware(a) => hq_sign_firmware::run(*a, g),
        HqCommand::Firmware(a) => hq_firmware::run(a, g),
        HqCommand::FirmwareKeyDigest(a) => hq_firmware_key_digest::run(a, g),
    }
}

/// `stamp device ...`
#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Simulate devices enrolling through a station, with a progress bar and latency summary.
    Simulate(device_simulate::Args),
    /// Verify a signed firmware image as the device's bootloader would.
    VerifyFirmware(device_verify_firmware::Args),
    /// Connect to a stamp gateway with a saved stamp (certificate, chain, key).
    Connect(device_connect::Args),
}

/// Runs a device command.
pub fn run_device(cmd: DeviceCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Simulate(a) => device_simulate::run(a, g),
        DeviceCommand::VerifyFirmware(a) => device_verify_firmware::run(a, g),
        DeviceCommand::Connect(a) => device_connect::run(a, g),
    }
}

/// `stamp cloud ...`
#[derive(Subcommand, Debug)]
pub enum CloudCommand {
    /// Decide offline whether a device certificate chain is a genuine device's.
    Verify(cloud_verify::Args),
    /// Run a TLS gateway that admits only genuine devices.
    Gateway(cloud_gateway::Args),
}

/// Runs a cloud command.
pub fn run_cloud(cmd: CloudCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        CloudCommand::Verify(a) => cloud_verify::run(a, g),
        CloudCommand::Gateway(a) => cloud_gateway::run(a, g),
    }
}

/// Runs a site command.
pub fn run_site(cmd: SiteCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        SiteCommand::Init(a) => site_init::run(a, g),
        SiteCommand::Install(a) => site_install::run(a, g),
        SiteCommand::Import(a) => site_import::run(a, g),
        SiteCommand::Status(a) => site_status::run(a, g),
        SiteCommand::Issue(a) => site_issue::run(a, g),
        SiteCommand::ExportAudit(a) => site_export_audit::run(a, g),
        SiteCommand::HandOut(a) => site_hand_out::run(a, g),
        SiteCommand::VerifyLog(a) => site_verify_log::run(a, g),
        SiteCommand::AddStation(a) => site_add_station::run(a, g),
        SiteCommand::RevokeStation(a) => site_revoke_station::run(a, g),
        SiteCommand::Stations(a) => site_stations::run(a, g),
        SiteCommand::Serve(a) => site_serve::run(a, g),
        SiteCommand::CloudVerificationCert(a) => site_cloud_verification_cert::run(a, g),
        SiteCommand::Crl(a) => site_crl::run(a, g),
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

/// Writes a CRL (`stamp hq crl`, `stamp site crl`): PEM, or DER with `der`.
pub fn write_crl(path: &Path, crl_der: &[u8], der: bool) -> anyhow::Result<()> {
    let bytes = if der {
        crl_der.to_vec()
    } else {
        stamp_core::crl::to_pem(crl_der).into_bytes()
    };
    stamp_store::write_atomic(path, &bytes, 0o644)?;
    Ok(())
}
