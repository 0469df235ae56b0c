#!/usr/bin/env python3
"""Independent check of stamp's Matter onboarding data with the Matter SDK itself.

Uses the SDK's Python bindings (home-assistant-chip-core, a build of project-chip/connectedhomeip):
its setup-payload parser and generator (pychip_SetupPayload_*), and its C++
chip::Crypto::Spake2pVerifier::Generate and ::Serialize, called through ctypes.

Usage: chip_onboarding.py OUT.json (the SDK logs to stdout, so the answer goes to a file).
Reads JSON on stdin:
  {"cases": [{"passcode", "discriminator", "vendor_id", "product_id", "flow", "rendezvous",
              "salt" (hex), "iterations", "qr", "manual"}],
   "refuse": {"qr": [...], "manual": [...]}}
and writes JSON to OUT.json: for each case what the SDK parsed from stamp's QR and manual codes, the
codes the SDK generates from the same fields, and the verifier (hex) the SDK derives; for each code
in "refuse" whether the SDK refused it.
"""
import ctypes
import json
import sys

import chip.native

# The setup-payload codec and the verifier need no CHIP stack, and initializing one would write
# /data/chip_factory.ini and /tmp/chip_kvs: mark the library handle ready without it.
_handle = chip.native._GetLibraryHandle(chip.native.Library.CONTROLLER, False)
_handle.initialized = True

from chip.setup_payload import SetupPayload  # noqa: E402  (needs the handle above)


class ByteSpan(ctypes.Structure):
    """chip::Span<uint8_t>: a pointer and a length."""
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


# CHIP_ERROR (chip::ChipError) is returned through a hidden first pointer on this build (checked in
# the disassembly of Generate: rdi is the result, rsi `this`); its first 4 bytes are the code.
_generate = getattr(_handle.dll, "_ZN4chip6Crypto15Spake2pVerifier8GenerateEjRKNS_4SpanIKhEEj")
_generate.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ByteSpan), ctypes.c_uint32]
_generate.restype = None
_serialize = getattr(_handle.dll, "_ZNK4chip6Crypto15Spake2pVerifier9SerializeERNS_4SpanIhEE")
_serialize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ByteSpan)]
_serialize.restype = None


def _check(err, what):
    code = int.from_bytes(err.raw[:4], "little")
    if code != 0:
        raise RuntimeError(f"{what} failed with CHIP error {code:#x}")


def sdk_verifier(passcode, salt, iterations):
    err = ctypes.create_string_buffer(64)
    verifier = ctypes.create_string_buffer(512)  # larger than Spake2pVerifier (W0 and L)
    salt_buf = ctypes.create_string_buffer(salt, len(salt))
    salt_span = ByteSpan(ctypes.cast(salt_buf, ctypes.c_void_p), len(salt))
    _generate(err, verifier, iterations, ctypes.byref(salt_span), passcode)
    _check(err, "Spake2pVerifier::Generate")
    out = ctypes.create_string_buffer(256)
    out_span = ByteSpan(ctypes.cast(out, ctypes.c_void_p), 256)
    _serialize(err, verifier, ctypes.byref(out_span))
    _check(err, "Spake2pVerifier::Serialize")
    return out.raw[: out_span.size].hex()


def parsed(payload):
    return {
        "version": int(payload.attributes.get("Version", -1)),
        "vendor_id": payload.vendor_id,
        "product_id": payload.product_id,
        "flow": payload.commissioning_flow,
        "rendezvous": int(payload.attributes["RendezvousInformation"]) if "RendezvousInformation" in payload.attributes else None,
        "long_discriminator": payload.long_discriminator,
        "short_discriminator": payload.short_discriminator,
        "passcode": payload.setup_passcode,
    }


def refused(parse, code):
    try:
        parse(code)
    except Exception as e:  # the SDK raises ChipStackError subclasses
        return {"code": code, "refused": True, "error": str(e)}
    return {"code": code, "refused": False, "error": None}


def main():
    request = json.load(sys.stdin)
    results = []
    for case in request["cases"]:
        results.append({
            "qr_parsed": parsed(SetupPayload().ParseQrCode(case["qr"])),
            "manual_parsed": parsed(SetupPayload().ParseManualPairingCode(case["manual"])),
            "sdk_qr": SetupPayload().GenerateQrCode(
                case["passcode"], case["vendor_id"], case["product_id"], case["discriminator"],
                case["flow"], case["rendezvous"], 0),
            "sdk_manual": SetupPayload().GenerateManualPairingCode(
                case["passcode"], case["vendor_id"], case["product_id"], case["discriminator"],
                case["flow"], case["rendezvous"], 0),
            "sdk_verifier": sdk_verifier(case["passcode"], bytes.fromhex(case["salt"]), case["iterations"]),
        })
    refuse = request.get("refuse", {})
    out = {
        "cases": results,
        "refused_qr": [refused(lambda c: SetupPayload().ParseQrCode(c), c) for c in refuse.get("qr", [])],
        "refused_manual": [refused(lambda c: SetupPayload().ParseManualPairingCode(c), c) for c in refuse.get("manual", [])],
    }
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
