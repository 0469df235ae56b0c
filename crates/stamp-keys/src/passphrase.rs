//! Key store passphrases: from a file, or typed at a terminal; never from the command line.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

/// Environment variable naming a passphrase file.
pub const PASSPHRASE_FILE_ENV: &str = "STAMP_PASSPHRASE_FILE";

/// Shortest passphrase accepted when creating keys.
pub const MIN_LEN: usize = 8;

/// A key store passphrase; wiped on drop, never printed.
pub struct Passphrase(SecretString);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Why no passphrase could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    /// The file could not be read.
    #[error("cannot read passphrase file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Others can read the passphrase file.
    #[error("passphrase file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Empty or too short.
    #[error("passphrase is too short (at least {MIN_LEN} characters)")]
    TooShort,
    /// No terminal to prompt on and no file given.
    #[error(
        "no passphrase: pass --passphrase-file FILE or set {PASSPHRASE_FILE_ENV} (no terminal to prompt on)"
    )]
    NoSource,
    /// The two entries at the prompt differ.
    #[error("the passphrases typed do not match")]
    Mismatch,
    /// Reading the prompt failed.
    #[error("reading passphrase from terminal: {0}")]
    Prompt(std::io::Error),
}

impl Passphrase {
    /// Wraps a passphrase held in memory (tests, generated passphrases).
    pub fn new(s: String) -> Self {
        Passphrase(SecretString::from(s))
    }

    /// The passphrase bytes, for the KDF only.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }

    /// Reads a passphrase file: at most 1 KiB, one trailing newline removed, refused when group or
    /// others can read it.
    pub fn from_file(path: &Path) -> Result<Self, PassphraseError> {
        let text = read_secret_file(path).map_err(|e| match e {
            SecretFileError::Read(source) => PassphraseError::Read {
                path: path.to_owned(),
                source,
            },
            SecretFileError::InsecurePermissions(mode) => PassphraseError::InsecurePermissions {
                path: path.to_owned(),
                mode,
            },
        })?;
        if text.is_empty() {
            return Err(PassphraseError::TooShort);
        }
        Ok(Passphrase::new(text.to_string()))
    }

    /// Finds the passphrase: `file` if given, else `$STAMP_PASSPHRASE_FILE`, else a prompt on the
    /// terminal (asked twice when `creating`). New passphrases must be at least [`MIN_LEN`] long.
    pub fn obtain(file: Option<&Path>, creating: bool) -> Result<Self, PassphraseError> {
        let env = std::env::var_os(PASSPHRASE_FILE_ENV).map(PathBuf::from);
        let p = if let Some(path) = file.map(Path::to_owned).or(env) {
            Passphrase::from_file(&path)?
        } else if std::io::stdin().is_terminal() {
            let first =
                rpassword::prompt_password("Key store passphrase: ").map_err(PassphraseError::Prompt)?;
            let p = Passphrase::new(first);
            if creating {
                let again =
                    rpassword::prompt_password("Repeat passphrase: ").map_err(PassphraseError::Prompt)?;
                let again = Passphrase::new(again);
                if !constant_time_eq(p.expose(), again.expose()) {
                    return Err(PassphraseError::Mismatch);
                }
            }
            p
        } else {
            return Err(PassphraseError::NoSource);
        };
        if creating && p.0.expose_secret().chars().count() < MIN_LEN {
            return Err(PassphraseError::TooShort);
        }
        Ok(p)
    }
}

/// Where the software store's passphrase comes from. It is obtained only when a `file:` key is
/// first used, so a role whose keys are all in a PKCS#11 token never asks for one.
#[derive(Debug)]
pub enum PassphraseSource {
    /// A passphrase in hand.
    Given(Passphrase),
    /// `file` if given, else `$STAMP_PASSPHRASE_FILE`, else a prompt (see [`Passphrase::obtain`]).
    Obtain {
        /// `--passphrase-file`.
        file: Option<PathBuf>,
        /// Whether new keys are being made (asks twice, enforces [`MIN_LEN`]).
        creating: bool,
    },
}

impl PassphraseSource {
    /// The passphrase.
    pub fn resolve(self) -> Result<Passphrase, PassphraseError> {
        match self {
            PassphraseSource::Given(p) => Ok(p),
            PassphraseSource::Obtain { file, creating } => Passphrase::obtain(file.as_deref(), creating),
        }
    }
}

impl From<Passphrase> for PassphraseSource {
    fn from(p: Passphrase) -> Self {
        PassphraseSource::Given(p)
    }
}

/// Why a secret file could not be read.
pub(crate) enum SecretFileError {
    /// Opening or reading failed.
    Read(std::io::Error),
    /// Group or others may read it (the mode bits).
    InsecurePermissions(u32),
}

/// Reads a secret from a file (passphrase, PIN): refused when group or others can read it, at most
/// 1 KiB read, one trailing newline (LF or CRLF) removed. The text is wiped when dropped.
pub(crate) fn read_secret_file(path: &Path) -> Result<zeroize::Zeroizing<String>, SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(path).map_err(SecretFileError::Read)?;
    let mode = file
        .metadata()
        .map_err(SecretFileError::Read)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(SecretFileError::InsecurePermissions(mode & 0o777));
    }
    let mut buf = zeroize::Zeroizing::new(String::new());
    file.take(1024)
        .read_to_string(&mut buf)
        .map_err(SecretFileError::Read)?;
    let trimmed = buf.strip_suffix('\n').unwrap_or(&buf);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(zeroize::Zeroizing::new(trimmed.to_owned()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
