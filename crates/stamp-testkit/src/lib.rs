//! Test support shared by stamp's tests (not published): one in-memory [`Signer`] and
//! [`KeyAgreement`], CSR makers, a 0600 secret-file writer, and, in [`cli`], a command builder for
//! the real `stamp` binary with the ceremony, second-site and entitlement set-ups the CLI tests
//! share.
//!
//! Everything here panics on failure: it is test code, and a failed set-up must fail the test.
//!
//! [`Signer`]: stamp_core::key::Signer
//! [`KeyAgreement`]: stamp_core::key::KeyAgreement
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cli;
mod csr;
mod keys;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use csr::{csr_der, csr_der_for, csr_der_with, write_csr_dir, write_csrs};
pub use keys::{MemKeyAgreement, MemSigner};

/// The Python the tests run their Python checkers with (pycose, pkilint, imgtool, esptool,
/// cryptography): `$STAMP_TEST_PYTHON` if set (scripts/test sets it to the virtual environment it
/// made), else the workspace's `.venv/bin/python3` if it exists (what scripts/test creates and
/// fills from tests/requirements.txt), else `python3` on the PATH.
pub fn python3() -> PathBuf {
    if let Some(p) = std::env::var_os("STAMP_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python3");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Writes `text` and a newline to a new file `dir/name` with mode 0600 (as stamp demands of
/// passphrase files); panics if the file exists.
pub fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .unwrap();
    writeln!(f, "{text}").unwrap();
    p
}

/// Checks a role's migration list against the hashes of its released entries (`released`:
/// version and SHA-256 of the SQL, hex): each entry's version is its position, no released
/// entry was edited, none is missing; a new entry fails with the line to add to `released`.
pub fn assert_migrations_pinned(migrations: &[stamp_store::Migration], released: &[(u32, &str)]) {
    for (i, m) in migrations.iter().enumerate() {
        assert_eq!(
            Some(m.version),
            u32::try_from(i + 1).ok(),
            "entry {i} of the list"
        );
        let sha = hex::encode(stamp_core::fingerprint::sha256(m.sql.as_bytes()));
        match released.get(i) {
            Some((version, pinned)) => {
                assert_eq!(m.version, *version);
                assert_eq!(
                    sha, *pinned,
                    "migration {version} was edited; add a new migration instead"
                );
            }
            None => panic!(
                "migration {} is new: add ({}, \"{sha}\") to RELEASED",
                m.version, m.version
            ),
        }
    }
    assert_eq!(
        migrations.len(),
        released.len(),
        "RELEASED pins a migration the list lacks"
    );
}
