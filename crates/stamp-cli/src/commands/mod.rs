//! One module per subcommand, grouped by role: `hq/`, `site/`, `device/`, `cloud/` (each a
//! `mod.rs` with the role's `Subcommand` enum and its `run`), and `demo`; the helpers they share
//! are here and in `args`.

pub mod args;
pub mod cloud;
pub mod completions;
pub mod daemon;
pub mod demo;
pub mod device;
pub mod hq;
pub mod manpage;
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

/// Writes a CRL (`stamp hq crl`, `stamp site crl`) and reports it; `whose` names its issuer.
pub fn emit_crl(
    g: &crate::Globals,
    out: &Path,
    crl_der: &[u8],
    der: bool,
    r: &stamp_core::crl::CrlReport,
    whose: &str,
) -> anyhow::Result<()> {
    write_crl(out, crl_der, der)?;
    crate::output::emit(g.json, r, || {
        outln!(
            "{whose} CRL number {} lists {} certificate(s); next update by {}",
            r.number,
            r.revoked,
            r.next_update
        )?;
        outln!("Written to {}", out.display())?;
        Ok(())
    })
}

/// A role's database, as the listing commands open it straight from the role's directory (no
/// keys needed): [`open_store`] opens either.
pub trait RoleStore: Sized {
    /// The database's file name in the role directory.
    const DB_FILE: &'static str;
    /// The error for a directory that holds no such database (the role's own message).
    fn not_role_dir(dir: &Path) -> anyhow::Error;
    /// Opens the database file.
    fn open_file(db: &Path) -> anyhow::Result<Self>;
}

/// Implements [`RoleStore`] for a role's store type, its database file name and its "not a role
/// directory" error variant.
macro_rules! role_store {
    ($store:ty, $db_file:path, $not_dir:path) => {
        impl RoleStore for $store {
            const DB_FILE: &'static str = $db_file;
            fn not_role_dir(dir: &Path) -> anyhow::Error {
                $not_dir(dir.to_owned()).into()
            }
            fn open_file(db: &Path) -> anyhow::Result<Self> {
                Ok(Self::open(db)?)
            }
        }
    };
}

role_store!(stamp_hq::HqStore, stamp_hq::DB_FILE, stamp_hq::HqError::NotHqDir);
role_store!(
    stamp_site::SiteStore,
    stamp_site::DB_FILE,
    stamp_site::SiteError::NotSiteDir
);

/// Opens the database of the HQ or site directory `dir` (`let store: HqStore =
/// open_store(&a.dir)?`); a directory without one is refused with the role's "not an HQ/site
/// directory" error.
pub fn open_store<S: RoleStore>(dir: &Path) -> anyhow::Result<S> {
    let db = dir.join(S::DB_FILE);
    if !db.is_file() {
        return Err(S::not_role_dir(dir));
    }
    S::open_file(&db)
}
