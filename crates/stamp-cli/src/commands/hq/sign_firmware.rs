//! `stamp hq sign-firmware`

use std::path::PathBuf;

use clap::ValueEnum;
use stamp_core::firmware::{mcuboot, Format, Version, MAX_IMAGE_LEN};
use stamp_hq::firmware::SignRequest;

use crate::output::emit;
use crate::Globals;

/// Signed image formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    /// MCUboot image (header, image, TLVs), as `imgtool sign` makes.
    Mcuboot,
    /// ESP32 Secure Boot V2 (image padded to 4 KiB, signature sector), as `espsecure sign-data`.
    #[value(name = "esp32-sbv2")]
    Esp32Sbv2,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Mcuboot => Format::Mcuboot,
            FormatArg::Esp32Sbv2 => Format::Esp32Sbv2,
        }
    }
}

/// Parses a number in decimal or 0x hexadecimal.
fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal or 0x hex, at most 32 bits)"))
}

fn parse_header_size(s: &str) -> Result<u16, String> {
    let v = parse_u32(s)?;
    u16::try_from(v)
        .ok()
        .filter(|v| *v >= 32)
        .ok_or_else(|| format!("{s:?}: the header size must be 32 to 65535 bytes"))
}

/// Sign a firmware release with a firmware key and record it at HQ (version, digests, format,
/// key, time). A version is released once per key and format.
///
/// mcuboot: the input is a raw binary; stamp prepends a header area of --header-size bytes (as
/// `imgtool sign --pad-header`), or, with --header-reserved, fills the zeroed header area the build
/// reserved (Zephyr with MCUboot reserves 0x200). esp32-sbv2: the input (app or bootloader binary)
/// is padded to 4 KiB and a signature sector is appended.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The firmware key's name.
    #[arg(long, value_name = "NAME")]
    key: String,
    /// Signed image format.
    #[arg(long, value_enum)]
    format: FormatArg,
    /// Release version, major.minor.revision+build (written into MCUboot headers).
    #[arg(long, value_name = "VERSION")]
    version: Version,
    /// The firmware binary to sign.
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// Where to write the signed image.
    #[arg(short = 'o', long = "out", value_name = "OUT")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
    /// mcuboot: size of the header area (default 0x20; Zephyr uses 0x200).
    #[arg(long, value_name = "BYTES", value_parser = parse_header_size, default_value = "0x20")]
    header_size: u16,
    /// mcuboot: the input already starts with --header-size zero bytes reserved for the header.
    #[arg(long)]
    header_reserved: bool,
    /// mcuboot: RAM load address (sets the RAM_LOAD flag).
    #[arg(long, value_name = "ADDR", value_parser = parse_u32)]
    load_addr: Option<u32>,
    /// mcuboot: security counter in a protected TLV (hardware rollback protection).
    #[arg(long, value_name = "N", value_parser = parse_u32)]
    security_counter: Option<u32>,
}

/// Runs `stamp hq sign-firmware`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let format = Format::from(a.format);
    if format == Format::Esp32Sbv2
        && (a.header_reserved || a.load_addr.is_some() || a.security_counter.is_some() || a.header_size != 32)
    {
        return Err(crate::output::CliError::usage(
            "--header-size, --header-reserved, --load-addr and --security-counter apply to mcuboot images only",
        ));
    }
    let image = crate::commands::read_bounded(&a.input, MAX_IMAGE_LEN)?;
    let pass = crate::commands::keys(g);
    let mut hq = stamp_hq::Hq::open(&a.dir, pass)?;
    let req = SignRequest {
        key: &a.key,
        format,
        version: a.version,
        mcuboot: mcuboot::Options {
            version: a.version,
            header_size: a.header_size,
            pad_header: !a.header_reserved,
            load_addr: a.load_addr.unwrap_or(0),
            security_counter: a.security_counter,
        },
    };
    let r = hq.sign_firmware(&req, &image, &a.out, crate::commands::now())?;
    emit(g.json, &r, || {
        outln!(
            "Signed release {} ({}) with key {}: {}",
            r.release.version,
            r.release.format,
            r.release.key,
            r.output.display()
        )?;
        outln!("SHA-256 of the signed image: {}", r.release.sha256)?;
        outln!("Signed digest:               {}", r.release.image_digest)?;
        if let Some(sv) = r.secure_version {
            outln!("ESP-IDF secure_version:      {sv}")?;
        }
        outln!("Verify with: {}", r.public_key.display())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // `--version` of sign-firmware is the release's, not clap's (which would clash).
        <crate::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn numbers_parse_in_decimal_and_hex() {
        assert_eq!(parse_u32("0x200"), Ok(512));
        assert_eq!(parse_u32("4096"), Ok(4096));
        assert!(parse_u32("0x1_0000_0000").is_err());
        assert_eq!(parse_header_size("0x200"), Ok(512));
        assert!(parse_header_size("16").is_err());
        assert!(parse_header_size("0x10000").is_err());
    }
}
