//! One module per subcommand, grouped by role: `hq/`, `site/`, `device/`, `cloud/` (each a
//! `mod.rs` with the role's `Subcommand` enum and its `run`), and `demo`; the helpers they share
//! are here and in `args`.

pub mod args;
pub mod cloud;
pub mod demo;
pub mod device;
pub mod hq;
pub mod site;

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use stamp_keys::{KeyConfig, PassphraseSource, PinSource, Pkcs11Config, StoreTarget};

use crate::Globals;

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
