//! The conversion of a DER ECDSA signature (what X.509 signers return) into the fixed-length
//! `r || s` of COSE (RFC 9053 section 2.1) and ESP32 signature blocks, behind the default
//! [`Signer::sign_fixed`](crate::key::Signer::sign_fixed).
//!
//! The per-algorithm facts COSE needs (algorithm identifiers, signature lengths, verification
//! algorithms) are methods of [`SignatureAlgorithm`](crate::key::SignatureAlgorithm), with the
//! rest of each algorithm's facts.

/// Converts a DER `Ecdsa-Sig-Value` to the fixed-length `r || s` of COSE (RFC 9053 section 2.1),
/// each integer left-padded to `n` bytes. Refuses anything but minimal DER.
pub(crate) fn der_to_fixed(der: &[u8], n: usize) -> Option<Vec<u8>> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (body, rest) = der_content(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let (r, body) = der_uint(body, n)?;
    let (s, body) = der_uint(body, n)?;
    if !body.is_empty() {
        return None;
    }
    let mut out = vec![0u8; 2 * n];
    out[n - r.len()..n].copy_from_slice(r);
    out[2 * n - s.len()..].copy_from_slice(s);
    Some(out)
}

/// Reads a DER length and returns (content, rest).
fn der_content(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = b.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&len, rest) = rest.split_first()?;
            if len < 0x80 {
                return None; // not minimal
            }
            (usize::from(len), rest)
        }
        _ => return None, // no ECDSA signature of these curves needs more
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// Reads a DER INTEGER that must be positive and fit in `n` bytes; returns its magnitude without
/// leading zeros, and the rest.
fn der_uint(b: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    if tag != 0x02 {
        return None;
    }
    let (int, rest) = der_content(rest)?;
    let (&first, tail) = int.split_first()?;
    if first & 0x80 != 0 {
        return None; // negative
    }
    let magnitude = if first == 0 {
        match tail.first() {
            Some(next) if next & 0x80 != 0 => tail,
            _ => return None, // zero, or a non-minimal leading zero
        }
    } else {
        int
    };
    if magnitude.len() > n {
        return None;
    }
    Some((magnitude, rest))
}
