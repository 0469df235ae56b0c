//! Signed log checkpoints: a C2SP [tlog-checkpoint] body inside a C2SP [signed-note].
//!
//! ```text
//! example.com/site/log        <- origin
//! 20852163                    <- tree size, decimal
//! CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=   <- RFC 6962 root hash, base64
//!                             <- blank line
//! — example.com/site/log Az3grl...   <- em dash, space, key name, space, base64(key ID || signature)
//! ```
//!
//! Signature types, from the signed-note specification's registry:
//!
//! * Ed25519 keys sign with type `0x01`: the signature is the 64-byte RFC 8032 signature of the
//!   note text; key ID = `SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]`.
//! * ECDSA P-256 keys sign with type `0x02`, "ECDSA signatures as implemented by
//!   github.com/transparency-dev/witness" (the scheme of Sigstore's Rekor log): the signature is
//!   the ASN.1 DER `Ecdsa-Sig-Value` over SHA-256 of the note text, exactly what
//!   [`Signer::sign`] returns; key ID = `SHA-256(DER SubjectPublicKeyInfo)[:4]`. The key name is
//!   *not* hashed into this key ID (the specification says so explicitly for type `0x02`).
//! * ECDSA P-384 keys are refused: type `0x02` always hashes with SHA-256, while stamp's P-384
//!   keys sign SHA-384 digests.
//!
//! Everything that reads a note treats it as hostile: sizes are bounded, parsing is strict and
//! nothing panics. A [`VerifiedCheckpoint`] can only be obtained from [`verify`].
//!
//! [tlog-checkpoint]: https://c2sp.org/tlog-checkpoint
//! [signed-note]: https://c2sp.org/signed-note

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::fingerprint::sha256;
use crate::key::{verify_signature, KeyError, RawPublicKey, SignatureAlgorithm, Signer};
use crate::merkle::Hash;

/// Most signatures [`parse_note`] accepts on a note (the signed-note minimum a verifier must
/// accept).
pub const MAX_SIGNATURES: usize = 16;

/// Size limit [`verify`] applies to notes: room for 16 post-quantum signatures of about 5 kB.
pub const DEFAULT_MAX_NOTE_LEN: usize = 128 * 1024;

/// signed-note signature type of Ed25519 signatures.
pub const SIG_TYPE_ED25519: u8 = 0x01;

/// signed-note signature type of ECDSA signatures (transparency-dev/witness scheme).
pub const SIG_TYPE_ECDSA: u8 = 0x02;

/// The separator in front of every signature line: em dash (U+2014) and space.
const SIG_PREFIX: &str = "\u{2014} ";

/// A log checkpoint: the tree head a log signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `example.com/site/log`: non-empty, one line.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 6962 root hash of the tree.
    pub root: Hash,
    /// Optional extension lines (each non-empty, one line). The specification discourages them.
    pub extensions: Vec<String>,
}

/// Why a note could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// Longer than the limit.
    #[error("note is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The note's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid UTF-8.
    #[error("note is not valid UTF-8")]
    NotUtf8,
    /// Contains an ASCII control character other than newline.
    #[error("note contains control character U+{code:04X} at byte {offset}")]
    ControlCharacter {
        /// The character.
        code: u32,
        /// Its byte offset.
        offset: usize,
    },
    /// No blank line separates the text from the signatures.
    #[error("note has no blank line before its signatures")]
    NoBlankLine,
    /// Nothing after the blank line.
    #[error("note has no signatures")]
    NoSignatures,
    /// The signatures do not end with a newline.
    #[error("note does not end with a newline after its last signature")]
    MissingFinalNewline,
    /// More than [`MAX_SIGNATURES`] signatures.
    #[error("note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    /// A line after the blank line is not `— <key name> <base64>`.
    #[error("signature line {line} is malformed: {reason}")]
    BadSignatureLine {
        /// 1-based position among the signature lines.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Why a checkpoint could not be built, signed or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The signed note is malformed.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The note text is not a well-formed checkpoint.
    #[error("malformed checkpoint: {0}")]
    Body(&'static str),
    /// The key name is empty or contains a space or `+`.
    #[error("key name {0:?} is not valid in a signed note")]
    BadKeyName(String),
    /// stamp does not sign or verify checkpoints with this algorithm.
    #[error("{} keys cannot sign checkpoints (Ed25519 and ECDSA P-256 can)", .0.name())]
    UnsupportedAlgorithm(SignatureAlgorithm),
    /// The public key is not a valid encoding for its algorithm.
    #[error("public key is not a raw {} public key", .0.name())]
    BadPublicKey(SignatureAlgorithm),
    /// The key backend failed to sign.
    #[error("signing the checkpoint")]
    Sign(#[source] KeyError),
    /// The signature the key backend produced does not verify with its public key.
    #[error("the signer produced a signature that does not verify with its public key")]
    SignerMismatch,
    /// The note has no signature by the expected key (name and key ID).
    #[error("no signature by key {key_name} (key ID {key_id:08x})")]
    NotSignedByKey {
        /// The expected key name.
        key_name: String,
        /// The expected key ID.
        key_id: u32,
    },
    /// The expected key signed the note more than once.
    #[error("key {0} signed the note more than once")]
    DuplicateSignature(String),
    /// The signature by the expected key does not verify.
    #[error("the signature by key {0} does not verify")]
    BadSignature(String),
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub key_name: String,
    /// The key ID (first four bytes of the decoded signature, big-endian).
    pub key_id: u32,
    /// The signature proper (what follows the key ID).
    pub signature: Vec<u8>,
}

/// A syntactically valid signed note whose signatures have not been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedNote {
    text: String,
    signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// The signed text, ending with a newline (the blank line excluded). Untrusted until verified.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signatures, in order.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }
}

/// A checkpoint whose signature by a known key has been verified. Only [`verify`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    checkpoint: Checkpoint,
    key_name: String,
    key_id: u32,
}

impl VerifiedCheckpoint {
    /// The checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The log's origin line. Check it is the log you expect: the signature only proves who
    /// signed it.
    pub fn origin(&self) -> &str {
        &self.checkpoint.origin
    }

    /// The tree size.
    pub fn size(&self) -> u64 {
        self.checkpoint.size
    }

    /// The root hash.
    pub fn root(&self) -> &Hash {
        &self.checkpoint.root
    }

    /// The name of the key whose signature was verified.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The ID of the key whose signature was verified.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The checkpoint, giving up the proof that it was verified.
    pub fn into_checkpoint(self) -> Checkpoint {
        self.checkpoint
    }
}

/// Position of the first ASCII control character other than newline.
fn find_control(s: &str) -> Option<(usize, char)> {
    s.char_indices().find(|(_, c)| *c < ' ' && *c != '\n')
}

/// signed-note key names: non-empty, no Unicode white space, no `+`.
fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+' || c < ' ')
}

impl Checkpoint {
    /// The note text: origin, size and base64 root hash lines, then the extension lines, each
    /// ending with a newline.
    pub fn to_note_body(&self) -> Result<String, CheckpointError> {
        let line_ok = |l: &str| !l.is_empty() && !l.contains('\n') && find_control(l).is_none();
        if !line_ok(&self.origin) {
            return Err(CheckpointError::Body("origin must be one non-empty line"));
        }
        if !self.extensions.iter().all(|e| line_ok(e)) {
            return Err(CheckpointError::Body(
                "extension lines must be non-empty single lines",
            ));
        }
        let mut out = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for e in &self.extensions {
            out.push_str(e);
            out.push('\n');
        }
        Ok(out)
    }

    /// Parses a checkpoint from note text (strictly: canonical decimal size, canonical base64 of
    /// exactly 32 bytes, non-empty lines, final newline). The text is untrusted unless it came
    /// from a verified note.
    pub fn from_note_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        if let Some((offset, c)) = find_control(text) {
            return Err(NoteError::ControlCharacter {
                code: u32::from(c),
                offset,
            }
            .into());
        }
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Body("text must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(CheckpointError::Body("empty origin line"));
        }
        let size = lines.next().ok_or(CheckpointError::Body("no tree size line"))?;
        let size = parse_size(size)?;
        let root = lines.next().ok_or(CheckpointError::Body("no root hash line"))?;
        let root = parse_root(root)?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(CheckpointError::Body("empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

fn parse_size(line: &str) -> Result<u64, CheckpointError> {
    if line.is_empty() || !line.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CheckpointError::Body("tree size is not a decimal number"));
    }
    if line.len() > 1 && line.starts_with('0') {
        return Err(CheckpointError::Body("tree size has a leading zero"));
    }
    line.parse::<u64>()
        .map_err(|_| CheckpointError::Body("tree size does not fit in 64 bits"))
}

fn parse_root(line: &str) -> Result<Hash, CheckpointError> {
    let bytes = B64
        .decode(line)
        .map_err(|_| CheckpointError::Body("root hash is not canonical base64"))?;
    let root: Hash = bytes
        .try_into()
        .map_err(|_| CheckpointError::Body("root hash is not 32 bytes"))?;
    // Canonical padding and zero trailing bits are enforced by the engine; check anyway that the
    // line is exactly the encoding of the hash, so one hash has one spelling.
    if B64.encode(root) != line {
        return Err(CheckpointError::Body("root hash is not canonical base64"));
    }
    Ok(root)
}

/// Parses a signed note strictly: at most `max_len` bytes, UTF-8, no control characters but
/// newline, text and signatures separated by the last blank line, 1 to [`MAX_SIGNATURES`]
/// signature lines `— <key name> <base64(key ID || signature)>` each ending in a newline, and
/// nothing else. Signatures are not verified.
pub fn parse_note(input: &[u8], max_len: usize) -> Result<SignedNote, NoteError> {
    if input.len() > max_len {
        return Err(NoteError::TooLong {
            len: input.len(),
            max: max_len,
        });
    }
    let s = std::str::from_utf8(input).map_err(|_| NoteError::NotUtf8)?;
    if let Some((offset, c)) = find_control(s) {
        return Err(NoteError::ControlCharacter {
            code: u32::from(c),
            offset,
        });
    }
    let split = s.rfind("\n\n").ok_or(NoteError::NoBlankLine)?;
    let text = &s[..split + 1];
    let sigs = &s[split + 2..];
    if sigs.is_empty() {
        return Err(NoteError::NoSignatures);
    }
    let sigs = sigs.strip_suffix('\n').ok_or(NoteError::MissingFinalNewline)?;
    let mut signatures = Vec::new();
    for (i, line) in sigs.split('\n').enumerate() {
        if i >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        signatures.push(parse_signature_line(line, i + 1)?);
    }
    Ok(SignedNote {
        text: text.to_owned(),
        signatures,
    })
}

fn parse_signature_line(line: &str, n: usize) -> Result<NoteSignature, NoteError> {
    let bad = |reason| NoteError::BadSignatureLine { line: n, reason };
    let rest = line
        .strip_prefix(SIG_PREFIX)
        .ok_or(bad("does not start with an em dash and a space"))?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or(bad("no space between key name and signature"))?;
    if !valid_key_name(name) {
        return Err(bad("key name is empty or contains a space or '+'"));
    }
    let raw = B64
        .decode(b64)
        .map_err(|_| bad("signature is not canonical base64"))?;
    if raw.len() < 5 {
        return Err(bad("signature is shorter than a key ID and one byte"));
    }
    let (id, signature) = raw.split_at(4);
    let mut id_bytes = [0u8; 4];
    id_bytes.copy_from_slice(id);
    Ok(NoteSignature {
        key_name: name.to_owned(),
        key_id: u32::from_be_bytes(id_bytes),
        signature: signature.to_vec(),
    })
}

/// The key ID of a key whose name has been checked.
fn key_id_for(key_name: &str, alg: SignatureAlgorithm, public_key: &[u8]) -> Result<u32, CheckpointError> {
    let digest = match alg {
        SignatureAlgorithm::Ed25519 => {
            if public_key.len() != 32 {
                return Err(CheckpointError::BadPublicKey(alg));
            }
            let mut input = Vec::with_capacity(key_name.len() + 2 + 32);
            input.extend_from_slice(key_name.as_bytes());
            input.push(b'\n');
            input.push(SIG_TYPE_ED25519);
            input.extend_from_slice(public_key);
            sha256(&input)
        }
        SignatureAlgorithm::EcdsaP256Sha256 => {
            if public_key.len() != 65 || public_key.first() != Some(&0x04) {
                return Err(CheckpointError::BadPublicKey(alg));
            }
            sha256(&spki_der(alg, public_key))
        }
        SignatureAlgorithm::EcdsaP384Sha384 | SignatureAlgorithm::Rsa3072PssSha256 => {
            return Err(CheckpointError::UnsupportedAlgorithm(alg))
        }
    };
    Ok(u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]))
}

fn spki_der(alg: SignatureAlgorithm, public_key: &[u8]) -> Vec<u8> {
    use rcgen::PublicKeyData;
    RawPublicKey::new(alg.rcgen(), public_key.to_vec()).subject_public_key_info()
}

/// The signed-note key ID of a key: for Ed25519,
/// `SHA-256(key name || 0x0A || 0x01 || public key)[:4]`; for ECDSA P-256,
/// `SHA-256(SubjectPublicKeyInfo DER)[:4]`. `public_key` is the raw key [`Signer::public_key`]
/// returns (32 bytes, or a 65-byte uncompressed point).
pub fn key_id(key_name: &str, alg: SignatureAlgorithm, public_key: &[u8]) -> Result<u32, CheckpointError> {
    if !valid_key_name(key_name) {
        return Err(CheckpointError::BadKeyName(key_name.to_owned()));
    }
    key_id_for(key_name, alg, public_key)
}

/// The verifier key in the `<name>+<hex key ID>+<base64(type || key)>` form that Go's
/// `golang.org/x/mod/sumdb/note` (Ed25519) and `github.com/transparency-dev/formats/note` (ECDSA,
/// key = SubjectPublicKeyInfo DER) read, to configure other tools to verify stamp's checkpoints.
pub fn verifier_key(
    key_name: &str,
    alg: SignatureAlgorithm,
    public_key: &[u8],
) -> Result<String, CheckpointError> {
    let id = key_id(key_name, alg, public_key)?;
    let mut material = Vec::new();
    match alg {
        SignatureAlgorithm::Ed25519 => {
            material.push(SIG_TYPE_ED25519);
            material.extend_from_slice(public_key);
        }
        _ => {
            material.push(SIG_TYPE_ECDSA);
            material.extend_from_slice(&spki_der(alg, public_key));
        }
    }
    Ok(format!("{key_name}+{id:08x}+{}", B64.encode(material)))
}

/// Signs a note text with one key: the text, a blank line and one signature line.
fn sign_text(text: &str, key_name: &str, signer: &dyn Signer) -> Result<String, CheckpointError> {
    let alg = signer.algorithm();
    let id = key_id(key_name, alg, signer.public_key())?;
    let sig = signer.sign(text.as_bytes()).map_err(CheckpointError::Sign)?;
    // A backend that signs with another key, or garbles signatures, is caught here rather than at
    // HQ: one verification per checkpoint is cheap.
    if !verify_signature(alg, signer.public_key(), text.as_bytes(), &sig) {
        return Err(CheckpointError::SignerMismatch);
    }
    let mut raw = Vec::with_capacity(4 + sig.len());
    raw.extend_from_slice(&id.to_be_bytes());
    raw.extend_from_slice(&sig);
    Ok(format!("{text}\n{SIG_PREFIX}{key_name} {}\n", B64.encode(raw)))
}

/// Signs `checkpoint` as a signed note with the key behind `signer` (Ed25519 or ECDSA P-256),
/// under `key_name` (by convention the checkpoint's origin).
pub fn sign(checkpoint: &Checkpoint, key_name: &str, signer: &dyn Signer) -> Result<String, CheckpointError> {
    let body = checkpoint.to_note_body()?;
    let note = sign_text(&body, key_name, signer)?;
    if note.len() > DEFAULT_MAX_NOTE_LEN {
        return Err(NoteError::TooLong {
            len: note.len(),
            max: DEFAULT_MAX_NOTE_LEN,
        }
        .into());
    }
    Ok(note)
}

/// Checks the note's signatures against one known key and returns the text.
///
/// Signatures whose key name or key ID differ from the known key's are ignored, as signed-note
/// requires (they may be witnesses' cosignatures). The known key must have signed exactly once,
/// and that signature must verify.
fn verify_text(
    note: &SignedNote,
    key_name: &str,
    alg: SignatureAlgorithm,
    public_key: &[u8],
) -> Result<u32, CheckpointError> {
    let id = key_id(key_name, alg, public_key)?;
    let mut found = false;
    for sig in note
        .signatures
        .iter()
        .filter(|s| s.key_name == key_name && s.key_id == id)
    {
        if found {
            return Err(CheckpointError::DuplicateSignature(key_name.to_owned()));
        }
        found = true;
        if !verify_signature(alg, public_key, note.text.as_bytes(), &sig.signature) {
            return Err(CheckpointError::BadSignature(key_name.to_owned()));
        }
    }
    if !found {
        return Err(CheckpointError::NotSignedByKey {
            key_name: key_name.to_owned(),
            key_id: id,
        });
    }
    Ok(id)
}

/// Verifies a signed checkpoint against the log's key: `key_name`, `alg` and the raw
/// `public_key`. The note is parsed with [`parse_note`] and the [`DEFAULT_MAX_NOTE_LEN`] limit;
/// signatures by other keys are ignored. The caller must still check the origin and that the
/// tree only grows (with a consistency proof).
pub fn verify(
    note: &[u8],
    key_name: &str,
    alg: SignatureAlgorithm,
    public_key: &[u8],
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let parsed = parse_note(note, DEFAULT_MAX_NOTE_LEN)?;
    let key_id = verify_text(&parsed, key_name, alg, public_key)?;
    let checkpoint = Checkpoint::from_note_body(&parsed.text)?;
    Ok(VerifiedCheckpoint {
        checkpoint,
        key_name: key_name.to_owned(),
        key_id,
    })
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} size {} root {}",
            self.origin,
            self.size,
            hex::encode(self.root)
        )
    }
}

#[cfg(test)]
mod tests;
