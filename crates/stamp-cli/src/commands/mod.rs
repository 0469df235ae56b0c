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

/// The code of a refusal to replace an output file that exists.
pub const OUTPUT_EXISTS: &str = "output-exists";

/// The refusal of an output path that exists (a file, a directory or a link).
fn output_exists(path: &Path) -> anyhow::Error {
    crate::output::CliError::refusal(
        OUTPUT_EXISTS,
        format!(
            "{} already exists; choose another path, or give --force to replace it",
            path.display()
        ),
    )
}

/// Checks, before any work, that a command may write the output file `path`: refused with
/// [`OUTPUT_EXISTS`] if something is there, unless `force`. For files a library writes itself
/// (atomically); a command that writes the bytes uses [`write_output`].
pub fn check_output(path: &Path, force: bool) -> anyhow::Result<()> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(output_exists(path));
    }
    Ok(())
}

/// Checks, before any work, that a command may write its files into the directory `dir`: refused
/// with [`OUTPUT_EXISTS`] if it exists and is not empty, unless `force`.
pub fn check_output_dir(dir: &Path, force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    match std::fs::read_dir(dir).map(|mut entries| entries.next().is_none()) {
        Ok(true) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(output_exists(dir)),
    }
}

/// Writes an output file atomically (a temporary file beside it, synced, then moved into place,
/// and the directory synced): a crash leaves the old file or the new one, never half of one.
/// Unless `force`, a file that exists is never replaced, even one that appeared since
/// [`check_output`] (the move is a hard link, which fails if the name is taken).
pub fn write_output(path: &Path, data: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    if force {
        stamp_store::write_atomic(path, data, mode)?;
        return Ok(());
    }
    check_output(path, false)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A temporary file of this name is one a crashed run of this process id left.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(output_exists(path)),
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}

/// Writes a CRL (`stamp hq crl`, `stamp site crl`): PEM, or DER with `der`.
pub fn write_crl(path: &Path, crl_der: &[u8], der: bool, force: bool) -> anyhow::Result<()> {
    let bytes = if der {
        crl_der.to_vec()
    } else {
        stamp_core::crl::to_pem(crl_der).into_bytes()
    };
    write_output(path, &bytes, 0o644, force)
}

/// Writes a CRL (`stamp hq crl`, `stamp site crl`) and reports it; `whose` names its issuer.
pub fn emit_crl(
    g: &crate::Globals,
    out: &Path,
    crl_der: &[u8],
    der: bool,
    force: bool,
    r: &stamp_core::crl::CrlReport,
    whose: &str,
) -> anyhow::Result<()> {
    write_crl(out, crl_der, der, force)?;
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

#[cfg(test)]
mod tests {
    use super::{check_output_dir, write_output, OUTPUT_EXISTS};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_output_never_replaces_a_file_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("out");
        write_output(&p, b"first", 0o600, false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let e = write_output(&p, b"second", 0o600, false).unwrap_err();
        assert_eq!(crate::output::code(&e), Some(OUTPUT_EXISTS));
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        write_output(&p, b"third", 0o644, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"third");
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_output_directory_must_be_new_or_empty() {
        let tmp = tempfile::tempdir().unwrap();
        check_output_dir(&tmp.path().join("new"), false).unwrap();
        check_output_dir(tmp.path(), false).unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let e = check_output_dir(tmp.path(), false).unwrap_err();
        assert_eq!(crate::output::code(&e), Some(OUTPUT_EXISTS));
        check_output_dir(tmp.path(), true).unwrap();
    }
}
