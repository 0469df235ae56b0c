//! The PKCS#11 backend: keys generated and used inside a token (an HSM, a YubiHSM 2, a cloud
//! HSM's module, SoftHSM2 for tests), named by RFC 7512 URIs such as
//! `pkcs11:token=site;object=site-issuing-ca`.
//!
//! - Keys are generated in the token as token objects, private, sensitive and not extractable, with
//!   CKA_LABEL (the key's name) and a random CKA_ID; signing keys may only sign and key-agreement
//!   keys may only derive (CKA_DECRYPT, CKA_UNWRAP, CKA_ENCRYPT and CKA_WRAP are false). Every new
//!   key passes a pairwise check (sign and verify; agree both ways with an ephemeral key) before it
//!   is handed out.
//! - ECDSA (P-256, P-384) hashes locally and signs the digest with CKM_ECDSA, so tokens without
//!   CKM_ECDSA_SHA256 (SoftHSM2) work; the token's r||s is re-encoded as a DER Ecdsa-Sig-Value.
//!   Ed25519 uses CKM_EDDSA where the token has it.
//! - ECDH uses CKM_ECDH1_DERIVE with CKD_NULL into a session-only CKK_GENERIC_SECRET whose value
//!   (the shared x-coordinate) is read and the object destroyed. No private key value is ever read.
//! - The module path and the PIN come from configuration ([`Pkcs11Config`]), never from a URI.
//! - Operations run on a pool of logged-in sessions, so several threads sign in parallel, and an
//!   operation that finds its session, login or device gone reconnects and is retried once
//!   (see the `token` module).

mod config;
mod error;
mod key;
mod kind;
mod token;
pub mod uri;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use stamp_core::key::{KeyAgreement, KeyAgreementAlgorithm, SignatureAlgorithm, Signer};

pub use config::{Pin, PinSource, Pkcs11Config, DEFAULT_MAX_SESSIONS, MODULE_ENV, PIN_FILE_ENV};
pub use error::Pkcs11Error;
use key::{KeyObject, Opened};
pub use key::{Pkcs11KeyAgreement, Pkcs11Signer};
use kind::{decode_point, Kind};
use token::{Module, Token};
pub use uri::{Pkcs11Uri, UriError};

use crate::{KeyRef, KeyStore, KeyStoreError};

enum PinState {
    Unresolved(PinSource),
    Resolved(Option<Arc<Pin>>),
    /// The token refused the PIN: it is not offered again (each try counts towards locking).
    Refused,
}

/// Keys in PKCS#11 tokens of one module.
pub struct Pkcs11Store {
    module_path: Option<PathBuf>,
    pin: Mutex<PinState>,
    max_sessions: usize,
    new_keys: Option<Pkcs11Uri>,
    module: OnceLock<Arc<Module>>,
    tokens: Mutex<Vec<Arc<Token>>>,
}

impl std::fmt::Debug for Pkcs11Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Store")
            .field("module", &self.module_path)
            .field("new_keys", &self.new_keys.as_ref().map(ToString::to_string))
            .finish_non_exhaustive()
    }
}

impl Pkcs11Store {
    /// A store using `config`; new keys go to the token `new_keys` names (if any).
    pub fn new(config: Pkcs11Config, new_keys: Option<Pkcs11Uri>) -> Self {
        Pkcs11Store {
            module_path: config.module,
            pin: Mutex::new(match config.pin {
                PinSource::Given(p) => PinState::Resolved(Some(Arc::new(p))),
                other => PinState::Unresolved(other),
            }),
            max_sessions: config.max_sessions,
            new_keys: new_keys.map(|u| u.token_only()),
            module: OnceLock::new(),
            tokens: Mutex::new(Vec::new()),
        }
    }

    fn module(&self) -> Result<Arc<Module>, Pkcs11Error> {
        if let Some(m) = self.module.get() {
            return Ok(m.clone());
        }
        let path = match &self.module_path {
            Some(p) => p.clone(),
            None => std::env::var_os(MODULE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or(Pkcs11Error::NoModule)?,
        };
        let m = token::load_module(&path)?;
        Ok(self.module.get_or_init(|| m).clone())
    }

    /// The connected token `uri` names (connecting and logging in on first use).
    fn token(&self, uri: &Pkcs11Uri) -> Result<Arc<Token>, Pkcs11Error> {
        let want = uri.token_only();
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = tokens.iter().find(|t| t.uri == want) {
            return Ok(t.clone());
        }
        let module = self.module()?;
        let pin = |name: &str, pin_pad: bool| {
            let mut state = self.pin.lock().unwrap_or_else(PoisonError::into_inner);
            let resolved = match std::mem::replace(&mut *state, PinState::Refused) {
                PinState::Resolved(p) => p,
                PinState::Refused => {
                    return Err(Pkcs11Error::WrongPin {
                        token: name.to_owned(),
                        warning: " (refused before; not tried again)",
                    })
                }
                PinState::Unresolved(source) => {
                    let again = match &source {
                        PinSource::File(p) => PinSource::File(p.clone()),
                        _ => PinSource::Default,
                    };
                    match source.resolve(name, pin_pad) {
                        Ok(p) => p.map(Arc::new),
                        Err(e) => {
                            *state = PinState::Unresolved(again);
                            return Err(e);
                        }
                    }
                }
            };
            *state = PinState::Resolved(resolved.clone());
            Ok(resolved)
        };
        let t = match Token::connect(module, &want, pin, self.max_sessions) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                if matches!(e, Pkcs11Error::WrongPin { .. } | Pkcs11Error::PinLocked(_)) {
                    *self.pin.lock().unwrap_or_else(PoisonError::into_inner) = PinState::Refused;
                }
                return Err(e);
            }
        };
        tokens.push(t.clone());
        Ok(t)
    }

    fn target(&self) -> Result<&Pkcs11Uri, Pkcs11Error> {
        self.new_keys.as_ref().ok_or(Pkcs11Error::Uri(UriError::NoToken))
    }

    /// Finds the private key `uri` names and reads its type and public key.
    fn open(&self, uri: &Pkcs11Uri) -> Result<Opened, Pkcs11Error> {
        let token = self.token(uri)?;
        let key_ref = uri.to_string();
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(l) = &uri.object {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let found = token.with_session("finding a key", |s, generation| {
            let handles = s.find_objects(&template)?;
            let [h] = handles.as_slice() else {
                return Ok(Err(handles.len()));
            };
            let attrs = s.get_attributes(
                *h,
                &[
                    AttributeType::Id,
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::Sign,
                ],
            )?;
            let mut id = None;
            let mut key_type = None;
            let mut params = None;
            let mut sign = false;
            for a in attrs {
                match a {
                    Attribute::Id(v) => id = Some(v),
                    Attribute::KeyType(t) => key_type = Some(t),
                    Attribute::EcParams(p) => params = Some(p),
                    Attribute::Sign(b) => sign = b,
                    _ => {}
                }
            }
            let id = id.unwrap_or_default();
            // The public key: the public key object with the same ID, else CKA_EC_POINT of the
            // private key (some tokens keep it there).
            let mut pub_template = vec![
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(id.clone()),
            ];
            if let Some(l) = &uri.object {
                pub_template.push(Attribute::Label(l.as_bytes().to_vec()));
            }
            let point_of = |h| -> Result<Option<Vec<u8>>, CkError> {
                Ok(s.get_attributes(h, &[AttributeType::EcPoint])?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcPoint(p) => Some(p),
                        _ => None,
                    }))
            };
            let mut point = None;
            if let [p] = s.find_objects(&pub_template)?.as_slice() {
                point = point_of(*p)?;
            }
            if point.is_none() {
                point = point_of(*h)?;
            }
            Ok(Ok((*h, generation, id, key_type, params, sign, point)))
        })?;
        let (handle, generation, id, key_type, params, sign, point) = match found {
            Ok(v) => v,
            Err(0) => return Err(Pkcs11Error::KeyNotFound(key_ref)),
            Err(_) => return Err(Pkcs11Error::AmbiguousKey(key_ref)),
        };
        let unusable = |why: String| Pkcs11Error::UnusableKey {
            key: key_ref.clone(),
            why,
        };
        let kind = match (key_type, params) {
            (Some(t), Some(p)) => Kind::detect(t, &p, sign),
            _ => None,
        }
        .ok_or_else(|| {
            unusable(
                "not an ECDSA P-256/P-384, Ed25519 or ECDH P-256/P-384 key (or lacks CKA_SIGN/CKA_DERIVE)"
                    .into(),
            )
        })?;
        token.require(kind.use_mechanism(), kind.name())?;
        let public = point
            .as_deref()
            .and_then(|p| decode_point(p, kind.public_len()))
            .ok_or_else(|| unusable("no readable public key (CKA_EC_POINT) with the same CKA_ID".into()))?;
        Ok(Opened {
            key: KeyObject {
                token,
                key_ref,
                label: uri.object.clone(),
                id,
                cached: Mutex::new(Some((generation, handle))),
            },
            kind,
            public,
        })
    }

    /// Generates a key pair labelled `name` in the target token and checks it pairwise.
    fn generate(&self, name: &str, kind: Kind) -> Result<(Pkcs11Uri, Opened), Pkcs11Error> {
        let target = self.target()?.clone();
        let token = self.token(&target)?;
        let mech = kind.generation_mechanism();
        token.require(mech.mechanism_type(), kind.name())?;
        token.require(kind.use_mechanism(), kind.name())?;
        let mut id = vec![0u8; 16];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| Pkcs11Error::Token {
                token: token.name.clone(),
                op: "generating a key ID",
                rv: "the system random generator failed".into(),
            })?;
        let label = name.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
            Attribute::EcParams(kind.ec_params().to_vec()),
            Attribute::Verify(kind.is_sign()),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
            Attribute::Sign(kind.is_sign()),
            Attribute::Derive(!kind.is_sign()),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
        ];
        let made = token.once("generating a key", |s, generation| {
            if !s.find_objects(&[Attribute::Label(label.clone())])?.is_empty() {
                return Ok(None);
            }
            let (public, private) = match s.generate_key_pair(&mech, &public_template, &private_template) {
                // Tokens with short object IDs (a YubiHSM's are 16 bits) refuse ours: let the
                // token choose the ID. Nothing was created by the refused call.
                Err(CkError::Pkcs11(RvError::AttributeValueInvalid, _)) => {
                    let without_id = |t: &[Attribute]| -> Vec<Attribute> {
                        t.iter()
                            .filter(|a| !matches!(a, Attribute::Id(_)))
                            .cloned()
                            .collect()
                    };
                    s.generate_key_pair(
                        &mech,
                        &without_id(&public_template),
                        &without_id(&private_template),
                    )?
                }
                other => other?,
            };
            let read = s
                .get_attributes(public, &[AttributeType::EcPoint])
                .and_then(|mut a| {
                    a.extend(s.get_attributes(private, &[AttributeType::Id])?);
                    Ok(a)
                });
            let (mut point, mut id) = (None, None);
            match read {
                Ok(attrs) => {
                    for a in attrs {
                        match a {
                            Attribute::EcPoint(p) => point = Some(p),
                            Attribute::Id(i) => id = Some(i),
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    let _ = s.destroy_object(private);
                    let _ = s.destroy_object(public);
                    return Err(e);
                }
            }
            Ok(Some((public, private, generation, point, id.unwrap_or_default())))
        })?;
        let Some((public_handle, private_handle, generation, point, id)) = made else {
            return Err(Pkcs11Error::LabelExists {
                token: token.name.clone(),
                label: name.to_owned(),
            });
        };
        let uri = target.with_object(name);
        let key_ref = uri.to_string();
        let discard = |why: String| {
            let _ = token.with_session("destroying a failed key", |s, _| {
                let _ = s.destroy_object(private_handle);
                s.destroy_object(public_handle)
            });
            Pkcs11Error::UnusableKey {
                key: key_ref.clone(),
                why,
            }
        };
        let Some(public) = point.as_deref().and_then(|p| decode_point(p, kind.public_len())) else {
            return Err(discard("the token returned no valid public key".into()));
        };
        let opened = Opened {
            key: KeyObject {
                token: token.clone(),
                key_ref: key_ref.clone(),
                label: Some(name.to_owned()),
                id,
                cached: Mutex::new(Some((generation, private_handle))),
            },
            kind,
            public,
        };
        let consistent = match kind {
            Kind::Sign(_) => opened
                .signer_check()
                .map_err(|e| discard(format!("pairwise check: {e}")))?,
            Kind::Agree(_) => opened
                .agreement_check()
                .map_err(|e| discard(format!("pairwise check: {e}")))?,
        };
        if !consistent {
            return Err(discard("failed its pairwise consistency check".into()));
        }
        Ok((uri, opened))
    }

    /// Destroys the private and public key objects `uri` names (a key made by a ceremony that
    /// then failed). Absent objects are not an error.
    pub fn destroy(&self, uri: &Pkcs11Uri) -> Result<(), Pkcs11Error> {
        let token = self.token(uri)?;
        let mut template = Vec::new();
        if let Some(l) = &uri.object {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        if template.is_empty() {
            return Err(Pkcs11Error::Uri(UriError::NoObject));
        }
        token.with_session("destroying a key", |s, _| {
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                let mut t = template.clone();
                t.push(Attribute::Class(class));
                for h in s.find_objects(&t)? {
                    s.destroy_object(h)?;
                }
            }
            Ok(())
        })
    }
}

fn pkcs11_uri(key: &KeyRef) -> Result<&Pkcs11Uri, KeyStoreError> {
    match key {
        KeyRef::Pkcs11(u) => Ok(u),
        other => Err(KeyStoreError::BadKeyRef(other.to_string())),
    }
}

impl KeyStore for Pkcs11Store {
    fn generate_signer(
        &self,
        name: &str,
        alg: SignatureAlgorithm,
    ) -> Result<(KeyRef, Box<dyn Signer>), KeyStoreError> {
        if alg == SignatureAlgorithm::Rsa3072PssSha256 {
            return Err(KeyStoreError::Pkcs11(Pkcs11Error::MechanismNotSupported {
                token: self
                    .new_keys
                    .as_ref()
                    .and_then(|u| u.token.clone())
                    .unwrap_or_default(),
                mechanism: "RSA keys (not yet supported by stamp's PKCS#11 backend)".into(),
                purpose: format!("key {name}; use ECDSA P-256 or Ed25519 in a token"),
            }));
        }
        let (uri, opened) = self.generate(name, Kind::Sign(alg))?;
        let key_ref = uri.to_string();
        Ok((KeyRef::Pkcs11(uri), Box::new(opened.signer(&key_ref)?)))
    }

    fn generate_key_agreement(
        &self,
        name: &str,
        alg: KeyAgreementAlgorithm,
    ) -> Result<(KeyRef, Box<dyn KeyAgreement>), KeyStoreError> {
        let (uri, opened) = self.generate(name, Kind::Agree(alg))?;
        let key_ref = uri.to_string();
        Ok((KeyRef::Pkcs11(uri), Box::new(opened.key_agreement(&key_ref)?)))
    }

    fn open_signer(&self, key: &KeyRef) -> Result<Box<dyn Signer>, KeyStoreError> {
        let uri = pkcs11_uri(key)?;
        Ok(Box::new(self.open(uri)?.signer(&uri.to_string())?))
    }

    fn open_key_agreement(&self, key: &KeyRef) -> Result<Box<dyn KeyAgreement>, KeyStoreError> {
        let uri = pkcs11_uri(key)?;
        Ok(Box::new(self.open(uri)?.key_agreement(&uri.to_string())?))
    }
}
