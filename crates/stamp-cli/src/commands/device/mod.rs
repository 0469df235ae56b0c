//! `stamp device ...`: the device side, simulated enrollment, firmware checks, connecting.
//! One module per subcommand (`Args` + `run`); the [`DeviceCommand`] enum lists them.

pub mod connect;
pub mod simulate;
pub mod verify_firmware;

use clap::Subcommand;

use crate::Globals;

/// `stamp device ...`
#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Simulate devices enrolling through a station, with a progress bar and latency summary.
    Simulate(simulate::Args),
    /// Verify a signed firmware image as the device's bootloader would.
    VerifyFirmware(verify_firmware::Args),
    /// Connect to a stamp gateway with a saved stamp (certificate, chain, key).
    Connect(connect::Args),
}

/// Runs a device command.
pub fn run(cmd: DeviceCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Simulate(a) => simulate::run(a, g),
        DeviceCommand::VerifyFirmware(a) => verify_firmware::run(a, g),
        DeviceCommand::Connect(a) => connect::run(a, g),
    }
}
