//! `stamp site ...`: a factory site, its keys, entitlements, issuance, audit log and service.
//! One module per subcommand (`Args` + `run`); the [`SiteCommand`] enum lists them.

pub mod add_station;
pub mod cloud_verification_cert;
pub mod crl;
pub mod export_audit;
pub mod hand_out;
pub mod import;
pub mod init;
pub mod install;
pub mod issue;
pub mod revoke_station;
pub mod serve;
pub mod stations;
pub mod status;
pub mod verify_log;

use std::path::Path;

use clap::Subcommand;

use crate::Globals;

/// `stamp site ...`
#[derive(Subcommand, Debug)]
pub enum SiteCommand {
    /// Create a site directory: identity and issuing CA keys, database, and the enrollment request.
    Init(init::Args),
    /// Verify the credentials HQ returned and install them.
    Install(install::Args),
    /// Verify a sealed entitlement package from HQ and apply it.
    Import(import::Args),
    /// Show entitlements with quota used and remaining, rates and windows.
    Status(status::Args),
    /// Issue device certificates from CSR files, offline, with a progress bar.
    Issue(issue::Args),
    /// Hand out HQ-generated device keys with their certificates, each at most once.
    HandOut(hand_out::Args),
    /// Export the audit log (signed, encrypted to HQ) with a checkpoint and consistency proof.
    ExportAudit(export_audit::Args),
    /// Check the site's own audit log for consistency.
    VerifyLog(verify_log::Args),
    /// Add a line station: its TLS key and station certificate, for the site service.
    AddStation(add_station::Args),
    /// Revoke a line station.
    RevokeStation(revoke_station::Args),
    /// List the line stations.
    Stations(stations::Args),
    /// Run the site service (mutual TLS; JSON API and EST) for line stations.
    Serve(serve::Args),
    /// Write a cloud CA-registration verification certificate signed by the site issuing CA.
    CloudVerificationCert(cloud_verification_cert::Args),
    /// Write the site issuing CA's CRL of devices HQ revoked.
    Crl(crl::Args),
}

/// Runs a site command.
pub fn run(cmd: SiteCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        SiteCommand::Init(a) => init::run(a, g),
        SiteCommand::Install(a) => install::run(a, g),
        SiteCommand::Import(a) => import::run(a, g),
        SiteCommand::Status(a) => status::run(a, g),
        SiteCommand::Issue(a) => issue::run(a, g),
        SiteCommand::ExportAudit(a) => export_audit::run(a, g),
        SiteCommand::HandOut(a) => hand_out::run(a, g),
        SiteCommand::VerifyLog(a) => verify_log::run(a, g),
        SiteCommand::AddStation(a) => add_station::run(a, g),
        SiteCommand::RevokeStation(a) => revoke_station::run(a, g),
        SiteCommand::Stations(a) => stations::run(a, g),
        SiteCommand::Serve(a) => serve::run(a, g),
        SiteCommand::CloudVerificationCert(a) => cloud_verification_cert::run(a, g),
        SiteCommand::Crl(a) => crl::run(a, g),
    }
}

/// Refuses, before any work is done or logged, an entitlement the site has not imported
/// (`unknown-entitlement`), naming the command that lists the ones it has.
pub fn require_entitlement(site: &stamp_site::Site, id: &str, dir: &Path) -> anyhow::Result<()> {
    if site.store().grant(id)?.is_none() {
        return Err(crate::output::CliError::refusal(
            "unknown-entitlement",
            format!(
                "the site has no entitlement {id}; import it first (stamp site import), or give one \
                 `stamp site status --dir {}` lists",
                dir.display()
            ),
        ));
    }
    Ok(())
}
