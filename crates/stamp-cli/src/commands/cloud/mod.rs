//! `stamp cloud ...`: the cloud edge, verifying devices against HQ's signed registry.
//! One module per subcommand (`Args` + `run`); the [`CloudCommand`] enum lists them;
//! `formats` writes the cloud vendors' registration formats for `stamp hq export`.

pub mod formats;
pub mod gateway;
pub mod verify;

use clap::Subcommand;

use crate::Globals;

/// `stamp cloud ...`
#[derive(Subcommand, Debug)]
pub enum CloudCommand {
    /// Decide offline whether a device certificate chain is a genuine device's.
    Verify(verify::Args),
    /// Run a TLS gateway that admits only genuine devices.
    Gateway(gateway::Args),
}

/// Runs a cloud command.
pub fn run(cmd: CloudCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        CloudCommand::Verify(a) => verify::run(a, g),
        CloudCommand::Gateway(a) => gateway::run(a, g),
    }
}
