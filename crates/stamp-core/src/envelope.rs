//! Sealed envelopes: the signed and encrypted packages HQ and sites exchange.
//!
//! An envelope is a tagged `COSE_Sign1` (RFC 9052) whose payload is a tagged `COSE_Encrypt` with
//! exactly one recipient: ECDH-ES + A256KW (RFC 9053, HKDF-SHA-256 and AES-256 key wrap) to the
//! recipient's key-agreement key, and AES-256-GCM for the content. The signer's certificate chain
//! travels in the `x5chain` header (RFC 9360). The byte-level layout is specified in
//! `docs/formats/envelope.md`.
//!
//! Reading takes three steps, each with its own type:
//!
//! 1. [`parse`] checks the structure (size, tags, algorithms, header layout) and returns a
//!    [`SignedEnvelope`]. Nothing in it is trusted yet: the caller reads the chain from it,
//!    validates that chain itself and picks the signer's key.
//! 2. [`SignedEnvelope::verify`] checks the signature with that key and returns a
//!    [`VerifiedEnvelope`], a type nothing else can construct.
//! 3. [`VerifiedEnvelope::open`] decrypts with the recipient's key-agreement key.
//!
//! The recipient ID (for example the site ID) is bound twice: it is the PartyV identity of the
//! COSE KDF context the key-encryption key is derived from, and it is the `external_aad` of the
//! content encryption. An envelope sealed for one recipient cannot be opened as if it were for
//! another, even by a holder of the same key.
//!
//! Envelope bytes are not a unique identifier: ECDSA signatures are malleable and CBOR has several
//! encodings of the same structure. Replay and rollback checks must rely on signed content.

use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::{aead, agreement, hkdf, key_wrap, signature};
use ciborium::Value;
use coset::iana::{self, EnumI64};
use coset::{
    AsCborValue, CborSerializable, ContentType, CoseEncrypt, CoseKey, CoseKeyBuilder, CoseRecipient,
    CoseSign1, EncryptionContext, Header, HeaderBuilder, KeyType, Label, ProtectedHeader,
    RegisteredLabelWithPrivate, TaggedCborSerializable,
};
use zeroize::Zeroizing;

use crate::cose::{self, SignError, LABEL_X5CHAIN};
use crate::key::{KeyAgreement, KeyAgreementAlgorithm, KeyError, SignatureAlgorithm, Signer};
use crate::MAX_CERT_DER;

/// Most certificates accepted in the `x5chain` header.
pub const MAX_CHAIN_LEN: usize = 4;
/// Longest content type accepted (bytes).
pub const MAX_CONTENT_TYPE_LEN: usize = 128;
/// Longest recipient key ID (`kid`) accepted (bytes).
pub const MAX_KEY_ID_LEN: usize = 64;
/// Longest recipient ID accepted (bytes).
pub const MAX_RECIPIENT_ID_LEN: usize = 256;

/// CBOR tag of `COSE_Sign1`.
const TAG_SIGN1: u64 = iana::CborTag::CoseSign1 as u64;
/// CBOR tag of `COSE_Encrypt`.
const TAG_ENCRYPT: u64 = iana::CborTag::CoseEncrypt as u64;
/// Header label of `x5chain` (RFC 9360).
/// Header label of the ephemeral sender key (RFC 9053 section 6.4.1).
const LABEL_EPHEMERAL_KEY: i64 = iana::HeaderAlgorithmParameter::EphemeralKey as i64;
/// AES-GCM nonce length.
const IV_LEN: usize = 12;
/// AES-GCM tag length.
const GCM_TAG_LEN: usize = 16;
/// Content-encryption key length (AES-256).
const CEK_LEN: usize = 32;
/// Length of the CEK wrapped with AES key wrap (RFC 3394): the key plus one 8-byte block.
const WRAPPED_CEK_LEN: usize = CEK_LEN + 8;
/// keyDataLength of the KDF context: the bits of the AES-256 key-encryption key.
const KEK_BITS: u64 = 256;
/// Attempts at drawing a valid ephemeral private key before giving up.
const EPHEMERAL_KEY_ATTEMPTS: usize = 64;

/// Why an envelope could not be sealed, parsed, verified or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The input is larger than the caller's limit.
    #[error("envelope is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The caller's limit.
        max: usize,
    },
    /// The input is not an envelope of the expected layout.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// Bytes follow the envelope.
    #[error("bytes follow the envelope")]
    TrailingBytes,
    /// An algorithm other than the ones stamp uses (no negotiation, no downgrade).
    #[error("unsupported {0} algorithm")]
    UnsupportedAlgorithm(&'static str),
    /// The envelope is signed with a different algorithm than the key given to verify it.
    #[error("the envelope is signed with {found}, the verifying key is {expected}")]
    SignerAlgorithmMismatch {
        /// The algorithm named in the envelope.
        found: &'static str,
        /// The algorithm of the key given.
        expected: &'static str,
    },
    /// The key given to verify is not the key of the first certificate of the envelope's chain.
    #[error("the verifying key is not the key of the envelope's leaf certificate")]
    SignerNotChainLeaf,
    /// The signature does not verify.
    #[error("the envelope's signature does not verify")]
    BadSignature,
    /// The content-encryption key could not be unwrapped: the envelope was sealed for another key
    /// or another recipient ID.
    #[error("the envelope is not addressed to this recipient (other key or other recipient ID)")]
    NotAddressedToUs,
    /// The content failed authenticated decryption.
    #[error("the envelope's content does not decrypt")]
    DecryptFailed,
    /// A sealing parameter is out of bounds.
    #[error("cannot seal: {0}")]
    InvalidInput(&'static str),
    /// A key backend failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A cryptographic primitive or the random generator failed.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

use EnvelopeError::{Crypto, InvalidInput, Malformed};

/// Who an envelope is sealed for.
#[derive(Clone, Copy, Debug)]
pub struct Recipient<'a> {
    /// The recipient key's algorithm (its curve).
    pub alg: KeyAgreementAlgorithm,
    /// The recipient's public key-agreement key (uncompressed EC point).
    pub public_key: &'a [u8],
    /// The key ID written in the recipient's `kid` header (1 to [`MAX_KEY_ID_LEN`] bytes).
    pub key_id: &'a [u8],
    /// The recipient's identity, bound into the key derivation and the content's AAD (1 to
    /// [`MAX_RECIPIENT_ID_LEN`] bytes), e.g. the site ID.
    pub recipient_id: &'a [u8],
}

// --- sealing ----------------------------------------------------------------------------------

/// Seals `plaintext` for `recipient` and signs it.
///
/// `content_type` is a media type (`type/subtype`, printable ASCII, at most
/// [`MAX_CONTENT_TYPE_LEN`] bytes). `signer_chain_der` is the signer's certificate chain, leaf
/// first (1 to [`MAX_CHAIN_LEN`] certificates); its leaf must carry the signer's key.
/// `external_aad` is bound into the signature and must be given again to verify (usually empty).
/// All randomness (the ephemeral key, the content key, the nonce) comes from `rng`.
pub fn seal(
    content_type: &str,
    plaintext: &[u8],
    signer: &dyn Signer,
    signer_chain_der: &[Vec<u8>],
    recipient: &Recipient<'_>,
    external_aad: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, EnvelopeError> {
    let content_aad = recipient.recipient_id;
    seal_inner(
        content_type,
        plaintext,
        signer,
        signer_chain_der,
        recipient,
        content_aad,
        external_aad,
        rng,
    )
}

/// [`seal`], with the content's `external_aad` as a parameter so tests can build envelopes whose
/// two recipient bindings disagree.
#[allow(clippy::too_many_arguments)]
fn seal_inner(
    content_type: &str,
    plaintext: &[u8],
    signer: &dyn Signer,
    signer_chain_der: &[Vec<u8>],
    recipient: &Recipient<'_>,
    content_aad: &[u8],
    external_aad: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, EnvelopeError> {
    if !content_type_ok(content_type) {
        return Err(InvalidInput(
            "content type must be a short printable type/subtype",
        ));
    }
    if signer_chain_der.is_empty() || signer_chain_der.len() > MAX_CHAIN_LEN {
        return Err(InvalidInput("the signer chain must hold 1 to 4 certificates"));
    }
    if signer_chain_der
        .iter()
        .any(|c| c.is_empty() || c.len() > MAX_CERT_DER)
    {
        return Err(InvalidInput(
            "a certificate of the signer chain is empty or too large",
        ));
    }
    let leaf = crate::cert::parse(&signer_chain_der[0])
        .map_err(|_| InvalidInput("the leaf of the signer chain is not a certificate"))?;
    if leaf.public_key().subject_public_key.data.as_ref() != signer.public_key() {
        return Err(InvalidInput(
            "the leaf of the signer chain does not carry the signer's key",
        ));
    }
    if recipient.key_id.is_empty() || recipient.key_id.len() > MAX_KEY_ID_LEN {
        return Err(InvalidInput("the recipient key ID must be 1 to 64 bytes"));
    }
    if recipient.recipient_id.is_empty() || recipient.recipient_id.len() > MAX_RECIPIENT_ID_LEN {
        return Err(InvalidInput("the recipient ID must be 1 to 256 bytes"));
    }

    let payload = encrypt_to(plaintext, recipient, content_aad, rng)?;

    cose::sign1(signer, content_type, signer_chain_der, payload, external_aad).map_err(|e| match e {
        SignError::Unsupported => EnvelopeError::UnsupportedAlgorithm("signature"),
        SignError::Encoding => Crypto("CBOR encoding failed"),
        SignError::Malformed => Crypto("the signer returned a malformed signature"),
        SignError::Mismatch => Crypto("the signer's signature does not verify with its public key"),
        SignError::Key(e) => e.into(),
    })
}

/// Builds the tagged `COSE_Encrypt` of `plaintext` for `recipient`.
fn encrypt_to(
    plaintext: &[u8],
    recipient: &Recipient<'_>,
    content_aad: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, EnvelopeError> {
    let ka = recipient.alg;
    let n = ka.field_len();

    // Ephemeral key pair and shared secret with the recipient's static key.
    let ephemeral = ephemeral_key(ka, rng)?;
    let ephemeral_public = ephemeral
        .compute_public_key()
        .map_err(|_| Crypto("ephemeral public key"))?;
    let point = ephemeral_public.as_ref();
    if point.len() != 1 + 2 * n || point[0] != 0x04 {
        return Err(Crypto("ephemeral public key is not an uncompressed point"));
    }
    let shared = agreement::agree(
        &ephemeral,
        agreement::UnparsedPublicKey::new(ka.agreement(), recipient.public_key),
        InvalidInput("the recipient public key is not a valid point of its curve"),
        |secret| Ok(Zeroizing::new(secret.to_vec())),
    )?;

    // Recipient layer: ECDH-ES + A256KW.
    let recipient_protected = protected_with_bytes(
        HeaderBuilder::new()
            .algorithm(iana::Algorithm::ECDH_ES_A256KW)
            .build(),
    )?;
    let kek = derive_kek(&shared, recipient.recipient_id, &recipient_protected)?;
    let mut cek = Zeroizing::new([0u8; CEK_LEN]);
    rng.fill(cek.as_mut())
        .map_err(|_| Crypto("random generator failed"))?;
    let mut wrapped = [0u8; WRAPPED_CEK_LEN];
    let kw = key_wrap::KeyEncryptionKey::new(&key_wrap::AES_256, kek.as_ref())
        .map_err(|_| Crypto("key-encryption key"))?;
    let wrapped_len = key_wrap::KeyWrap::wrap(kw, cek.as_ref(), &mut wrapped)
        .map_err(|_| Crypto("AES key wrap failed"))?
        .len();
    if wrapped_len != WRAPPED_CEK_LEN {
        return Err(Crypto("AES key wrap returned an unexpected length"));
    }
    let ephemeral_key =
        CoseKeyBuilder::new_ec2_pub_key(ka.cose_curve(), point[1..1 + n].to_vec(), point[1 + n..].to_vec())
            .build()
            .to_cbor_value()
            .map_err(|_| Crypto("CBOR encoding failed"))?;
    let cose_recipient = CoseRecipient {
        protected: recipient_protected,
        unprotected: HeaderBuilder::new()
            .key_id(recipient.key_id.to_vec())
            .value(LABEL_EPHEMERAL_KEY, ephemeral_key)
            .build(),
        ciphertext: Some(wrapped.to_vec()),
        recipients: Vec::new(),
    };

    // Content layer: AES-256-GCM, external_aad = recipient ID (`content_aad`).
    let mut iv = [0u8; IV_LEN];
    rng.fill(&mut iv).map_err(|_| Crypto("random generator failed"))?;
    let protected = protected_with_bytes(HeaderBuilder::new().algorithm(iana::Algorithm::A256GCM).build())?;
    let aad = coset::enc_structure_data(EncryptionContext::CoseEncrypt, protected.clone(), content_aad);
    let key = aead_key(cek.as_ref())?;
    let mut ciphertext = plaintext.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(iv),
        aead::Aad::from(aad.as_slice()),
        &mut ciphertext,
    )
    .map_err(|_| Crypto("AES-GCM encryption failed"))?;

    CoseEncrypt {
        protected,
        unprotected: HeaderBuilder::new().iv(iv.to_vec()).build(),
        ciphertext: Some(ciphertext),
        recipients: vec![cose_recipient],
    }
    .to_tagged_vec()
    .map_err(|_| Crypto("CBOR encoding failed"))
}

/// Draws an ephemeral private key from `rng`, retrying when the bytes are not a valid scalar.
fn ephemeral_key(
    alg: KeyAgreementAlgorithm,
    rng: &dyn SecureRandom,
) -> Result<agreement::PrivateKey, EnvelopeError> {
    let mut scalar = Zeroizing::new(vec![0u8; alg.field_len()]);
    for _ in 0..EPHEMERAL_KEY_ATTEMPTS {
        rng.fill(&mut scalar)
            .map_err(|_| Crypto("random generator failed"))?;
        if let Ok(key) = agreement::PrivateKey::from_private_key(alg.agreement(), &scalar) {
            return Ok(key);
        }
    }
    Err(Crypto("could not draw a valid ephemeral key"))
}

/// [`cose::protected_with_bytes`], failing as an envelope error.
fn protected_with_bytes(header: Header) -> Result<ProtectedHeader, EnvelopeError> {
    cose::protected_with_bytes(header).ok_or(Crypto("CBOR encoding failed"))
}

// --- key derivation ---------------------------------------------------------------------------

/// The serialized COSE_KDF_Context (RFC 9053 section 5.2) for ECDH-ES + A256KW:
/// `[-5, [nil, nil, nil], [recipient_id, nil, nil], [256, recipient_protected]]`.
fn kdf_context(recipient_id: &[u8], recipient_protected: &ProtectedHeader) -> Result<Vec<u8>, EnvelopeError> {
    coset::CoseKdfContextBuilder::new()
        .algorithm(iana::Algorithm::A256KW)
        .party_u_info(coset::PartyInfoBuilder::new().build())
        .party_v_info(
            coset::PartyInfoBuilder::new()
                .identity(recipient_id.to_vec())
                .build(),
        )
        .supp_pub_info(coset::SuppPubInfo {
            key_data_length: KEK_BITS,
            protected: recipient_protected.clone(),
            other: None,
        })
        .build()
        .to_vec()
        .map_err(|_| Crypto("CBOR encoding failed"))
}

struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256 (no salt) of the ECDH shared secret, with the KDF context as info.
fn derive_kek(
    shared_secret: &[u8],
    recipient_id: &[u8],
    recipient_protected: &ProtectedHeader,
) -> Result<Zeroizing<[u8; 32]>, EnvelopeError> {
    let info = kdf_context(recipient_id, recipient_protected)?;
    let mut kek = Zeroizing::new([0u8; 32]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
        .extract(shared_secret)
        .expand(&[info.as_slice()], OutLen(kek.len()))
        .and_then(|okm| okm.fill(kek.as_mut()))
        .map_err(|_| Crypto("HKDF failed"))?;
    Ok(kek)
}

fn aead_key(cek: &[u8]) -> Result<aead::LessSafeKey, EnvelopeError> {
    aead::UnboundKey::new(&aead::AES_256_GCM, cek)
        .map(aead::LessSafeKey::new)
        .map_err(|_| Crypto("content-encryption key"))
}

// --- parsing ----------------------------------------------------------------------------------

/// An envelope whose structure has been checked but whose signature has not: nothing in it is
/// trusted yet.
#[derive(Debug)]
pub struct SignedEnvelope {
    sign1: CoseSign1,
    alg: SignatureAlgorithm,
    content_type: String,
    chain: Vec<Vec<u8>>,
    encrypted: ParsedEncrypt,
}

/// An envelope whose signature verified with the key the caller gave.
#[derive(Debug)]
pub struct VerifiedEnvelope {
    content_type: String,
    chain: Vec<Vec<u8>>,
    encrypted: ParsedEncrypt,
}

/// The checked parts of the inner `COSE_Encrypt`.
#[derive(Debug)]
struct ParsedEncrypt {
    protected: ProtectedHeader,
    iv: [u8; IV_LEN],
    ciphertext: Vec<u8>,
    recipient_protected: ProtectedHeader,
    key_id: Vec<u8>,
    ephemeral_alg: KeyAgreementAlgorithm,
    ephemeral_point: Vec<u8>,
    wrapped_cek: Vec<u8>,
}

/// Reads one tagged CBOR item that must span `bytes` exactly.
pub(crate) fn read_tagged(bytes: &[u8], trailing: EnvelopeError) -> Result<(u64, Value), EnvelopeError> {
    let mut rest = bytes;
    let value: Value = ciborium::de::from_reader(&mut rest).map_err(|_| Malformed("not well-formed CBOR"))?;
    if !rest.is_empty() {
        return Err(trailing);
    }
    match value {
        Value::Tag(tag, inner) => Ok((tag, *inner)),
        _ => Err(Malformed("not a tagged COSE message")),
    }
}

/// Parses an envelope of at most `max_len` bytes and checks its structure.
///
/// Accepted: exactly the layout [`seal`] writes (see `docs/formats/envelope.md`): a tagged
/// `COSE_Sign1` with ES256, ES384 or EdDSA, a text content type and `x5chain` in the protected
/// header and an empty unprotected header, around a tagged `COSE_Encrypt` with A256GCM and one
/// ECDH-ES + A256KW recipient on P-256 or P-384. Anything else is refused, including other
/// algorithms, algorithms in unprotected headers, extra or critical header parameters, detached
/// payloads and bytes after the envelope.
pub fn parse(bytes: &[u8], max_len: usize) -> Result<SignedEnvelope, EnvelopeError> {
    if bytes.len() > max_len {
        return Err(EnvelopeError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let (tag, body) = read_tagged(bytes, EnvelopeError::TrailingBytes)?;
    if tag != TAG_SIGN1 {
        return Err(Malformed("not a COSE_Sign1 (tag 18)"));
    }
    let sign1 = CoseSign1::from_cbor_value(body).map_err(|_| Malformed("not a valid COSE_Sign1 array"))?;
    if !sign1.unprotected.is_empty() {
        return Err(Malformed("the COSE_Sign1 unprotected header must be empty"));
    }
    let header = &sign1.protected.header;
    let alg = match &header.alg {
        Some(a) => {
            SignatureAlgorithm::from_cose(a).ok_or(EnvelopeError::UnsupportedAlgorithm("signature"))?
        }
        None => return Err(Malformed("no algorithm in the COSE_Sign1 protected header")),
    };
    let content_type = match &header.content_type {
        Some(ContentType::Text(t)) if content_type_ok(t) => t.clone(),
        _ => return Err(Malformed("the content type must be a short type/subtype text")),
    };
    if !header.crit.is_empty()
        || !header.key_id.is_empty()
        || !header.iv.is_empty()
        || !header.partial_iv.is_empty()
        || !header.counter_signatures.is_empty()
    {
        return Err(Malformed(
            "unexpected parameter in the COSE_Sign1 protected header",
        ));
    }
    let chain = match header.rest.as_slice() {
        [(Label::Int(LABEL_X5CHAIN), value)] => parse_x5chain(value)?,
        [] => return Err(Malformed("no x5chain in the COSE_Sign1 protected header")),
        _ => {
            return Err(Malformed(
                "unexpected parameter in the COSE_Sign1 protected header",
            ))
        }
    };
    let payload = sign1
        .payload
        .as_deref()
        .ok_or(Malformed("the COSE_Sign1 payload is detached"))?;
    if sign1.signature.len() != alg.fixed_signature_len() {
        return Err(Malformed("the signature has the wrong length for its algorithm"));
    }
    let encrypted = parse_encrypt(payload)?;
    Ok(SignedEnvelope {
        alg,
        content_type,
        chain,
        encrypted,
        sign1,
    })
}

pub(crate) fn parse_x5chain(value: &Value) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    let cert = |v: &Value| match v {
        Value::Bytes(b) if !b.is_empty() && b.len() <= MAX_CERT_DER => Ok(b.clone()),
        _ => Err(Malformed(
            "x5chain entries must be certificates of at most 16 KiB",
        )),
    };
    match value {
        Value::Bytes(_) => Ok(vec![cert(value)?]),
        Value::Array(a) if !a.is_empty() && a.len() <= MAX_CHAIN_LEN => a.iter().map(cert).collect(),
        _ => Err(Malformed("x5chain must be one certificate or an array of 1 to 4")),
    }
}

/// Checks that a header holds nothing but `alg`, and that `alg` is `want`.
fn alg_only(header: &Header, want: iana::Algorithm, what: &'static str) -> Result<(), EnvelopeError> {
    let only_alg = Header {
        alg: header.alg.clone(),
        ..Header::default()
    };
    match &header.alg {
        None => Err(Malformed("no algorithm in a protected header")),
        Some(RegisteredLabelWithPrivate::Assigned(a)) if *a == want => {
            if *header == only_alg {
                Ok(())
            } else {
                Err(Malformed(
                    "unexpected parameter in a COSE_Encrypt protected header",
                ))
            }
        }
        Some(_) => Err(EnvelopeError::UnsupportedAlgorithm(what)),
    }
}

fn parse_encrypt(payload: &[u8]) -> Result<ParsedEncrypt, EnvelopeError> {
    let (tag, body) = read_tagged(payload, Malformed("bytes follow the COSE_Encrypt in the payload"))?;
    if tag != TAG_ENCRYPT {
        return Err(Malformed("the payload is not a COSE_Encrypt (tag 96)"));
    }
    let enc = CoseEncrypt::from_cbor_value(body).map_err(|_| Malformed("not a valid COSE_Encrypt array"))?;

    alg_only(
        &enc.protected.header,
        iana::Algorithm::A256GCM,
        "content encryption",
    )?;
    let iv: [u8; IV_LEN] = enc
        .unprotected
        .iv
        .as_slice()
        .try_into()
        .map_err(|_| Malformed("the content IV must be 12 bytes"))?;
    if enc.unprotected != HeaderBuilder::new().iv(iv.to_vec()).build() {
        return Err(Malformed(
            "the COSE_Encrypt unprotected header must hold only the IV",
        ));
    }
    let ciphertext = enc
        .ciphertext
        .ok_or(Malformed("the COSE_Encrypt ciphertext is detached"))?;
    if ciphertext.len() < GCM_TAG_LEN {
        return Err(Malformed("the ciphertext is shorter than the GCM tag"));
    }

    let [recipient] = <[CoseRecipient; 1]>::try_from(enc.recipients)
        .map_err(|_| Malformed("the COSE_Encrypt must have exactly one recipient"))?;
    alg_only(
        &recipient.protected.header,
        iana::Algorithm::ECDH_ES_A256KW,
        "key agreement",
    )?;
    if !recipient.recipients.is_empty() {
        return Err(Malformed("nested recipients are not supported"));
    }
    let u = &recipient.unprotected;
    if u.key_id.is_empty() || u.key_id.len() > MAX_KEY_ID_LEN {
        return Err(Malformed("the recipient kid must be 1 to 64 bytes"));
    }
    let ephemeral = match u.rest.as_slice() {
        [(Label::Int(LABEL_EPHEMERAL_KEY), v)] => v.clone(),
        _ => return Err(Malformed("the recipient must carry exactly one ephemeral key")),
    };
    let only_kid_and_key = HeaderBuilder::new()
        .key_id(u.key_id.clone())
        .value(LABEL_EPHEMERAL_KEY, ephemeral.clone())
        .build();
    if *u != only_kid_and_key {
        return Err(Malformed(
            "unexpected parameter in the recipient unprotected header",
        ));
    }
    let (ephemeral_alg, ephemeral_point) = parse_ephemeral_key(ephemeral)?;
    let wrapped_cek = match recipient.ciphertext {
        Some(c) if c.len() == WRAPPED_CEK_LEN => c,
        _ => return Err(Malformed("the wrapped content key must be 40 bytes")),
    };
    Ok(ParsedEncrypt {
        protected: enc.protected,
        iv,
        ciphertext,
        recipient_protected: recipient.protected,
        key_id: u.key_id.clone(),
        ephemeral_alg,
        ephemeral_point,
        wrapped_cek,
    })
}

/// Reads the ephemeral `COSE_Key`: exactly kty EC2, crv P-256 or P-384, x and y of the field size
/// (no compressed points, no other parameters), on the curve. Returns the uncompressed point.
fn parse_ephemeral_key(value: Value) -> Result<(KeyAgreementAlgorithm, Vec<u8>), EnvelopeError> {
    let key =
        CoseKey::from_cbor_value(value).map_err(|_| Malformed("the ephemeral key is not a COSE_Key"))?;
    if key.kty != KeyType::Assigned(iana::KeyType::EC2)
        || !key.key_id.is_empty()
        || key.alg.is_some()
        || !key.key_ops.is_empty()
        || !key.base_iv.is_empty()
    {
        return Err(Malformed("the ephemeral key must be a bare EC2 public key"));
    }
    let param = |label: iana::Ec2KeyParameter| {
        key.params
            .iter()
            .find(|(l, _)| *l == Label::Int(label.to_i64()))
            .map(|(_, v)| v)
    };
    if key.params.len() != 3 {
        return Err(Malformed("the ephemeral key must have exactly crv, x and y"));
    }
    let crv = match param(iana::Ec2KeyParameter::Crv) {
        Some(Value::Integer(i)) => i64::try_from(*i).ok(),
        _ => None,
    };
    let alg = KeyAgreementAlgorithm::ALL
        .into_iter()
        .find(|a| crv == Some(a.cose_curve().to_i64()))
        .ok_or(EnvelopeError::UnsupportedAlgorithm("ephemeral key curve"))?;
    let n = alg.field_len();
    let (x, y) = match (param(iana::Ec2KeyParameter::X), param(iana::Ec2KeyParameter::Y)) {
        (Some(Value::Bytes(x)), Some(Value::Bytes(y))) if x.len() == n && y.len() == n => (x, y),
        _ => {
            return Err(Malformed(
                "the ephemeral key coordinates must be byte strings of the field size",
            ))
        }
    };
    let mut point = Vec::with_capacity(1 + 2 * n);
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    agreement::ParsedPublicKey::try_from(agreement::UnparsedPublicKey::new(alg.agreement(), &point))
        .map_err(|_| Malformed("the ephemeral key is not a point on its curve"))?;
    Ok((alg, point))
}

/// A content type stamp writes and accepts: printable ASCII, no surrounding spaces, one `/`.
fn content_type_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_CONTENT_TYPE_LEN
        && t.bytes().all(|b| (0x20..0x7f).contains(&b))
        && t.trim() == t
        && t.matches('/').count() == 1
}

impl SignedEnvelope {
    /// The signer's certificate chain (DER, leaf first), NOT validated: the caller validates it
    /// and passes the leaf's key to [`SignedEnvelope::verify`].
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The signature algorithm named in the envelope.
    pub fn signature_algorithm(&self) -> SignatureAlgorithm {
        self.alg
    }

    /// The content type (unverified until [`SignedEnvelope::verify`]).
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The recipient key ID (unverified), to pick the key-agreement key.
    pub fn key_id(&self) -> &[u8] {
        &self.encrypted.key_id
    }

    /// Verifies the signature with the signer's key, which the caller took from a chain it
    /// validated (the envelope's leaf certificate must carry that key). `external_aad` must be
    /// what the sender gave [`seal`].
    pub fn verify(
        self,
        signer_alg: SignatureAlgorithm,
        signer_public_key: &[u8],
        external_aad: &[u8],
    ) -> Result<VerifiedEnvelope, EnvelopeError> {
        if signer_alg != self.alg {
            return Err(EnvelopeError::SignerAlgorithmMismatch {
                found: self.alg.name(),
                expected: signer_alg.name(),
            });
        }
        let leaf_der = self.chain.first().ok_or(Malformed("empty x5chain"))?;
        let leaf = crate::cert::parse(leaf_der)
            .map_err(|_| Malformed("the x5chain leaf is not a DER certificate"))?;
        if leaf.public_key().subject_public_key.data.as_ref() != signer_public_key {
            return Err(EnvelopeError::SignerNotChainLeaf);
        }
        let tbs = self.sign1.tbs_data(external_aad);
        signature::UnparsedPublicKey::new(self.alg.fixed_verification(), signer_public_key)
            .verify(&tbs, &self.sign1.signature)
            .map_err(|_| EnvelopeError::BadSignature)?;
        Ok(VerifiedEnvelope {
            content_type: self.content_type,
            chain: self.chain,
            encrypted: self.encrypted,
        })
    }
}

impl VerifiedEnvelope {
    /// The signer's certificate chain (DER, leaf first).
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The content type, as signed.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The recipient key ID, as signed.
    pub fn key_id(&self) -> &[u8] {
        &self.encrypted.key_id
    }

    /// Decrypts the content with the recipient's key-agreement key. `recipient_id` must be the
    /// one the envelope was sealed for (e.g. this site's ID).
    pub fn open(
        self,
        recipient: &dyn KeyAgreement,
        recipient_id: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let e = self.encrypted;
        if recipient.algorithm() != e.ephemeral_alg {
            return Err(EnvelopeError::NotAddressedToUs);
        }
        let shared = recipient.agree(&e.ephemeral_point).map_err(|err| match err {
            KeyError::BadPeerKey(_) => Malformed("the ephemeral key is not a point on its curve"),
            other => EnvelopeError::Key(other),
        })?;
        let kek = derive_kek(&shared, recipient_id, &e.recipient_protected)?;
        let kw = key_wrap::KeyEncryptionKey::new(&key_wrap::AES_256, kek.as_ref())
            .map_err(|_| Crypto("key-encryption key"))?;
        let mut cek = Zeroizing::new([0u8; CEK_LEN]);
        let cek_len = key_wrap::KeyWrap::unwrap(kw, &e.wrapped_cek, cek.as_mut())
            .map_err(|_| EnvelopeError::NotAddressedToUs)?
            .len();
        if cek_len != CEK_LEN {
            return Err(EnvelopeError::NotAddressedToUs);
        }
        let aad = coset::enc_structure_data(EncryptionContext::CoseEncrypt, e.protected, recipient_id);
        let key = aead_key(cek.as_ref())?;
        let mut buf = Zeroizing::new(e.ciphertext);
        let plain_len = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(e.iv),
                aead::Aad::from(aad.as_slice()),
                &mut buf[..],
            )
            .map_err(|_| EnvelopeError::DecryptFailed)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests;
