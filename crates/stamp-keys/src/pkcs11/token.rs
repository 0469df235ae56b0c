//! Modules, tokens and the session pool.
//!
//! A module (shared library) is loaded and initialised once per process and kept. A [`Token`] is
//! one token of a module, found by the token attributes of a URI, with a pool of logged-in
//! sessions: concurrent operations each take a session of their own (up to `max_sessions`), so a
//! token that can work in parallel does. PKCS#11 login state belongs to the application, so the
//! first session logs in and later ones find themselves logged in (or log in again if the token
//! lost the state).
//!
//! When an operation fails because the session, the login or the device went away
//! (`CKR_SESSION_HANDLE_INVALID`, `CKR_DEVICE_REMOVED`, `CKR_CRYPTOKI_NOT_INITIALIZED`, ...), the
//! token reconnects once: it drops every pooled session, initialises the module again if needed,
//! finds the token's slot again by its attributes (a re-inserted device may be in another slot),
//! logs in, and the operation is retried once. Only idempotent operations (sign, derive, read) are
//! retried; key generation never is.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

/// Most tries of an idempotent operation (signing, key agreement) across reconnects.
const IDEMPOTENT_ATTEMPTS: u32 = 3;
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;

use super::error::{self, is_connection_lost, Pkcs11Error};
use super::uri::Pkcs11Uri;
use super::Pin;

/// A loaded, initialised PKCS#11 module.
pub(crate) struct Module {
    pub(crate) path: PathBuf,
    pub(crate) ctx: Pkcs11,
}

/// Modules loaded by this process: a module is initialised once and never finalised, since every
/// key opened from it may still be in use.
static MODULES: Mutex<Vec<Arc<Module>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `C_Initialize`, accepting a module this process already initialised.
fn initialize(ctx: &Pkcs11) -> Result<(), CkError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Loads and initialises the module at `path`, or returns the one this process already loaded.
pub(crate) fn load_module(path: &Path) -> Result<Arc<Module>, Pkcs11Error> {
    if !path.exists() {
        return Err(Pkcs11Error::ModuleNotFound(path.to_owned()));
    }
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mut modules = lock(&MODULES);
    if let Some(m) = modules.iter().find(|m| m.path == canonical) {
        return Ok(m.clone());
    }
    let load_err = |reason: String| Pkcs11Error::ModuleLoad {
        path: path.to_owned(),
        reason,
    };
    let ctx = Pkcs11::new(&canonical).map_err(|e| load_err(e.to_string()))?;
    initialize(&ctx).map_err(|e| match error::rv_of(&e) {
        Some(rv) => load_err(format!("C_Initialize returned {}", error::ckr_name(rv))),
        None => load_err(e.to_string()),
    })?;
    let m = Arc::new(Module { path: canonical, ctx });
    modules.push(m.clone());
    Ok(m)
}

/// The slot holding the token `uri` names.
fn find_slot(module: &Module, uri: &Pkcs11Uri) -> Result<Slot, Pkcs11Error> {
    let name = uri.token_description();
    let ck = |e| error::map(&name, "listing slots", e);
    let mut matches = Vec::new();
    let mut present = Vec::new();
    let mut uninitialised = 0;
    for slot in module.ctx.get_slots_with_token().map_err(ck)? {
        let info = match module.ctx.get_token_info(slot) {
            Ok(i) => i,
            // A token removed between the two calls.
            Err(CkError::Pkcs11(RvError::TokenNotPresent, _)) => continue,
            Err(e) => return Err(ck(e)),
        };
        if !info.token_initialized() {
            uninitialised += 1;
            continue;
        }
        present.push(format!("{:?}", info.label().trim_end()));
        if uri.matches_token(
            info.label(),
            info.manufacturer_id(),
            info.model(),
            info.serial_number(),
        ) {
            matches.push((slot, info));
        }
    }
    match matches.len() {
        0 => Err(Pkcs11Error::TokenNotFound {
            token: name,
            module: module.path.clone(),
            present: if present.is_empty() {
                "none".to_owned()
            } else {
                present.join(", ")
            },
            hint: if uninitialised > 0 {
                "; there is also an uninitialised token: initialise it before use (see docs/hsm.md)"
            } else {
                ""
            },
        }),
        1 => {
            let (slot, info) = matches.remove(0);
            if !info.user_pin_initialized() {
                return Err(Pkcs11Error::TokenNotInitialized(name));
            }
            if info.user_pin_locked() {
                return Err(Pkcs11Error::PinLocked(name));
            }
            Ok(slot)
        }
        _ => Err(Pkcs11Error::AmbiguousToken(name)),
    }
}

/// One token and its session pool.
pub(crate) struct Token {
    module: Arc<Module>,
    /// The token attributes it was found by.
    pub(crate) uri: Pkcs11Uri,
    /// For messages.
    pub(crate) name: String,
    pin: Option<Arc<Pin>>,
    max_sessions: usize,
    mechanisms: Vec<MechanismType>,
    pool: Mutex<Pool>,
    returned: Condvar,
}

struct Pool {
    slot: Slot,
    /// Bumped on every reconnect; sessions and object handles of an older generation are stale.
    generation: u64,
    idle: Vec<Session>,
    /// Sessions of this generation, idle or lent out.
    open: usize,
}

/// A session lent out of the pool; goes back when dropped.
pub(crate) struct Lease<'a> {
    token: &'a Token,
    session: Option<Session>,
    pub(crate) generation: u64,
}

impl Lease<'_> {
    pub(crate) fn session(&self) -> Result<&Session, CkError> {
        self.session.as_ref().ok_or(CkError::Pkcs11(
            RvError::SessionClosed,
            cryptoki::context::Function::Sign,
        ))
    }

    /// Closes the session instead of returning it (it failed).
    fn discard(mut self) {
        let session = self.session.take();
        drop(session);
        let mut pool = lock(&self.token.pool);
        if pool.generation == self.generation {
            pool.open = pool.open.saturating_sub(1);
        }
        self.token.returned.notify_one();
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let mut pool = lock(&self.token.pool);
            if pool.generation == self.generation {
                pool.idle.push(s);
            }
            self.token.returned.notify_one();
        }
    }
}

impl Token {
    /// Finds the token `uri` names in `module`, checks it, opens a session and logs in.
    pub(crate) fn connect(
        module: Arc<Module>,
        uri: &Pkcs11Uri,
        pin: impl FnOnce(&str, bool) -> Result<Option<Arc<Pin>>, Pkcs11Error>,
        max_sessions: usize,
    ) -> Result<Token, Pkcs11Error> {
        let uri = uri.token_only();
        let name = uri.token_description();
        let slot = find_slot(&module, &uri)?;
        let info = module
            .ctx
            .get_token_info(slot)
            .map_err(|e| error::map(&name, "reading token information", e))?;
        let pin = if info.login_required() {
            pin(&name, info.protected_authentication_path())?
        } else {
            None
        };
        let mechanisms = module
            .ctx
            .get_mechanism_list(slot)
            .map_err(|e| error::map(&name, "listing mechanisms", e))?;
        let token = Token {
            module,
            uri,
            name,
            pin,
            max_sessions: max_sessions.max(1),
            mechanisms,
            pool: Mutex::new(Pool {
                slot,
                generation: 0,
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        };
        let session = token.open_session(slot).map_err(|e| token.login_error(slot, e))?;
        let mut pool = lock(&token.pool);
        pool.idle.push(session);
        pool.open = 1;
        drop(pool);
        Ok(token)
    }

    /// A login error, with a warning when the token says the next wrong PIN locks it.
    fn login_error(&self, slot: Slot, e: CkError) -> Pkcs11Error {
        match error::map(&self.name, "login", e) {
            Pkcs11Error::WrongPin { token, .. } => {
                let info = self.module.ctx.get_token_info(slot).ok();
                if info.as_ref().is_some_and(|i| i.user_pin_locked()) {
                    Pkcs11Error::PinLocked(token)
                } else if info.as_ref().is_some_and(|i| i.user_pin_final_try()) {
                    Pkcs11Error::WrongPin {
                        token,
                        warning: " (one more wrong PIN locks the token)",
                    }
                } else {
                    Pkcs11Error::WrongPin { token, warning: "" }
                }
            }
            other => other,
        }
    }

    /// Whether the token offers `mech`.
    pub(crate) fn require(&self, mech: MechanismType, purpose: &str) -> Result<(), Pkcs11Error> {
        if self.mechanisms.contains(&mech) {
            Ok(())
        } else {
            Err(Pkcs11Error::MechanismNotSupported {
                token: self.name.clone(),
                mechanism: mech.to_string(),
                purpose: purpose.to_owned(),
            })
        }
    }

    /// Opens a read-write session on `slot` and makes sure it is logged in.
    fn open_session(&self, slot: Slot) -> Result<Session, CkError> {
        let session = self.module.ctx.open_rw_session(slot)?;
        if self.pin.is_some() || self.module.ctx.get_token_info(slot)?.login_required() {
            let state = session.get_session_info()?.session_state();
            if matches!(state, SessionState::RoPublic | SessionState::RwPublic) {
                let pin = self.pin.as_ref().map(|p| p.auth());
                match session.login(UserType::User, pin) {
                    Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(session)
    }

    /// Borrows a logged-in session, opening one if none is idle and fewer than `max_sessions` are
    /// open, else waiting for one to come back.
    pub(crate) fn checkout(&self) -> Result<Lease<'_>, (CkError, u64)> {
        let mut pool = lock(&self.pool);
        loop {
            if let Some(s) = pool.idle.pop() {
                return Ok(Lease {
                    token: self,
                    session: Some(s),
                    generation: pool.generation,
                });
            }
            if pool.open < self.max_sessions {
                pool.open += 1;
                let (slot, generation) = (pool.slot, pool.generation);
                drop(pool);
                return match self.open_session(slot) {
                    Ok(s) => Ok(Lease {
                        token: self,
                        session: Some(s),
                        generation,
                    }),
                    Err(e) => {
                        let mut pool = lock(&self.pool);
                        if pool.generation == generation {
                            pool.open = pool.open.saturating_sub(1);
                            // The token's own session limit is lower than ours: wait for one.
                            if matches!(e, CkError::Pkcs11(RvError::SessionCount, _)) && pool.open > 0 {
                                pool = self.returned.wait(pool).unwrap_or_else(PoisonError::into_inner);
                                drop(pool);
                                return self.checkout();
                            }
                        }
                        Err((e, generation))
                    }
                };
            }
            pool = self.returned.wait(pool).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Drops every session and logs in again on the token's (possibly new) slot, unless another
    /// thread already reconnected since `seen` generation.
    fn reconnect(&self, seen: u64) -> Result<(), Pkcs11Error> {
        let mut pool = lock(&self.pool);
        if pool.generation != seen {
            return Ok(());
        }
        pool.generation += 1;
        pool.idle.clear();
        pool.open = 0;
        self.returned.notify_all();
        initialize(&self.module.ctx).map_err(|e| error::map(&self.name, "re-initialising the module", e))?;
        let slot = find_slot(&self.module, &self.uri)?;
        let session = self.open_session(slot).map_err(|e| self.login_error(slot, e))?;
        pool.slot = slot;
        pool.idle.push(session);
        pool.open = 1;
        Ok(())
    }

    fn attempt<T>(
        &self,
        f: &mut impl FnMut(&Session, u64) -> Result<T, CkError>,
    ) -> Result<T, (CkError, u64)> {
        let lease = self.checkout()?;
        let generation = lease.generation;
        let result = lease.session().and_then(|s| f(s, generation));
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                if is_connection_lost(&e) {
                    lease.discard();
                }
                Err((e, generation))
            }
        }
    }

    /// Runs an idempotent operation on a pooled session; if the session, login or device was lost,
    /// reconnects and runs it again, at most [`IDEMPOTENT_ATTEMPTS`] times in all (other threads may
    /// be reconnecting at the same moment). `f` gets the session and its generation (object handles
    /// found in an older generation must be looked up again).
    pub(crate) fn with_session<T>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&Session, u64) -> Result<T, CkError>,
    ) -> Result<T, Pkcs11Error> {
        let mut attempt = 1;
        loop {
            match self.attempt(&mut f) {
                Ok(v) => return Ok(v),
                // SoftHSM2 reports a login lost in the middle of an operation as
                // CKR_GENERAL_ERROR rather than CKR_USER_NOT_LOGGED_IN; for idempotent operations
                // retrying after reconnecting is safe, and a persistent error is still reported.
                Err((e, seen))
                    if attempt < IDEMPOTENT_ATTEMPTS
                        && (is_connection_lost(&e) || error::rv_of(&e) == Some(RvError::GeneralError)) =>
                {
                    self.reconnect(seen)?;
                    attempt += 1;
                }
                Err((e, _)) if is_connection_lost(&e) => {
                    return Err(Pkcs11Error::DeviceLost {
                        token: self.name.clone(),
                        op,
                        rv: error::rv_of(&e)
                            .map(error::ckr_name)
                            .unwrap_or_else(|| e.to_string()),
                    })
                }
                Err((e, _)) => return Err(error::map(&self.name, op, e)),
            }
        }
    }

    /// Runs an operation that must not be repeated (key generation) on a pooled session; a lost
    /// session is reported, not retried.
    pub(crate) fn once<T>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&Session, u64) -> Result<T, CkError>,
    ) -> Result<T, Pkcs11Error> {
        self.attempt(&mut f).map_err(|(e, seen)| {
            if is_connection_lost(&e) {
                // Leave the pool usable for the next operation.
                let _ = self.reconnect(seen);
                Pkcs11Error::DeviceLost {
                    token: self.name.clone(),
                    op,
                    rv: error::rv_of(&e)
                        .map(error::ckr_name)
                        .unwrap_or_else(|| e.to_string()),
                }
            } else {
                error::map(&self.name, op, e)
            }
        })
    }
}
