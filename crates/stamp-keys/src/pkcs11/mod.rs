//! The PKCS#11 backend: keys generated and used inside a token (an HSM, a YubiHSM 2, a cloud
//! HSM's module, SoftHSM2 for tests), named by RFC 7512 URIs such as
//! `pkcs11:token=site;object=site-issuing-ca`.
//!
//! - Keys are generated in the token as token objects, private, sensitive and not extractable, with
//!   CKA_LABEL (the key's name) and a random CKA_ID; signing keys may only sign and key-agreement
//!   keys may only derive (CKA_DECRYPT, CKA_UNWRAP, CKA_ENCRYPT and CKA_WRAP are false). Every new key passes a pairwise check (sign and verify; agree both ways
//!   with an ephemeral key) before it is handed out.
//! - ECDSA (P-256, P-384) hashes locally and signs the digest with CKM_ECDSA, so tokens without
//!   CKM_ECDSA_SHA256 (SoftHSM2) work; the token's r||s is re-encoded as a DER Ecdsa-Sig-Value.
//!   Ed25519 uses CKM_EDDSA where the token has it.
//! - ECDH uses CKM_ECDH1_DERIVE with CKD_NULL into a session-only CKK_GENERIC_SECRET whose value
//!   (the shared x-coordinate) is read and the object destroyed. No private key value is ever read.
//! - The module path and the PIN come from configuration ([`Pkcs11Config`]), never from a URI.
//! - Operations run on a pool of logged-in sessions, so several threads sign in parallel, and an
//!   operation that finds its session, login or device gone reconnects and is retried once
//!   (see [`token`]).

mod error;
mod token;
pub mod uri;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{agreement, digest};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use secrecy::SecretString;
use stamp_core::key::{
    KeyAgreement, KeyAgreementAlgorithm, KeyError, SharedSecret, SignatureAlgorithm, Signer,
};
use zeroize::Zeroizing;

pub use error::Pkcs11Error;
use token::{Module, Token};
pub use uri::{Pkcs11Uri, UriError};

use crate::{KeyRef, KeyStore, KeyStoreError};

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
    fn resolve(self, token: &str, pin_pad: bool) -> Result<Option<Pin>, Pkcs11Error> {
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

/// What a key is for, with its algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sign(SignatureAlgorithm),
    Agree(KeyAgreementAlgorithm),
}

/// DER OIDs for CKA_EC_PARAMS.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// The curve-name form some tokens use for Ed25519 (PrintableString "edwards25519").
const ED25519_NAME_PARAMS: &[u8] = b"\x13\x0cedwards25519";

impl Kind {
    fn ec_params(self) -> &'static [u8] {
        match self {
            Kind::Sign(SignatureAlgorithm::EcdsaP256Sha256)
            | Kind::Agree(KeyAgreementAlgorithm::EcdhP256) => P256_PARAMS,
            Kind::Sign(SignatureAlgorithm::EcdsaP384Sha384)
            | Kind::Agree(KeyAgreementAlgorithm::EcdhP384) => P384_PARAMS,
            Kind::Sign(SignatureAlgorithm::Ed25519) => ED25519_PARAMS,
        }
    }

    /// Length of the raw public key: an uncompressed point, or 32 bytes for Ed25519.
    fn public_len(self) -> usize {
        match self.ec_params() {
            P256_PARAMS => 65,
            P384_PARAMS => 97,
            _ => 32,
        }
    }

    fn generation_mechanism(self) -> Mechanism<'static> {
        match self {
            Kind::Sign(SignatureAlgorithm::Ed25519) => Mechanism::EccEdwardsKeyPairGen,
            _ => Mechanism::EccKeyPairGen,
        }
    }

    fn use_mechanism(self) -> MechanismType {
        match self {
            Kind::Sign(SignatureAlgorithm::Ed25519) => MechanismType::EDDSA,
            Kind::Sign(_) => MechanismType::ECDSA,
            Kind::Agree(_) => MechanismType::ECDH1_DERIVE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Sign(a) => a.name(),
            Kind::Agree(a) => a.name(),
        }
    }

    fn is_sign(self) -> bool {
        matches!(self, Kind::Sign(_))
    }

    /// The kind of a key from its CKA_KEY_TYPE, CKA_EC_PARAMS and whether it may sign.
    fn detect(key_type: KeyType, params: &[u8], sign: bool) -> Option<Kind> {
        if key_type == KeyType::EC_EDWARDS && (params == ED25519_PARAMS || params == ED25519_NAME_PARAMS) {
            return sign.then_some(Kind::Sign(SignatureAlgorithm::Ed25519));
        }
        if key_type != KeyType::EC {
            return None;
        }
        Some(match (params, sign) {
            (P256_PARAMS, true) => Kind::Sign(SignatureAlgorithm::EcdsaP256Sha256),
            (P384_PARAMS, true) => Kind::Sign(SignatureAlgorithm::EcdsaP384Sha384),
            (P256_PARAMS, false) => Kind::Agree(KeyAgreementAlgorithm::EcdhP256),
            (P384_PARAMS, false) => Kind::Agree(KeyAgreementAlgorithm::EcdhP384),
            _ => return None,
        })
    }
}

/// The raw public key from CKA_EC_POINT, which tokens give either as a DER OCTET STRING (the
/// standard) or raw.
fn decode_point(value: &[u8], len: usize) -> Option<Vec<u8>> {
    let raw = if value.len() == len {
        value
    } else if value.len() == len + 2 && value[0] == 0x04 && usize::from(value[1]) == len {
        &value[2..]
    } else {
        return None;
    };
    if len != 32 && raw[0] != 0x04 {
        return None;
    }
    Some(raw.to_vec())
}

/// DER `Ecdsa-Sig-Value` from the token's fixed-length r||s.
fn ecdsa_der(raw: &[u8], field_len: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * field_len {
        return None;
    }
    fn integer(out: &mut Vec<u8>, mut x: &[u8]) {
        while x.len() > 1 && x[0] == 0 {
            x = &x[1..];
        }
        let pad = x[0] & 0x80 != 0;
        out.push(0x02);
        out.push((x.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(x);
    }
    let (r, s) = raw.split_at(field_len);
    let mut body = Vec::with_capacity(raw.len() + 6);
    integer(&mut body, r);
    integer(&mut body, s);
    let mut der = Vec::with_capacity(body.len() + 3);
    der.push(0x30);
    if body.len() >= 0x80 {
        der.push(0x81);
    }
    der.push(body.len() as u8);
    der.extend_from_slice(&body);
    Some(der)
}

/// A private key object in a token, found again after a reconnect by its class, label and ID.
struct KeyObject {
    token: Arc<Token>,
    key_ref: String,
    label: Option<String>,
    id: Vec<u8>,
    cached: Mutex<Option<(u64, ObjectHandle)>>,
}

impl KeyObject {
    fn template(&self) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(self.id.clone()),
        ];
        if let Some(l) = &self.label {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        t
    }

    /// The object's handle in this session generation.
    fn handle(&self, s: &Session, generation: u64) -> Result<ObjectHandle, CkError> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((g, h)) = *cached {
            if g == generation {
                return Ok(h);
            }
        }
        match s.find_objects(&self.template())?.as_slice() {
            [h] => {
                *cached = Some((generation, *h));
                Ok(*h)
            }
            // Gone (deleted, or the token was replaced): report it as a stale handle.
            _ => Err(CkError::Pkcs11(
                RvError::KeyHandleInvalid,
                cryptoki::context::Function::FindObjects,
            )),
        }
    }

    fn key_error(&self, e: Pkcs11Error) -> KeyError {
        KeyError::Backend {
            backend: "pkcs11",
            key: self.key_ref.clone(),
            reason: e.to_string(),
        }
    }
}

/// A signing key in a token.
pub struct Pkcs11Signer {
    key: KeyObject,
    alg: SignatureAlgorithm,
    public: Vec<u8>,
}

impl std::fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11Signer({}, {})", self.key.key_ref, self.alg.name())
    }
}

impl Signer for Pkcs11Signer {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.alg
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let (data, field_len) = match self.alg {
            SignatureAlgorithm::EcdsaP256Sha256 => {
                (digest::digest(&digest::SHA256, message).as_ref().to_vec(), 32)
            }
            SignatureAlgorithm::EcdsaP384Sha384 => {
                (digest::digest(&digest::SHA384, message).as_ref().to_vec(), 48)
            }
            SignatureAlgorithm::Ed25519 => (message.to_vec(), 32),
        };
        let mechanism = match self.alg {
            SignatureAlgorithm::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            _ => Mechanism::Ecdsa,
        };
        // Signing is idempotent: a retry after a reconnect cannot do anything twice.
        let raw = self
            .key
            .token
            .with_session("signing", |s, generation| {
                let h = self.key.handle(s, generation)?;
                s.sign(&mechanism, h, &data)
            })
            .map_err(|e| self.key.key_error(e))?;
        let bad_length = || KeyError::Backend {
            backend: "pkcs11",
            key: self.key.key_ref.clone(),
            reason: format!("the token returned a {}-byte signature", raw.len()),
        };
        match self.alg {
            SignatureAlgorithm::Ed25519 if raw.len() == 64 => Ok(raw),
            SignatureAlgorithm::Ed25519 => Err(bad_length()),
            _ => ecdsa_der(&raw, field_len).ok_or_else(bad_length),
        }
    }
    fn key_ref(&self) -> &str {
        &self.key.key_ref
    }
}

/// A key-agreement key in a token.
pub struct Pkcs11KeyAgreement {
    key: KeyObject,
    alg: KeyAgreementAlgorithm,
    public: Vec<u8>,
}

impl std::fmt::Debug for Pkcs11KeyAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11KeyAgreement({}, {})", self.key.key_ref, self.alg.name())
    }
}

fn lc_agreement_alg(alg: KeyAgreementAlgorithm) -> &'static agreement::Algorithm {
    match alg {
        KeyAgreementAlgorithm::EcdhP256 => &agreement::ECDH_P256,
        KeyAgreementAlgorithm::EcdhP384 => &agreement::ECDH_P384,
    }
}

impl KeyAgreement for Pkcs11KeyAgreement {
    fn algorithm(&self) -> KeyAgreementAlgorithm {
        self.alg
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn agree(&self, peer_public_key: &[u8]) -> Result<SharedSecret, KeyError> {
        // Check the point here, so a bad point is reported as such whatever the token says.
        let lc_alg = lc_agreement_alg(self.alg);
        let parsed =
            agreement::ParsedPublicKey::try_from(&agreement::UnparsedPublicKey::new(lc_alg, peer_public_key));
        let uncompressed = peer_public_key.len() == Kind::Agree(self.alg).public_len();
        if parsed.is_err() || !uncompressed {
            return Err(KeyError::BadPeerKey(self.alg.name()));
        }
        let len = (Kind::Agree(self.alg).public_len() - 1) / 2;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::ValueLen((len as u64).into()),
        ];
        let mechanism = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), peer_public_key));
        // Deriving is idempotent (a retry makes the same secret in a new session object).
        let value = self
            .key
            .token
            .with_session("deriving a shared secret", |s, generation| {
                let h = self.key.handle(s, generation)?;
                let secret = s.derive_key(&mechanism, h, &template)?;
                let value = s.get_attributes(secret, &[AttributeType::Value]);
                let _ = s.destroy_object(secret);
                Ok(value?.into_iter().find_map(|a| match a {
                    Attribute::Value(v) => Some(Zeroizing::new(v)),
                    _ => None,
                }))
            })
            .map_err(|e| self.key.key_error(e))?;
        match value {
            Some(v) if v.len() == len => Ok(v),
            _ => Err(KeyError::Agree {
                backend: "pkcs11",
                key: self.key.key_ref.clone(),
            }),
        }
    }
    fn key_ref(&self) -> &str {
        &self.key.key_ref
    }
}

/// A key found or made in a token: the object and its kind and public key.
struct Opened {
    key: KeyObject,
    kind: Kind,
    public: Vec<u8>,
}

impl Opened {
    fn signer(self, key_ref: &str) -> Result<Pkcs11Signer, KeyStoreError> {
        match self.kind {
            Kind::Sign(alg) => Ok(Pkcs11Signer {
                key: self.key,
                alg,
                public: self.public,
            }),
            Kind::Agree(_) => Err(KeyStoreError::WrongAlgorithm {
                key: key_ref.to_owned(),
                found: "key-agreement",
                expected: "signing",
            }),
        }
    }

    fn key_agreement(self, key_ref: &str) -> Result<Pkcs11KeyAgreement, KeyStoreError> {
        match self.kind {
            Kind::Agree(alg) => Ok(Pkcs11KeyAgreement {
                key: self.key,
                alg,
                public: self.public,
            }),
            Kind::Sign(_) => Err(KeyStoreError::WrongAlgorithm {
                key: key_ref.to_owned(),
                found: "signing",
                expected: "key-agreement",
            }),
        }
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

impl Opened {
    /// Signs and verifies a fixed message with the new key.
    fn signer_check(&self) -> Result<bool, KeyError> {
        let Kind::Sign(alg) = self.kind else {
            return Ok(false);
        };
        let s = Pkcs11Signer {
            key: KeyObject {
                token: self.key.token.clone(),
                key_ref: self.key.key_ref.clone(),
                label: self.key.label.clone(),
                id: self.key.id.clone(),
                cached: Mutex::new(*self.key.cached.lock().unwrap_or_else(PoisonError::into_inner)),
            },
            alg,
            public: self.public.clone(),
        };
        let msg = b"stamp pairwise consistency check";
        let sig = s.sign(msg)?;
        Ok(stamp_core::key::verify_signature(alg, &self.public, msg, &sig))
    }

    /// Agrees with an ephemeral key in both directions.
    fn agreement_check(&self) -> Result<bool, KeyError> {
        let Kind::Agree(alg) = self.kind else {
            return Ok(false);
        };
        let k = Pkcs11KeyAgreement {
            key: KeyObject {
                token: self.key.token.clone(),
                key_ref: self.key.key_ref.clone(),
                label: self.key.label.clone(),
                id: self.key.id.clone(),
                cached: Mutex::new(*self.key.cached.lock().unwrap_or_else(PoisonError::into_inner)),
            },
            alg,
            public: self.public.clone(),
        };
        let lc = lc_agreement_alg(alg);
        let eph = agreement::PrivateKey::generate(lc).map_err(|_| KeyError::BadPeerKey(alg.name()))?;
        let eph_pub = eph
            .compute_public_key()
            .map_err(|_| KeyError::BadPeerKey(alg.name()))?;
        let ours = k.agree(eph_pub.as_ref())?;
        let peer = agreement::UnparsedPublicKey::new(lc, &self.public);
        Ok(agreement::agree(&eph, peer, (), |theirs| Ok(theirs == ours.as_slice())).unwrap_or(false))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_are_reencoded_as_der() {
        // r with its high bit set gets a zero byte; s with leading zeros loses them.
        let mut raw = vec![0x80; 32];
        raw.extend_from_slice(&[0u8; 31]);
        raw.push(0x05);
        let der = ecdsa_der(&raw, 32).unwrap();
        assert_eq!(&der[..5], &[0x30, 38, 0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 0x05]);
        // P-384 with both high bits set needs no long-form length (2 * 51 = 102 < 128).
        let der = ecdsa_der(&[0xff; 96], 48).unwrap();
        assert_eq!(der[1] as usize, der.len() - 2);
        assert!(ecdsa_der(&[1; 63], 32).is_none());
    }

    #[test]
    fn points_are_read_in_both_encodings() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[7; 64]);
        assert_eq!(decode_point(&point, 65).unwrap(), point);
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&point);
        assert_eq!(decode_point(&der, 65).unwrap(), point);
        assert!(decode_point(&point[1..], 65).is_none());
        let ed = [9u8; 32];
        let mut ed_der = vec![0x04, 32];
        ed_der.extend_from_slice(&ed);
        assert_eq!(decode_point(&ed_der, 32).unwrap(), ed);
    }

    #[test]
    fn key_kinds_from_attributes() {
        assert_eq!(
            Kind::detect(KeyType::EC, P256_PARAMS, true),
            Some(Kind::Sign(SignatureAlgorithm::EcdsaP256Sha256))
        );
        assert_eq!(
            Kind::detect(KeyType::EC, P384_PARAMS, false),
            Some(Kind::Agree(KeyAgreementAlgorithm::EcdhP384))
        );
        assert_eq!(
            Kind::detect(KeyType::EC_EDWARDS, ED25519_NAME_PARAMS, true),
            Some(Kind::Sign(SignatureAlgorithm::Ed25519))
        );
        assert_eq!(Kind::detect(KeyType::RSA, P256_PARAMS, true), None);
        // P-521 is not a stamp key type.
        let p521 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
        assert_eq!(Kind::detect(KeyType::EC, &p521, true), None);
    }

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
