//! Entitlement packages for a running engine.
//!
//! While an [`Engine`](crate::engine::Engine) runs (the site service, or a `site issue` or
//! `site hand-out` run) it holds the site's engine lock, and it alone may apply packages: the
//! audit log must record each device after the package whose terms admitted it, so a package
//! has to be applied between two admissions, not beside them. `stamp site import` then verifies
//! the package and leaves it in the site's inbox; the engine verifies it again, applies it under
//! its policy lock once every device admitted before is logged
//! ([`Engine::apply_inbox`](crate::engine::Engine::apply_inbox)), and leaves the outcome beside
//! it, which `stamp site import` reads and reports.

use std::fs;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::entitlements::ImportReport;
use crate::{Site, SiteError};

/// The inbox directory, inside the site directory.
pub const INBOX_DIR: &str = "inbox";
/// The engine lock file, inside the site directory.
pub const LOCK_FILE: &str = "engine.lock";
/// Packages the inbox holds at most.
pub const MAX_QUEUED: usize = 64;

/// The site's engine lock, held while an engine runs (released when dropped or when the process
/// ends, however it ends: an OS file lock).
#[derive(Debug)]
pub struct EngineLock {
    _file: fs::File,
}

impl EngineLock {
    /// Takes the lock of the site in `dir`; `None` if another engine holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<EngineLock>, SiteError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| SiteError::Io {
            path: path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(EngineLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

/// What became of a queued package.
#[derive(Debug)]
pub enum Outcome {
    /// Applied (by the running engine).
    Applied(Box<ImportReport>),
    /// Refused by the running engine (its error message).
    Refused(String),
}

fn name(sequence: u64) -> String {
    format!("{sequence:020}")
}

impl Site {
    pub(crate) fn inbox(&self) -> PathBuf {
        self.dir.join(INBOX_DIR)
    }

    /// Leaves a package (verified by the caller) for the running engine, named by its sequence.
    pub fn queue_package(&self, sequence: u64, bytes: &[u8]) -> Result<(), SiteError> {
        let dir = self.inbox();
        let io = |source| SiteError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let queued = fs::read_dir(&dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cose"))
            .count();
        if queued >= MAX_QUEUED {
            return Err(SiteError::Io {
                path: dir.clone(),
                source: std::io::Error::other("the inbox is full: the running engine is not taking packages"),
            });
        }
        let base = name(sequence);
        let _ = fs::remove_file(dir.join(format!("{base}.refused.txt")));
        stamp_store::write_atomic(&dir.join(format!("{base}.cose")), bytes, 0o600)?;
        Ok(())
    }

    /// The outcome of a queued package once the engine has decided (a refusal's note is then
    /// removed); `None` while it is still queued.
    pub fn take_outcome(&self, sequence: u64, now: OffsetDateTime) -> Result<Option<Outcome>, SiteError> {
        if let Some(r) = self.applied_report(sequence, now)? {
            return Ok(Some(Outcome::Applied(Box::new(r))));
        }
        let refused = self.inbox().join(format!("{}.refused.txt", name(sequence)));
        match fs::read(&refused) {
            Ok(text) => {
                let _ = fs::remove_file(&refused);
                Ok(Some(Outcome::Refused(
                    String::from_utf8_lossy(&text).into_owned(),
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SiteError::Io {
                path: refused,
                source,
            }),
        }
    }

    /// Queued packages, in sequence order: (sequence, path).
    pub(crate) fn queued(&self) -> Result<Vec<(u64, PathBuf)>, SiteError> {
        let dir = self.inbox();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SiteError::Io { path: dir, source }),
        };
        let mut out: Vec<(u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter_map(|p| {
                let seq = p.file_name()?.to_str()?.strip_suffix(".cose")?.parse().ok()?;
                Some((seq, p))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Takes a queued package out of the queue, leaving the reason beside it if it was refused.
    pub(crate) fn dequeue(&self, sequence: u64, refused: Option<&str>) -> Result<(), SiteError> {
        let dir = self.inbox();
        let base = name(sequence);
        if let Some(e) = refused {
            stamp_store::write_atomic(&dir.join(format!("{base}.refused.txt")), e.as_bytes(), 0o600)?;
        }
        let p = dir.join(format!("{base}.cose"));
        fs::remove_file(&p).map_err(|source| SiteError::Io { path: p, source })
    }
}
