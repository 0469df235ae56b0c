//! Fingerprints people compare by eye or read out over the phone.

use aws_lc_rs::digest::{digest, SHA256};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 of a certificate's DER in the form `openssl x509 -noout -fingerprint -sha256` prints
/// (upper-case hex pairs separated by colons), so it can be checked with openssl.
pub fn cert_sha256(der: &[u8]) -> String {
    colon_hex(&sha256(der))
}

/// Upper-case hex pairs separated by colons.
pub fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A short fingerprint for reading out loud: the first 80 bits of a SHA-256, as five groups of four
/// lower-case hex digits (`3f2a-91bc-04de-77a1-c0ff`).
pub fn short(sha256: &[u8; 32]) -> String {
    let hex = hex::encode(&sha256[..10]);
    hex.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// Parses a fingerprint a person typed: hex with or without colons, any case.
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let clean: String = text.chars().filter(|c| *c != ':' && !c.is_whitespace()).collect();
    let bytes = hex::decode(clean).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let d = sha256(b"abc");
        assert!(cert_sha256(b"abc").starts_with("BA:78:16:BF"));
        assert_eq!(short(&d), "ba78-16bf-8f01-cfea-4141");
        assert_eq!(parse_sha256(&cert_sha256(b"abc")), Some(d));
        assert_eq!(parse_sha256(&hex::encode(d)), Some(d));
        assert_eq!(parse_sha256("abcd"), None);
    }
}
