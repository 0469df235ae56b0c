#!/usr/bin/env python3
"""Independent verifier of C2SP signed notes and tlog-checkpoints, for cross-checking stamp.

Written from the specifications (c2sp.org/signed-note, c2sp.org/tlog-checkpoint), not from
stamp's code. Uses the `cryptography` package for Ed25519 and ECDSA.

    verify_note.py --vkey NAME+KEYID+BASE64(TYPE||KEY) [--public-key HEX] [--text-only] < note

The verifier key is in the form Go's sumdb/note (type 0x01, Ed25519: KEY is the 32-byte key) and
transparency-dev/formats/note (type 0x02, ECDSA: KEY is the SubjectPublicKeyInfo DER) use.
--public-key, if given, must be the same key in raw form (32 bytes, or an uncompressed P-256
point). The note is read from standard input.

Exit status: 0 and a JSON object on standard output when the note verifies (and, unless
--text-only, is a well-formed checkpoint); 1 when it does not; 2 on bad usage; 3 when the
`cryptography` package is missing.
"""

import argparse
import base64
import binascii
import hashlib
import json
import re
import sys

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_der_public_key,
    )
except ImportError as e:  # pragma: no cover
    print(f"the Python 'cryptography' package is required: {e}", file=sys.stderr)
    sys.exit(3)


class Reject(Exception):
    pass


def b64decode_strict(s):
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Reject(f"bad base64 {s!r}: {e}")
    if base64.b64encode(raw).decode() != s:
        raise Reject(f"non-canonical base64 {s!r}")
    return raw


def parse_vkey(vkey):
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise Reject("verifier key must be name+keyid+key")
    name, keyid_hex, material = parts
    if not re.fullmatch(r"[0-9a-f]{8}", keyid_hex):
        raise Reject("bad key ID in verifier key")
    material = b64decode_strict(material)
    if not material:
        raise Reject("empty key material")
    sig_type, key = material[0], material[1:]
    if sig_type == 0x01:
        if len(key) != 32:
            raise Reject("Ed25519 key must be 32 bytes")
        verifier = ed25519.Ed25519PublicKey.from_public_bytes(key)
        raw = key
        key_id = hashlib.sha256(name.encode() + b"\n" + b"\x01" + key).digest()[:4]

        def verify(sig, msg):
            verifier.verify(sig, msg)

    elif sig_type == 0x02:
        pub = load_der_public_key(key)
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
            raise Reject("type 0x02 key must be an ECDSA P-256 key here")
        # Re-encode to be sure the SPKI given is the canonical one stamp and Go hash.
        if pub.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != key:
            raise Reject("SubjectPublicKeyInfo is not canonical DER")
        raw = pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        key_id = hashlib.sha256(key).digest()[:4]

        def verify(sig, msg):
            pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))

    else:
        raise Reject(f"unsupported signature type {sig_type:#04x}")
    if key_id.hex() != keyid_hex:
        raise Reject(f"verifier key says key ID {keyid_hex}, key hashes to {key_id.hex()}")
    return name, key_id, raw, verify


def open_note(data, name, key_id, verify):
    if len(data) > 1 << 20:
        raise Reject("note too long")
    try:
        note = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject("not UTF-8")
    for ch in note:
        if ord(ch) < 0x20 and ch != "\n":
            raise Reject(f"control character U+{ord(ch):04X}")
    split = note.rfind("\n\n")
    if split < 0:
        raise Reject("no blank line")
    text, sigs = note[: split + 1], note[split + 2 :]
    if not sigs.endswith("\n"):
        raise Reject("signatures must end with a newline")
    found = 0
    for line in sigs[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise Reject(f"bad signature line {line!r}")
        sig_name, sep, b64 = line[2:].partition(" ")
        if not sep or not sig_name or "+" in sig_name or any(c.isspace() for c in sig_name):
            raise Reject(f"bad signature line {line!r}")
        raw = b64decode_strict(b64)
        if len(raw) < 5:
            raise Reject("signature too short")
        if sig_name != name or raw[:4] != key_id:
            continue  # another key: ignored
        found += 1
        try:
            verify(raw[4:], text.encode("utf-8"))
        except InvalidSignature:
            raise Reject("signature does not verify")
    if found != 1:
        raise Reject(f"{found} signatures by the key")
    return text


def parse_checkpoint(text):
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise Reject("checkpoint needs three lines")
    origin, size, root, extensions = lines[0], lines[1], lines[2], lines[3:]
    if not origin:
        raise Reject("empty origin")
    if not re.fullmatch(r"0|[1-9][0-9]*", size) or int(size) >= 1 << 64:
        raise Reject(f"bad tree size {size!r}")
    root = b64decode_strict(root)
    if len(root) != 32:
        raise Reject("root hash is not 32 bytes")
    if any(not e for e in extensions):
        raise Reject("empty extension line")
    return {"origin": origin, "size": int(size), "root_hex": root.hex(), "extensions": extensions}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vkey", required=True)
    p.add_argument("--public-key", help="raw public key, hex")
    p.add_argument("--text-only", action="store_true", help="do not parse the text as a checkpoint")
    args = p.parse_args()
    try:
        name, key_id, raw, verify = parse_vkey(args.vkey)
        if args.public_key is not None and bytes.fromhex(args.public_key) != raw:
            raise Reject("--public-key is not the key of --vkey")
        text = open_note(sys.stdin.buffer.read(), name, key_id, verify)
        out = {"text": text} if args.text_only else parse_checkpoint(text)
        out["key_name"] = name
        out["key_id"] = key_id.hex()
    except (Reject, ValueError) as e:
        print(f"rejected: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
