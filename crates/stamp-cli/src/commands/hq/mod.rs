//! `stamp hq ...`: headquarters, the OEM root of trust, the HQ authority, site enrollment.
//! One module per subcommand (`Args` + `run`); the [`HqCommand`] enum lists them.

pub mod add_firmware_key;
pub mod amend;
pub mod cloud_verification_cert;
pub mod crl;
pub mod devices;
pub mod enroll_site;
pub mod entitle;
pub mod entitlements;
pub mod export;
pub mod export_credentials;
pub mod export_package;
pub mod firmware;
pub mod firmware_key_digest;
pub mod init;
pub mod reconcile;
pub mod revoke_device;
pub mod sign_firmware;
pub mod sites;

use clap::Subcommand;

use crate::Globals;

/// `stamp hq ...`
#[derive(Subcommand, Debug)]
pub enum HqCommand {
    /// Create an HQ directory: OEM root CA, HQ authority keys and certificates, database.
    Init(init::Args),
    /// Verify a site's request and issue its certificates; write the credentials file.
    EnrollSite(enroll_site::Args),
    /// Write again an enrolled site's credentials file, from HQ's records.
    ExportCredentials(export_credentials::Args),
    /// List enrolled sites.
    Sites(sites::Args),
    /// Grant a site a production run (quota, rates, window, serials), sealed to the site.
    Entitle(Box<entitle::Args>),
    /// Top up, move, suspend, resume or revoke an entitlement (a new sealed package).
    Amend(amend::Args),
    /// List entitlements.
    Entitlements(entitlements::Args),
    /// Create a named firmware-signing key with a code-signing certificate under the OEM root.
    AddFirmwareKey(add_firmware_key::Args),
    /// Sign a firmware release (MCUboot image or ESP32 Secure Boot V2) and record it.
    #[command(disable_version_flag = true)]
    SignFirmware(Box<sign_firmware::Args>),
    /// List firmware keys and signed releases.
    Firmware(firmware::Args),
    /// Write a firmware key's ESP32 Secure Boot V2 eFuse digest.
    FirmwareKeyDigest(firmware_key_digest::Args),
    // About text: the doc comment of `reconcile::Args` (short and long help).
    Reconcile(reconcile::Args),
    // About text: the doc comment of `devices::Args`.
    Devices(devices::Args),
    /// Export what the cloud needs: the signed stamp registry, AWS IoT or Azure IoT DPS material.
    Export(export::Args),
    /// Write again a package HQ sealed, byte-identical, by site or entitlement and sequence.
    ExportPackage(export_package::Args),
    /// Revoke a device, an entitlement's devices or a site's devices (published in the registry).
    RevokeDevice(revoke_device::Args),
    /// Write a cloud CA-registration verification certificate signed by the OEM root.
    CloudVerificationCert(cloud_verification_cert::Args),
    /// Write the OEM root's CRL of revoked sites' certificates.
    Crl(crl::Args),
}

/// Runs an HQ command.
pub fn run(cmd: HqCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        HqCommand::Init(a) => init::run(a, g),
        HqCommand::EnrollSite(a) => enroll_site::run(a, g),
        HqCommand::ExportCredentials(a) => export_credentials::run(a, g),
        HqCommand::Sites(a) => sites::run(a, g),
        HqCommand::Entitle(a) => entitle::run(*a, g),
        HqCommand::Amend(a) => amend::run(a, g),
        HqCommand::Entitlements(a) => entitlements::run(a, g),
        HqCommand::Reconcile(a) => reconcile::run(a, g),
        HqCommand::Devices(a) => devices::run(a, g),
        HqCommand::Export(a) => export::run(a, g),
        HqCommand::ExportPackage(a) => export_package::run(a, g),
        HqCommand::RevokeDevice(a) => revoke_device::run(a, g),
        HqCommand::Crl(a) => crl::run(a, g),
        HqCommand::CloudVerificationCert(a) => cloud_verification_cert::run(a, g),
        HqCommand::AddFirmwareKey(a) => add_firmware_key::run(a, g),
        HqCommand::SignFirmware(a) => sign_firmware::run(*a, g),
        HqCommand::Firmware(a) => firmware::run(a, g),
        HqCommand::FirmwareKeyDigest(a) => firmware_key_digest::run(a, g),
    }
}
