use super::*;
use crate::profile::tests::TestSigner;

/// A signer that claims one key and signs with another.
struct Impostor(TestSigner, TestSigner);

impl std::fmt::Debug for Impostor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Impostor({}, {})",
            Signer::key_ref(self),
            Signer::algorithm(self).name()
        )
    }
}

impl Signer for Impostor {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
    fn public_key(&self) -> &[u8] {
        self.0.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.1.sign(message)
    }
    fn key_ref(&self) -> &str {
        "impostor"
    }
}

fn checkpoint() -> Checkpoint {
    Checkpoint {
        origin: "example.com/site/log".into(),
        size: 20852163,
        root: crate::merkle::leaf_hash(b"root"),
        extensions: vec![],
    }
}

fn ecdsa_key_material(vkey_material: &str) -> Vec<u8> {
    // <type 0x02> || SubjectPublicKeyInfo DER; a P-256 SPKI ends with the 65-byte point.
    let raw = B64.decode(vkey_material).unwrap();
    assert_eq!(raw[0], SIG_TYPE_ECDSA);
    raw[raw.len() - 65..].to_vec()
}

// Go's golang.org/x/mod/sumdb/note documentation example (BSD-3-Clause): a key, its verifier
// key, a text and the signed note Go produces.
const PETER_SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_TEXT: &str =
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const PETER_NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

// Real checkpoints of public logs signed with ECDSA P-256 (signature type 0x02), and their keys,
// from github.com/transparency-dev/formats note/note_verifier_test.go (Apache-2.0).
const REKOR_VKEY: &str = "rekor.sigstore.dev+c0d23d6a+AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNhtmPtrWm3U1eQXBogSMdGvXwBcK5AW5i0hrZLOC96l+smGNM7nwZ4QvFK/4sueRoVj//QP22Ni4Qt9DPfkWLc=";
const REKOR_NOTE: &str = "Rekor\n798034\nf+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=\n\n\u{2014} rekor.sigstore.dev wNI9ajBEAiARInWIWyCdyG27CO6LPnPekyw20qO0YJfoaPaowGp/XgIgc+qEHS3+GKVClgqq20uDLet7MCoTURUCRdxwWBHHufk=\n";
const PIXEL_VKEY: &str = "pixel6_transparency_log+91c16e30+AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABN+4x0Jk1yTwvLFI9A4NDdGZcX0aiWVdWM5XJVy0M4VWD3AvyW5Q6Hs9A0mcDkpUoYgn+KKPNzFC0H3nN3q6JQ8=";
const PIXEL_NOTE: &str = "DEFAULT\n10\nbsWRucJU5xJPHb5eBdOm6+DM+VelCZBuvtI3sHERJ9Y=\n\n\u{2014} pixel6_transparency_log kcFuMDBFAiEAhqMAP8P6qf6QxtUJhzMhbN+MbZ9dwfUHzGQJmffJHtoCIGD0cNe47dHWBoPwYdgBCepB06/+g5O1FmYjXl06owL4\n";

// The example of the C2SP tlog-checkpoint specification (its key is not published).
const SPEC_CHECKPOINT: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";
// The example of the C2SP signed-note specification: the text contains a blank line.
const SPEC_NOTE: &str = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u{e8} subito sera.\n\n\u{2014} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";

#[test]
fn ed25519_matches_go_sumdb_note_known_answer() {
    let seed = B64.decode(PETER_SKEY.splitn(5, '+').nth(4).unwrap()).unwrap();
    assert_eq!(seed[0], SIG_TYPE_ED25519);
    let signer = TestSigner::ed25519_from_seed(&seed[1..]);
    assert_eq!(
        key_id("PeterNeumann", SignatureAlgorithm::Ed25519, signer.public_key()).unwrap(),
        0xc74f20a3
    );
    assert_eq!(
        verifier_key("PeterNeumann", SignatureAlgorithm::Ed25519, signer.public_key()).unwrap(),
        PETER_VKEY
    );
    // Ed25519 is deterministic: stamp must produce Go's note byte for byte.
    assert_eq!(
        sign_text(PETER_TEXT, "PeterNeumann", &signer).unwrap(),
        PETER_NOTE
    );
    let note = parse_note(PETER_NOTE.as_bytes(), 1000).unwrap();
    assert_eq!(note.text(), PETER_TEXT);
    let public = &B64.decode(PETER_VKEY.splitn(3, '+').nth(2).unwrap()).unwrap()[1..];
    assert_eq!(
        verify_text(&note, "PeterNeumann", SignatureAlgorithm::Ed25519, public).unwrap(),
        0xc74f20a3
    );
    let tampered = parse_note(
        PETER_NOTE.replace("cryptography", "cryptographY").as_bytes(),
        1000,
    )
    .unwrap();
    assert!(matches!(
        verify_text(&tampered, "PeterNeumann", SignatureAlgorithm::Ed25519, public),
        Err(CheckpointError::BadSignature(_))
    ));
}

#[test]
fn real_ecdsa_checkpoints_of_public_logs_verify() {
    for (vkey, note, origin, size) in [
        (REKOR_VKEY, REKOR_NOTE, "Rekor", 798034),
        (PIXEL_VKEY, PIXEL_NOTE, "DEFAULT", 10),
    ] {
        let mut parts = vkey.splitn(3, '+');
        let (name, id, material) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let public = ecdsa_key_material(material);
        let alg = SignatureAlgorithm::EcdsaP256Sha256;
        // The key ID and the verifier key stamp derives are the published ones, so the
        // SubjectPublicKeyInfo stamp builds is byte-identical to the log's.
        assert_eq!(format!("{:08x}", key_id(name, alg, &public).unwrap()), id);
        assert_eq!(verifier_key(name, alg, &public).unwrap(), vkey);
        let v = verify(note.as_bytes(), name, alg, &public).unwrap();
        assert_eq!((v.origin(), v.size(), v.key_name()), (origin, size, name));
        assert_eq!(format!("{:08x}", v.key_id()), id);
        // One changed digit of the size breaks the signature.
        let tampered = note.replacen(&size.to_string(), &(size + 1).to_string(), 1);
        assert!(matches!(
            verify(tampered.as_bytes(), name, alg, &public),
            Err(CheckpointError::BadSignature(_))
        ));
        // The same key under another name is another key.
        assert!(matches!(
            verify(note.as_bytes(), "other.example", alg, &public),
            Err(CheckpointError::NotSignedByKey { .. })
        ));
    }
}

#[test]
fn spec_examples_parse() {
    let note = parse_note(SPEC_CHECKPOINT.as_bytes(), 1000).unwrap();
    assert_eq!(note.signatures().len(), 1);
    let sig = &note.signatures()[0];
    assert_eq!(sig.key_name, "example.com/behind-the-sofa");
    assert_eq!(sig.key_id, 0x033de0ae);
    assert_eq!(sig.signature.len(), 64);
    let cp = Checkpoint::from_note_body(note.text()).unwrap();
    assert_eq!(cp.origin, "example.com/behind-the-sofa");
    assert_eq!(cp.size, 20852163);
    assert_eq!(
        B64.encode(cp.root),
        "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    );
    assert!(cp.extensions.is_empty());
    assert_eq!(cp.to_note_body().unwrap(), note.text());

    // The text ends at the last blank line, so a blank line inside the text stays in it.
    let note = parse_note(SPEC_NOTE.as_bytes(), 1000).unwrap();
    assert_eq!(
        note.text(),
        "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u{e8} subito sera.\n"
    );
    assert_eq!(note.signatures()[0].key_name, "quasimodo.example/salvatore");
    assert!(matches!(
        Checkpoint::from_note_body(note.text()),
        Err(CheckpointError::Body(_))
    ));
}

#[test]
fn sign_then_verify_with_ecdsa_p256_and_ed25519() {
    let mut cp = checkpoint();
    cp.extensions = vec!["stamp-extension value".into()];
    for signer in [TestSigner::ecdsa_p256(), TestSigner::ed25519()] {
        let alg = signer.algorithm();
        let note = sign(&cp, "example.com/site/log", &signer).unwrap();
        let body = cp.to_note_body().unwrap();
        assert!(note.starts_with(&format!("{body}\n\u{2014} example.com/site/log ")));
        let v = verify(note.as_bytes(), "example.com/site/log", alg, signer.public_key()).unwrap();
        assert_eq!(v.checkpoint(), &cp);
        assert_eq!(
            v.key_id(),
            key_id("example.com/site/log", alg, signer.public_key()).unwrap()
        );
        assert_eq!(v.clone().into_checkpoint(), cp);
        let parsed = parse_note(note.as_bytes(), DEFAULT_MAX_NOTE_LEN).unwrap();
        let sig = &parsed.signatures()[0];
        match alg {
            SignatureAlgorithm::Ed25519 => assert_eq!(sig.signature.len(), 64),
            _ => assert_eq!(sig.signature[0], 0x30, "DER SEQUENCE"),
        }
        // Another key of the same algorithm and name does not verify it.
        let other = if alg == SignatureAlgorithm::Ed25519 {
            TestSigner::ed25519()
        } else {
            TestSigner::ecdsa_p256()
        };
        assert!(matches!(
            verify(note.as_bytes(), "example.com/site/log", alg, other.public_key()),
            Err(CheckpointError::NotSignedByKey { .. })
        ));
    }
}

#[test]
fn key_ids_follow_the_signed_note_rules() {
    let ed = TestSigner::ed25519();
    let mut input = b"name\n\x01".to_vec();
    input.extend_from_slice(ed.public_key());
    let d = sha256(&input);
    assert_eq!(
        key_id("name", SignatureAlgorithm::Ed25519, ed.public_key()).unwrap(),
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    );
    // ECDSA key IDs hash the SubjectPublicKeyInfo only, so they do not depend on the name.
    let ec = TestSigner::ecdsa_p256();
    let d = sha256(&ec.spki_der());
    let want = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    assert_eq!(
        key_id("a", SignatureAlgorithm::EcdsaP256Sha256, ec.public_key()).unwrap(),
        want
    );
    assert_eq!(
        key_id("b", SignatureAlgorithm::EcdsaP256Sha256, ec.public_key()).unwrap(),
        want
    );
    assert!(matches!(
        key_id("a", SignatureAlgorithm::Ed25519, &[0; 31]),
        Err(CheckpointError::BadPublicKey(_))
    ));
    assert!(matches!(
        key_id("a", SignatureAlgorithm::EcdsaP256Sha256, &ec.public_key()[1..]),
        Err(CheckpointError::BadPublicKey(_))
    ));
    for bad in ["", "a b", "a+b", "a\u{a0}b", "a\u{2003}b", "a\tb"] {
        assert!(matches!(
            key_id(bad, SignatureAlgorithm::Ed25519, ed.public_key()),
            Err(CheckpointError::BadKeyName(_))
        ));
    }
}

#[test]
fn sign_refuses_what_it_cannot_sign_correctly() {
    let cp = checkpoint();
    let p384 = TestSigner::ecdsa_p384();
    assert!(matches!(
        sign(&cp, "log", &p384),
        Err(CheckpointError::UnsupportedAlgorithm(
            SignatureAlgorithm::EcdsaP384Sha384
        ))
    ));
    assert!(matches!(
        verify(
            b"x\n1\nAA==\n\n\xe2\x80\x94 log AAAAAAA=\n",
            "log",
            SignatureAlgorithm::EcdsaP384Sha384,
            p384.public_key()
        ),
        Err(CheckpointError::UnsupportedAlgorithm(_))
    ));
    let ed = TestSigner::ed25519();
    assert!(matches!(
        sign(&cp, "bad name", &ed),
        Err(CheckpointError::BadKeyName(_))
    ));
    let impostor = Impostor(TestSigner::ed25519(), TestSigner::ed25519());
    assert!(matches!(
        sign(&cp, "log", &impostor),
        Err(CheckpointError::SignerMismatch)
    ));
    for bad in [
        Checkpoint {
            origin: String::new(),
            ..checkpoint()
        },
        Checkpoint {
            origin: "a\nb".into(),
            ..checkpoint()
        },
        Checkpoint {
            origin: "a\rb".into(),
            ..checkpoint()
        },
        Checkpoint {
            extensions: vec![String::new()],
            ..checkpoint()
        },
        Checkpoint {
            extensions: vec!["x\ny".into()],
            ..checkpoint()
        },
        Checkpoint {
            extensions: vec!["x".repeat(DEFAULT_MAX_NOTE_LEN)],
            ..checkpoint()
        },
    ] {
        assert!(sign(&bad, "log", &ed).is_err(), "{bad:?}");
    }
}

#[test]
fn checkpoint_bodies_are_parsed_strictly() {
    let root = B64.encode([7u8; 32]);
    let ok = |t: &str| Checkpoint::from_note_body(t).is_ok();
    assert!(ok(&format!("o\n0\n{root}\n")));
    assert!(ok(&format!("o\n18446744073709551615\n{root}\n")));
    assert!(ok(&format!("o w\n1\n{root}\next 1\next 2\n")));
    let cp = Checkpoint::from_note_body(&format!("o\n5\n{root}\na\nb\n")).unwrap();
    assert_eq!(cp.extensions, ["a", "b"]);
    assert_eq!(cp.to_note_body().unwrap(), format!("o\n5\n{root}\na\nb\n"));
    let short_root = B64.encode([7u8; 31]);
    let long_root = B64.encode([7u8; 33]);
    let unpadded = root.trim_end_matches('=').to_owned();
    // The same 32 bytes with a non-zero unused bit in the last character ('d' for 'c').
    let mut trailing = root.clone();
    trailing.replace_range(42..43, "d");
    for bad in [
        format!("o\n1\n{root}"),                      // no final newline
        "o\n1\n".to_owned(),                          // no root
        "o\n".to_owned(),                             // no size
        format!("\n1\n{root}\n"),                     // empty origin
        format!("o\n01\n{root}\n"),                   // leading zero
        format!("o\n00\n{root}\n"),                   // leading zero
        format!("o\n-1\n{root}\n"),                   // sign
        format!("o\n+1\n{root}\n"),                   // sign
        format!("o\n 1\n{root}\n"),                   // space
        format!("o\n1 \n{root}\n"),                   // space
        format!("o\n\n{root}\n"),                     // empty size
        format!("o\n18446744073709551616\n{root}\n"), // overflow
        format!("o\n1\n{short_root}\n"),
        format!("o\n1\n{long_root}\n"),
        format!("o\n1\n{unpadded}\n"),
        format!("o\n1\n{trailing}\n"),
        format!("o\n1\n {root}\n"),
        format!("o\n1\n{root}\n\n"),       // empty extension line
        format!("o\n1\n{root}\nx\n\ny\n"), // empty extension line
        format!("o\r\n1\n{root}\n"),       // control character
    ] {
        assert!(!ok(&bad), "accepted {bad:?}");
    }
}

fn good_note() -> String {
    sign(&checkpoint(), "example.com/site/log", &TestSigner::ed25519()).unwrap()
}

#[test]
fn notes_are_parsed_strictly() {
    let note = good_note();
    let (text, sig_line) = note.split_once("\n\n").unwrap();
    let text = format!("{text}\n");
    let sig_line = sig_line.trim_end_matches('\n');
    let b64 = sig_line.rsplit(' ').next().unwrap();
    let err = |n: &str| parse_note(n.as_bytes(), DEFAULT_MAX_NOTE_LEN).unwrap_err();

    assert!(parse_note(note.as_bytes(), DEFAULT_MAX_NOTE_LEN).is_ok());
    assert_eq!(
        parse_note(note.as_bytes(), note.len() - 1),
        Err(NoteError::TooLong {
            len: note.len(),
            max: note.len() - 1
        })
    );
    let mut bytes = note.clone().into_bytes();
    bytes[1] = 0xff;
    assert_eq!(parse_note(&bytes, DEFAULT_MAX_NOTE_LEN), Err(NoteError::NotUtf8));
    for c in ['\0', '\t', '\r', '\u{1b}'] {
        assert!(matches!(
            err(&note.replacen('.', &c.to_string(), 1)),
            NoteError::ControlCharacter { .. }
        ));
    }
    assert_eq!(err(&note.replacen("\n\n", "\n", 1)), NoteError::NoBlankLine);
    assert_eq!(err(&format!("{text}\n")), NoteError::NoSignatures);
    assert_eq!(err(&format!("{note}\n")), NoteError::NoSignatures); // trailing blank line
    assert_eq!(err(note.trim_end_matches('\n')), NoteError::MissingFinalNewline);
    assert!(matches!(
        err(&format!("{note}garbage\n")),
        NoteError::BadSignatureLine { line: 2, .. }
    ));
    assert_eq!(err(&format!("{note}garbage")), NoteError::MissingFinalNewline);
    let bad_lines = [
        format!("- example.com/site/log {b64}"),         // hyphen
        format!("\u{2014}example.com/site/log {b64}"),   // no space after the dash
        format!("\u{2014}  example.com/site/log {b64}"), // empty name
        format!("\u{2014} example.com/site/log  {b64}"), // two spaces
        format!("\u{2014} example.com/site/log {b64} "), // trailing space
        "\u{2014} example.com/site/log".to_owned(),      // no signature
        format!("\u{2014} example.com+site {b64}"),      // plus in name
        format!("\u{2014} example.com\u{a0}site {b64}"), // no-break space in name
        format!("\u{2014} example.com/site/log {}", b64.trim_end_matches('=')), // unpadded
        format!("\u{2014} example.com/site/log {b64}=="), // over-padded
        "\u{2014} example.com/site/log AAAAAA==".to_owned(), // 4 bytes: key ID only
        "\u{2014} example.com/site/log AAAAAAB=".to_owned(), // non-zero trailing bits
    ];
    for line in &bad_lines {
        assert!(
            matches!(
                err(&format!("{text}\n{line}\n")),
                NoteError::BadSignatureLine { line: 1, .. }
            ),
            "accepted {line:?}"
        );
    }
    // Exactly 16 signatures are accepted, 17 are not.
    let sixteen = format!("{text}\n{}", format!("{sig_line}\n").repeat(16));
    assert_eq!(
        parse_note(sixteen.as_bytes(), DEFAULT_MAX_NOTE_LEN)
            .unwrap()
            .signatures()
            .len(),
        16
    );
    let seventeen = format!("{text}\n{}", format!("{sig_line}\n").repeat(17));
    assert_eq!(err(&seventeen), NoteError::TooManySignatures);
}

#[test]
fn verify_ignores_other_keys_and_rejects_duplicates_and_bad_signatures() {
    let ours = TestSigner::ecdsa_p256();
    let theirs = TestSigner::ed25519();
    let alg = SignatureAlgorithm::EcdsaP256Sha256;
    let name = "example.com/site/log";
    let note = sign(&checkpoint(), name, &ours).unwrap();
    let (text, our_line) = note.split_once("\n\n").unwrap();
    let their_note = sign(&checkpoint(), "witness.example", &theirs).unwrap();
    let their_line = their_note.split_once("\n\n").unwrap().1;
    // A signature under our name with another key ID, as after a key rotation.
    let rotated = sign(&checkpoint(), name, &TestSigner::ecdsa_p256()).unwrap();
    let rotated_line = rotated.split_once("\n\n").unwrap().1;

    let both = format!("{text}\n\n{their_line}{rotated_line}{our_line}");
    let v = verify(both.as_bytes(), name, alg, ours.public_key()).unwrap();
    assert_eq!(v.checkpoint(), &checkpoint());

    let only_others = format!("{text}\n\n{their_line}{rotated_line}");
    assert!(matches!(
        verify(only_others.as_bytes(), name, alg, ours.public_key()),
        Err(CheckpointError::NotSignedByKey { .. })
    ));
    let twice = format!("{text}\n\n{our_line}{our_line}");
    assert!(matches!(
        verify(twice.as_bytes(), name, alg, ours.public_key()),
        Err(CheckpointError::DuplicateSignature(_))
    ));
    // Our key ID with a signature over another text: rejected even next to a good one.
    let other_cp = Checkpoint {
        size: 1,
        ..checkpoint()
    };
    let other_note = sign(&other_cp, name, &ours).unwrap();
    let wrong_line = other_note.split_once("\n\n").unwrap().1;
    let wrong = format!("{text}\n\n{wrong_line}");
    assert!(matches!(
        verify(wrong.as_bytes(), name, alg, ours.public_key()),
        Err(CheckpointError::BadSignature(_))
    ));
    // Our key, declared with the wrong algorithm: no signature has the matching key ID.
    assert!(verify(
        note.as_bytes(),
        name,
        SignatureAlgorithm::Ed25519,
        &ours.public_key()[..32]
    )
    .is_err());
    // A validly signed text that is not a checkpoint is refused.
    let not_cp = sign_text("hello\n", name, &ours).unwrap();
    assert!(matches!(
        verify(not_cp.as_bytes(), name, alg, ours.public_key()),
        Err(CheckpointError::Body(_))
    ));
}

#[test]
fn every_single_byte_change_or_truncation_is_refused_without_panicking() {
    let ed = TestSigner::ed25519();
    let name = "example.com/site/log";
    let note = sign(&checkpoint(), name, &ed).unwrap().into_bytes();
    let check = |b: &[u8]| verify(b, name, SignatureAlgorithm::Ed25519, ed.public_key());
    assert!(check(&note).is_ok());
    for len in 0..note.len() {
        assert!(check(&note[..len]).is_err(), "truncated to {len}");
    }
    for i in 0..note.len() {
        for v in [
            0x00,
            0x0a,
            0x20,
            0x2b,
            0x30,
            0x41,
            0x7f,
            0x80,
            0xe2,
            0xff,
            note[i] ^ 1,
        ] {
            if v == note[i] {
                continue;
            }
            let mut m = note.clone();
            m[i] = v;
            assert!(check(&m).is_err(), "byte {i} set to {v:#04x}");
        }
    }
}
