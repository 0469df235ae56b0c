//! What can go wrong with a PKCS#11 module or token, each as its own case.

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};

use super::uri::UriError;

/// Errors of the PKCS#11 backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// No module was configured.
    #[error(
        "no PKCS#11 module configured: pass --pkcs11-module PATH or set {} \
         (SoftHSM2 on Debian: /usr/lib/softhsm/libsofthsm2.so)",
        super::MODULE_ENV
    )]
    NoModule,
    /// The module file does not exist.
    #[error("PKCS#11 module {0} not found")]
    ModuleNotFound(PathBuf),
    /// The module could not be loaded or initialised.
    #[error("PKCS#11 module {path} could not be loaded: {reason}")]
    ModuleLoad {
        /// The module.
        path: PathBuf,
        /// What the loader or the module said.
        reason: String,
    },
    /// A malformed PKCS#11 URI.
    #[error("invalid PKCS#11 URI: {0}")]
    Uri(#[from] UriError),
    /// No PIN was configured and there is no terminal to ask on.
    #[error(
        "no PIN for token {0}: pass --pkcs11-pin-file FILE or set {pin_env} (no terminal to prompt on)",
        pin_env = super::PIN_FILE_ENV
    )]
    NoPin(String),
    /// The PIN file could not be read.
    #[error("cannot read PIN file {path}: {source}")]
    PinFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Others can read the PIN file.
    #[error("PIN file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    PinFileInsecure {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The PIN file is empty.
    #[error("PIN file {0} is empty")]
    EmptyPin(PathBuf),
    /// No token with that label is present.
    #[error("PKCS#11 token {token} not found in {module} (tokens present: {present}){hint}")]
    TokenNotFound {
        /// The token asked for.
        token: String,
        /// The module.
        module: PathBuf,
        /// Labels of the initialised tokens present.
        present: String,
        /// A hint about uninitialised tokens.
        hint: &'static str,
    },
    /// Several tokens match the URI.
    #[error("several PKCS#11 tokens match {0}; add serial=... to the URI")]
    AmbiguousToken(String),
    /// The token has not been initialised, or has no user PIN.
    #[error("PKCS#11 token {0} is not initialised (no user PIN set); initialise it first (see docs/hsm.md)")]
    TokenNotInitialized(String),
    /// The token refused the PIN.
    #[error("wrong PIN for PKCS#11 token {token}{warning}")]
    WrongPin {
        /// The token.
        token: String,
        /// A warning when the next wrong PIN locks the token.
        warning: &'static str,
    },
    /// The user PIN is locked after too many wrong attempts.
    #[error("the user PIN of PKCS#11 token {0} is locked (too many wrong PINs); the security officer must unlock it")]
    PinLocked(String),
    /// The token lacks a mechanism stamp needs for this key type.
    #[error("PKCS#11 token {token} does not support {mechanism} (needed for {purpose})")]
    MechanismNotSupported {
        /// The token.
        token: String,
        /// The mechanism (`CKM_...`).
        mechanism: String,
        /// What stamp needed it for.
        purpose: String,
    },
    /// No key with that label on the token.
    #[error("no private key {0} on the token")]
    KeyNotFound(String),
    /// Several keys match the reference.
    #[error("several private keys match {0}; add id=... to the reference")]
    AmbiguousKey(String),
    /// A key with the label already exists: new keys never reuse or replace one.
    #[error(
        "PKCS#11 token {token} already holds an object labelled {label:?}; refusing to create a second key \
         with that label (use another token, or delete the old key: see docs/hsm.md)"
    )]
    LabelExists {
        /// The token.
        token: String,
        /// The label.
        label: String,
    },
    /// The key's type or curve is not one stamp uses.
    #[error("PKCS#11 key {key} is not usable: {why}")]
    UnusableKey {
        /// The key.
        key: String,
        /// Why.
        why: String,
    },
    /// The session was closed or the device removed, and reconnecting did not help.
    #[error("PKCS#11 token {token}: {op} failed after reconnecting ({rv}); is the device still present?")]
    DeviceLost {
        /// The token.
        token: String,
        /// The operation.
        op: &'static str,
        /// The last return value (`CKR_...`).
        rv: String,
    },
    /// Any other failure reported by the module.
    #[error("PKCS#11 token {token}: {op} failed: {rv}")]
    Token {
        /// The token.
        token: String,
        /// The operation.
        op: &'static str,
        /// The return value (`CKR_...`) or the wrapper's error.
        rv: String,
    },
}

/// `CKR_SESSION_HANDLE_INVALID` from `SessionHandleInvalid`.
pub(crate) fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The return value of a cryptoki error, if the module returned one.
pub(crate) fn rv_of(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Whether an error means the session, the login or the module's state was lost (the device was
/// removed, the session closed, the library re-initialised): reconnecting may cure it.
pub(crate) fn is_connection_lost(e: &CkError) -> bool {
    matches!(
        rv_of(e),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::SlotIdInvalid
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::CryptokiNotInitialized
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
        )
    )
}

/// Maps a cryptoki error from `op` on `token` to a specific error.
pub(crate) fn map(token: &str, op: &'static str, e: CkError) -> Pkcs11Error {
    let token = token.to_owned();
    match rv_of(&e) {
        Some(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange) => {
            Pkcs11Error::WrongPin { token, warning: "" }
        }
        Some(RvError::PinLocked) => Pkcs11Error::PinLocked(token),
        Some(RvError::UserPinNotInitialized | RvError::TokenNotRecognized) => {
            Pkcs11Error::TokenNotInitialized(token)
        }
        Some(
            rv @ (RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::CurveNotSupported
            | RvError::DomainParamsInvalid
            | RvError::FunctionNotSupported),
        ) => Pkcs11Error::MechanismNotSupported {
            token,
            mechanism: ckr_name(rv),
            purpose: op.to_owned(),
        },
        Some(rv) => Pkcs11Error::Token {
            token,
            op,
            rv: ckr_name(rv),
        },
        None => Pkcs11Error::Token {
            token,
            op,
            rv: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    fn ck(rv: RvError) -> CkError {
        CkError::Pkcs11(rv, Function::Login)
    }

    #[test]
    fn return_values_map_to_specific_errors() {
        assert_eq!(
            ckr_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert!(matches!(
            map("t", "login", ck(RvError::PinIncorrect)),
            Pkcs11Error::WrongPin { .. }
        ));
        assert!(matches!(
            map("t", "login", ck(RvError::PinLocked)),
            Pkcs11Error::PinLocked(_)
        ));
        assert!(matches!(
            map("t", "login", ck(RvError::UserPinNotInitialized)),
            Pkcs11Error::TokenNotInitialized(_)
        ));
        assert!(matches!(
            map("t", "sign", ck(RvError::MechanismInvalid)),
            Pkcs11Error::MechanismNotSupported { .. }
        ));
        assert!(matches!(
            map("t", "generate", ck(RvError::CurveNotSupported)),
            Pkcs11Error::MechanismNotSupported { .. }
        ));
        let e = map("t", "sign", ck(RvError::GeneralError));
        assert!(e.to_string().contains("CKR_GENERAL_ERROR"), "{e}");
        assert!(is_connection_lost(&ck(RvError::DeviceRemoved)));
        assert!(is_connection_lost(&ck(RvError::SessionHandleInvalid)));
        assert!(!is_connection_lost(&ck(RvError::PinIncorrect)));
        let locked = Pkcs11Error::PinLocked("hq".into()).to_string();
        assert!(locked.contains("locked"), "{locked}");
    }
}
