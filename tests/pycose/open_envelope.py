#!/usr/bin/env python3
"""Independent check of stamp's sealed envelopes with pycose (docs/formats/envelope.md).

Two commands:

  open   verify the COSE_Sign1 with the signer's public key, check that the x5chain leaf carries that
         key, decrypt the inner COSE_Encrypt (ECDH-ES + A256KW, A256GCM) with the recipient's private
         key, and write the plaintext to stdout.
  seal   build an envelope of the same layout with pycose (for stamp to open).

Keys are PEM files: SubjectPublicKeyInfo ("PUBLIC KEY") and PKCS#8 ("PRIVATE KEY").

The recipient ID is bound twice and never travels in the envelope: it is the PartyV identity of the
COSE KDF context (RFC 9053 section 5.2) and the external_aad of the COSE_Encrypt. pycose builds the
KDF context from header parameters only, so `open` places the PartyV identity (label -24) in the
recipient's unprotected bucket locally before decrypting (that bucket is covered by no AAD, so this
changes nothing but the KDF input), and `seal` removes it from the encoded message after pycose has
used it.

Requires: python3 -m pip install -r tests/requirements.txt (scripts/test does this)
"""

import argparse
import os
import sys

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pycose import headers
from pycose.algorithms import A256GCM, EcdhEsA256KW, EdDSA, Es256, Es384
from pycose.keys import CoseKey
from pycose.messages import CoseMessage, EncMessage, Sign1Message
from pycose.messages.recipient import KeyAgreementWithKeyWrap

SIGN1_TAG = 18
ENCRYPT_TAG = 96
SIG_ALGS = {"ES256": Es256, "ES384": Es384, "EdDSA": EdDSA}


def fail(msg):
    print(f"open_envelope.py: {msg}", file=sys.stderr)
    sys.exit(1)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def spki_der(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def cmd_open(a):
    data = read(a.envelope)
    outer = cbor2.loads(data)
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != SIGN1_TAG:
        fail("not a tagged COSE_Sign1")
    msg = CoseMessage.decode(data)
    if not isinstance(msg, Sign1Message):
        fail("not a COSE_Sign1")

    signer_pem = read(a.signer_key).decode()
    msg.key = CoseKey.from_pem_public_key(signer_pem)
    msg.external_aad = bytes.fromhex(a.external_aad)
    if msg.get_attr(headers.Algorithm) not in SIG_ALGS.values():
        fail(f"unexpected signature algorithm {msg.get_attr(headers.Algorithm)}")
    if headers.Algorithm not in msg.phdr:
        fail("the signature algorithm is not in the protected header")
    if not msg.verify_signature():
        fail("COSE_Sign1 signature does not verify")

    chain = msg.phdr.get(headers.X5chain)
    if isinstance(chain, bytes):
        chain = [chain]
    if not chain or not all(isinstance(c, bytes) for c in chain):
        fail("no x5chain (label 33) in the protected header")
    leaf = x509.load_der_x509_certificate(chain[0])
    signer_pub = serialization.load_pem_public_key(signer_pem.encode())
    if spki_der(leaf.public_key()) != spki_der(signer_pub):
        fail("the x5chain leaf does not carry the signer's key")
    print(f"content type: {msg.phdr.get(headers.ContentType)}", file=sys.stderr)
    print(f"x5chain: {len(chain)} certificate(s)", file=sys.stderr)

    inner = cbor2.loads(msg.payload)
    if not isinstance(inner, cbor2.CBORTag) or inner.tag != ENCRYPT_TAG:
        fail("the payload is not a tagged COSE_Encrypt")
    enc = CoseMessage.decode(msg.payload)
    if not isinstance(enc, EncMessage):
        fail("the payload is not a COSE_Encrypt")
    if enc.get_attr(headers.Algorithm) is not A256GCM:
        fail("content algorithm is not A256GCM")
    if len(enc.recipients) != 1:
        fail("expected exactly one recipient")
    rcpt = enc.recipients[0]
    if rcpt.phdr.get(headers.Algorithm) is not EcdhEsA256KW:
        fail("recipient algorithm is not ECDH-ES + A256KW (protected)")
    print(f"kid: {rcpt.get_attr(headers.KID).hex()}", file=sys.stderr)

    recipient_id = bytes.fromhex(a.recipient_id)
    enc.external_aad = recipient_id
    rcpt.key = CoseKey.from_pem_private_key(read(a.recipient_key).decode())
    rcpt.uhdr_update({headers.PartyVID: recipient_id})
    try:
        plaintext = enc.decrypt(rcpt)
    except Exception as e:  # pycose raises several types (InvalidTag, ValueError, CoseException)
        fail(f"decryption failed: {type(e).__name__} {e}")
    sys.stdout.buffer.write(plaintext)


def cmd_seal(a):
    recipient_id = bytes.fromhex(a.recipient_id)
    rcpt = KeyAgreementWithKeyWrap(
        phdr={headers.Algorithm: EcdhEsA256KW},
        uhdr={headers.KID: bytes.fromhex(a.key_id), headers.PartyVID: recipient_id},
    )
    rcpt.local_attrs = {headers.StaticKey: CoseKey.from_pem_public_key(read(a.recipient_key).decode())}
    enc = EncMessage(
        phdr={headers.Algorithm: A256GCM},
        uhdr={headers.IV: os.urandom(12)},
        payload=read(a.plaintext),
        external_aad=recipient_id,
        recipients=[rcpt],
    )
    # The PartyV identity is agreed out of band: drop it from the recipient's unprotected header
    # (after pycose used it in the KDF context). That header is covered by no AAD or signature.
    encoded = cbor2.loads(enc.encode())
    [r_phdr, r_uhdr, r_wrapped] = encoded.value[3][0]
    r_uhdr = {k: v for k, v in r_uhdr.items() if k != headers.PartyVID.identifier}
    body = list(encoded.value)
    body[3] = [[r_phdr, r_uhdr, r_wrapped]]
    payload = cbor2.dumps(cbor2.CBORTag(ENCRYPT_TAG, body))

    chain = [read(p) for p in a.chain]
    sign1 = Sign1Message(
        phdr={
            headers.Algorithm: SIG_ALGS[a.alg],
            headers.ContentType: a.content_type,
            headers.X5chain: chain[0] if len(chain) == 1 else chain,
        },
        payload=payload,
        external_aad=bytes.fromhex(a.external_aad),
    )
    sign1.key = CoseKey.from_pem_private_key(read(a.signer_key).decode())
    with open(a.out, "wb") as f:
        f.write(sign1.encode())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    o = sub.add_parser("open", help="verify and decrypt an envelope; plaintext to stdout")
    o.add_argument("--envelope", required=True)
    o.add_argument("--signer-key", required=True, help="signer public key, SPKI PEM")
    o.add_argument("--recipient-key", required=True, help="recipient private key, PKCS#8 PEM")
    o.add_argument("--recipient-id", required=True, help="hex")
    o.add_argument("--external-aad", default="", help="hex, COSE_Sign1 external_aad")
    o.set_defaults(func=cmd_open)

    s = sub.add_parser("seal", help="build an envelope with pycose")
    s.add_argument("--plaintext", required=True)
    s.add_argument("--alg", required=True, choices=sorted(SIG_ALGS))
    s.add_argument("--signer-key", required=True, help="signer private key, PKCS#8 PEM")
    s.add_argument("--chain", required=True, nargs="+", help="DER certificates, leaf first")
    s.add_argument("--content-type", required=True)
    s.add_argument("--recipient-key", required=True, help="recipient public key, SPKI PEM")
    s.add_argument("--key-id", required=True, help="hex")
    s.add_argument("--recipient-id", required=True, help="hex")
    s.add_argument("--external-aad", default="", help="hex, COSE_Sign1 external_aad")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_seal)

    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
