//! How to reach a token: the module path and the user PIN.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::Pkcs11Error;

/// Environment variable naming the PKCS#11 module (shared library).
pub const MODULE_ENV: &str = "STAMP_PKCS11_MODULE";
/// Environment variable naming a file that holds the token's user PIN.
pub const PIN_FILE_ENV: &str = "STAMP_PKCS11_PIN_FILE";
/// Sessions open at once per token, unless configured otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 8;

/// A token user PIN; wiped on drop, never printed.
pub struct Pin(SecretString);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

impl Pin {
    /// Wraps a PIN held in memory.
    pub fn new(pin: String) -> Self {
        Pin(SecretString::from(pin))
    }

    /// Reads a PIN file: refused when group or others can read it; at most 1 KiB; one trailing
    /// newline removed.
    pub fn from_file(path: &Path) -> Result<Self, Pkcs11Error> {
        use crate::passphrase::{read_secret_file, SecretFileError};
        let text = read_secret_file(path).map_err(|e| match e {
            SecretFileError::Read(source) => Pkcs11Error::PinFile {
                path: path.to_owned(),
                source,
            },
            SecretFileError::InsecurePermissions(mode) => Pkcs11Error::PinFileInsecure {
                path: path.to_owned(),
                mode,
            },
        })?;
        if text.is_empty() {
            return Err(Pkcs11Error::EmptyPin(path.to_owned()));
        }
        Ok(Pin::new(text.to_string()))
    }

    pub(crate) fn auth(&self) -> &cryptoki::types::AuthPin {
        &self.0
    }
}

/// Where the token PIN comes from.
#[derive(Debug, Default)]
pub enum PinSource {
    /// The file named by `$STAMP_PKCS11_PIN_FILE`, else a prompt on the terminal (no PIN at all for
    /// a token with its own PIN pad).
    #[default]
    Default,
    /// A PIN file (`--pkcs11-pin-file`).
    File(PathBuf),
    /// A PIN in hand.
    Given(Pin),
}

impl PinSource {
    pub(crate) fn resolve(self, token: &str, pin_pad: bool) -> Result<Option<Pin>, Pkcs11Error> {
        use std::io::IsTerminal;
        match self {
            PinSource::File(p) => Pin::from_file(&p).map(Some),
            PinSource::Given(p) => Ok(Some(p)),
            PinSource::Default => {
                if let Some(p) = std::env::var_os(PIN_FILE_ENV) {
                    Pin::from_file(Path::new(&p)).map(Some)
                } else if pin_pad {
                    Ok(None)
                } else if std::io::stdin().is_terminal() {
                    let pin = rpassword::prompt_password(format!("PIN for PKCS#11 token {token}: "))
                        .map_err(|source| Pkcs11Error::PinFile {
                            path: PathBuf::from("/dev/tty"),
                            source,
                        })?;
                    Ok(Some(Pin::new(pin)))
                } else {
                    Err(Pkcs11Error::NoPin(token.to_owned()))
                }
            }
        }
    }
}

/// How to reach PKCS#11 tokens: the module and the PIN. Nothing is loaded or read until a
/// `pkcs11:` key is used.
#[derive(Debug)]
pub struct Pkcs11Config {
    /// The module (shared library); `None` means `$STAMP_PKCS11_MODULE`.
    pub module: Option<PathBuf>,
    /// Where the user PIN comes from.
    pub pin: PinSource,
    /// Most sessions open at once per token (operations beyond wait for a free session).
    pub max_sessions: usize,
}

impl Default for Pkcs11Config {
    fn default() -> Self {
        Pkcs11Config {
            module: None,
            pin: PinSource::Default,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_files_are_checked_like_passphrase_files() {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        writeln!(f, "1234").unwrap();
        let pin = Pin::from_file(&p).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(pin.auth().expose_secret(), "1234");
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Pin::from_file(&p),
            Err(Pkcs11Error::PinFileInsecure { .. })
        ));
        assert!(matches!(
            Pin::from_file(&dir.path().join("none")),
            Err(Pkcs11Error::PinFile { .. })
        ));
    }
}
