//! Key kinds and the encodings tokens use: EC parameters, EC points, ECDSA signatures.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::KeyType;
use stamp_core::key::{KeyAgreementAlgorithm, SignatureAlgorithm};

/// What a key is for, with its algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
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
    pub(crate) fn ec_params(self) -> &'static [u8] {
        match self {
            Kind::Sign(SignatureAlgorithm::EcdsaP256Sha256)
            | Kind::Agree(KeyAgreementAlgorithm::EcdhP256) => P256_PARAMS,
            Kind::Sign(SignatureAlgorithm::EcdsaP384Sha384)
            | Kind::Agree(KeyAgreementAlgorithm::EcdhP384) => P384_PARAMS,
            Kind::Sign(SignatureAlgorithm::Ed25519) => ED25519_PARAMS,
            // Never created: the store refuses RSA keys before making a `Kind` for one.
            Kind::Sign(SignatureAlgorithm::Rsa3072PssSha256) => &[],
        }
    }

    /// Length of the raw public key: an uncompressed point, or 32 bytes for Ed25519.
    pub(crate) fn public_len(self) -> usize {
        match self {
            // RSA never gets here (see `ec_params`).
            Kind::Sign(a) => a.public_key_len().unwrap_or(0),
            Kind::Agree(a) => a.public_key_len(),
        }
    }

    pub(crate) fn generation_mechanism(self) -> Mechanism<'static> {
        match self {
            Kind::Sign(SignatureAlgorithm::Ed25519) => Mechanism::EccEdwardsKeyPairGen,
            _ => Mechanism::EccKeyPairGen,
        }
    }

    pub(crate) fn use_mechanism(self) -> MechanismType {
        match self {
            Kind::Sign(SignatureAlgorithm::Ed25519) => MechanismType::EDDSA,
            Kind::Sign(_) => MechanismType::ECDSA,
            Kind::Agree(_) => MechanismType::ECDH1_DERIVE,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Sign(a) => a.name(),
            Kind::Agree(a) => a.name(),
        }
    }

    pub(crate) fn is_sign(self) -> bool {
        matches!(self, Kind::Sign(_))
    }

    /// The kind of a key from its CKA_KEY_TYPE, CKA_EC_PARAMS and whether it may sign.
    pub(crate) fn detect(key_type: KeyType, params: &[u8], sign: bool) -> Option<Kind> {
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
pub(crate) fn decode_point(value: &[u8], len: usize) -> Option<Vec<u8>> {
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
pub(crate) fn ecdsa_der(raw: &[u8], field_len: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * field_len {
        return None;
    }
    pub(crate) fn integer(out: &mut Vec<u8>, mut x: &[u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn ecdsa_signatures_are_reencoded_as_der() {
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
    pub(crate) fn points_are_read_in_both_encodings() {
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
    pub(crate) fn key_kinds_from_attributes() {
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
}
