//! `stamp`: secure manufacturing of IoT devices.
//!
//! A thin binary: it parses the command line, reads files, asks for confirmation, calls the role
//! crates and prints results (text, or one JSON object with `--json`).

// Standard output is written only through `output` (`emit`, `outln!`), whose writes return their
// errors: `println!` would panic on a closed pipe.
#![deny(clippy::print_stdout)]

// Declared first so its `outln!` and `out!` are in scope in `commands`.
#[macro_use]
mod output;
mod commands;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Secure manufacturing of IoT devices: an OEM root at HQ, factory sites that provision devices
/// under HQ's policy, and audit logs that prove what each site did.
#[derive(Parser, Debug)]
#[command(name = "stamp", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Print one JSON object on standard output instead of text (errors too).
    #[arg(long, global = true)]
    json: bool,

    /// File holding the key store passphrase (mode 0600). Default: $STAMP_PASSPHRASE_FILE, else a
    /// prompt on the terminal. Passphrases are never taken from the command line.
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,

    /// PKCS#11 module (shared library) for keys in a token, e.g.
    /// /usr/lib/softhsm/libsofthsm2.so. Default: $STAMP_PKCS11_MODULE.
    #[arg(long, global = true, value_name = "PATH")]
    pkcs11_module: Option<PathBuf>,

    /// File holding the token's user PIN (mode 0600). Default: $STAMP_PKCS11_PIN_FILE, else a
    /// prompt on the terminal. PINs are never taken from the command line.
    #[arg(long, global = true, value_name = "FILE")]
    pkcs11_pin_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Headquarters: the OEM root of trust, the HQ authority, site enrollment.
    #[command(subcommand)]
    Hq(commands::hq::HqCommand),
    /// Factory site: keys, enrollment request, credentials.
    #[command(subcommand)]
    Site(commands::site::SiteCommand),
    /// Device side: simulate devices enrolling through the site service, and check signed firmware
    /// as a device's bootloader would.
    #[command(subcommand)]
    Device(commands::device::DeviceCommand),
    /// Cloud edge: verify devices against HQ's signed registry.
    #[command(subcommand)]
    Cloud(commands::cloud::CloudCommand),
    /// Run the whole flow on embedded defaults in a fresh directory and narrate it.
    Demo(commands::demo::Args),
    /// Print a shell completion script (bash, zsh, fish).
    Completions(commands::completions::Args),
    /// Print the manual page, or write every command's page into a directory.
    Manpage(commands::manpage::Args),
}

/// Global options every command may need.
pub struct Globals {
    /// `--json`.
    pub json: bool,
    /// `--passphrase-file`.
    pub passphrase_file: Option<PathBuf>,
    /// `--pkcs11-module`.
    pub pkcs11_module: Option<PathBuf>,
    /// `--pkcs11-pin-file`.
    pub pkcs11_pin_file: Option<PathBuf>,
}

/// Whether the command line asks for `--json` (before any `--`), for reporting a usage error the
/// parser found before it could say so.
fn wants_json() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Parses the command line. A usage error is reported as clap reports it, or with `--json` as
/// one JSON object (`{"error", "code": "usage"}`) on stdout; both exit with status 2. `--help`
/// and `--version` print as usual.
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if e.use_stderr() && wants_json() => {
            let rendered = e.render().to_string();
            let (message, rest) = rendered.split_once("\n\nUsage:").unwrap_or((&rendered, ""));
            let message = message
                .trim_start_matches("error: ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let mut v = serde_json::json!({ "error": message, "code": output::USAGE, "causes": [] });
            if let Some(usage) = rest.lines().next().filter(|u| !u.trim().is_empty()) {
                v["usage"] = serde_json::Value::from(usage.trim());
            }
            let _ = writeln!(std::io::stdout().lock(), "{v}");
            Err(ExitCode::from(output::USAGE_EXIT))
        }
        Err(e) => {
            let _ = e.print();
            Err(ExitCode::from(
                u8::try_from(e.exit_code()).unwrap_or(output::USAGE_EXIT),
            ))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let globals = Globals {
        json: cli.json,
        passphrase_file: cli.passphrase_file,
        pkcs11_module: cli.pkcs11_module,
        pkcs11_pin_file: cli.pkcs11_pin_file,
    };
    let result = match cli.command {
        Command::Hq(c) => commands::hq::run(c, &globals),
        Command::Site(c) => commands::site::run(c, &globals),
        Command::Device(c) => commands::device::run(c, &globals),
        Command::Cloud(c) => commands::cloud::run(c, &globals),
        Command::Demo(a) => commands::demo::run(a, &globals),
        Command::Completions(a) => commands::completions::run(a, &globals),
        Command::Manpage(a) => commands::manpage::run(a, &globals),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`stamp hq devices | head -1`): stop quietly, with the
        // status a shell reports for a process ended by SIGPIPE (the pipeline's is head's).
        Err(e) if output::is_closed_stdout(&e) => ExitCode::from(output::CLOSED_STDOUT_EXIT),
        Err(e) => {
            output::error(globals.json, &e);
            if output::is_usage(&e) {
                ExitCode::from(output::USAGE_EXIT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
