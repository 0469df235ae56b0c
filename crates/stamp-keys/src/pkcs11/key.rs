//! Signers and key-agreement keys whose private keys stay in a token.

use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::{agreement, digest};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use stamp_core::key::{
    KeyAgreement, KeyAgreementAlgorithm, KeyError, SharedSecret, SignatureAlgorithm, Signer,
};
use zeroize::Zeroizing;

use super::kind::{ecdsa_der, Kind};
use super::token::Token;
use super::Pkcs11Error;
use crate::KeyStoreError;

/// A private key object in a token, found again after a reconnect by its class, label and ID.
pub(crate) struct KeyObject {
    pub(crate) token: Arc<Token>,
    pub(crate) key_ref: String,
    pub(crate) label: Option<String>,
    pub(crate) id: Vec<u8>,
    pub(crate) cached: Mutex<Option<(u64, ObjectHandle)>>,
}

impl KeyObject {
    /// Another handle on the same token object, with the cached session handle copied.
    pub(crate) fn duplicate(&self) -> KeyObject {
        KeyObject {
            token: self.token.clone(),
            key_ref: self.key_ref.clone(),
            label: self.label.clone(),
            id: self.id.clone(),
            cached: Mutex::new(*self.cached.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    pub(crate) fn template(&self) -> Vec<Attribute> {
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
    pub(crate) fn handle(&self, s: &Session, generation: u64) -> Result<ObjectHandle, CkError> {
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

    pub(crate) fn key_error(&self, e: Pkcs11Error) -> KeyError {
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

impl Pkcs11Signer {
    /// Signs with the token and returns its signature as the token gives it: Ed25519's 64 bytes,
    /// or ECDSA's fixed-length `r || s` (checked to be of the curve's length).
    fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let (data, mechanism) = match (self.alg, self.alg.ecdsa_digest()) {
            (SignatureAlgorithm::Ed25519, _) => (
                message.to_vec(),
                Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            ),
            // CKM_ECDSA signs a digest the caller has made.
            (_, Some(hash)) => (digest::digest(hash, message).as_ref().to_vec(), Mechanism::Ecdsa),
            (_, None) => {
                return Err(KeyError::Backend {
                    backend: "pkcs11",
                    key: self.key.key_ref.clone(),
                    reason: "RSA keys are not supported by stamp's PKCS#11 backend".into(),
                })
            }
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
        if raw.len() != self.alg.fixed_signature_len() {
            return Err(self.bad_length(raw.len()));
        }
        Ok(raw)
    }

    fn bad_length(&self, len: usize) -> KeyError {
        KeyError::Backend {
            backend: "pkcs11",
            key: self.key.key_ref.clone(),
            reason: format!("the token returned a {len}-byte signature"),
        }
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
        let raw = self.sign_raw(message)?;
        match self.alg.ecdsa_scalar_len() {
            // sign_raw checked the length, so the conversion cannot fail.
            Some(n) => ecdsa_der(&raw, n).ok_or_else(|| self.bad_length(raw.len())),
            None => Ok(raw),
        }
    }
    /// The token's signature as it comes: ECDSA is already `r || s` (PKCS#11 section 2.3.1), so
    /// it is not DER-encoded only for COSE to decode it again.
    fn sign_fixed(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.sign_raw(message)
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

impl KeyAgreement for Pkcs11KeyAgreement {
    fn algorithm(&self) -> KeyAgreementAlgorithm {
        self.alg
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn agree(&self, peer_public_key: &[u8]) -> Result<SharedSecret, KeyError> {
        // Check the point here, so a bad point is reported as such whatever the token says.
        let lc_alg = self.alg.agreement();
        let parsed =
            agreement::ParsedPublicKey::try_from(&agreement::UnparsedPublicKey::new(lc_alg, peer_public_key));
        let uncompressed = peer_public_key.len() == self.alg.public_key_len();
        if parsed.is_err() || !uncompressed {
            return Err(KeyError::BadPeerKey(self.alg.name()));
        }
        let len = self.alg.field_len();
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
pub(crate) struct Opened {
    pub(crate) key: KeyObject,
    pub(crate) kind: Kind,
    pub(crate) public: Vec<u8>,
}

impl Opened {
    pub(crate) fn signer(self, key_ref: &str) -> Result<Pkcs11Signer, KeyStoreError> {
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

    pub(crate) fn key_agreement(self, key_ref: &str) -> Result<Pkcs11KeyAgreement, KeyStoreError> {
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

impl Opened {
    /// Signs and verifies a fixed message with the new key.
    pub(crate) fn signer_check(&self) -> Result<bool, KeyError> {
        let Kind::Sign(alg) = self.kind else {
            return Ok(false);
        };
        let s = Pkcs11Signer {
            key: self.key.duplicate(),
            alg,
            public: self.public.clone(),
        };
        let msg = b"stamp pairwise consistency check";
        let sig = s.sign(msg)?;
        Ok(stamp_core::key::verify_signature(alg, &self.public, msg, &sig))
    }

    /// Agrees with an ephemeral key in both directions.
    pub(crate) fn agreement_check(&self) -> Result<bool, KeyError> {
        let Kind::Agree(alg) = self.kind else {
            return Ok(false);
        };
        let k = Pkcs11KeyAgreement {
            key: self.key.duplicate(),
            alg,
            public: self.public.clone(),
        };
        let lc = alg.agreement();
        let eph = agreement::PrivateKey::generate(lc).map_err(|_| KeyError::BadPeerKey(alg.name()))?;
        let eph_pub = eph
            .compute_public_key()
            .map_err(|_| KeyError::BadPeerKey(alg.name()))?;
        let ours = k.agree(eph_pub.as_ref())?;
        let peer = agreement::UnparsedPublicKey::new(lc, &self.public);
        Ok(agreement::agree(&eph, peer, (), |theirs| Ok(theirs == ours.as_slice())).unwrap_or(false))
    }
}
