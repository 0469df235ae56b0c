//! ESP32 Secure Boot V2 signed images, as `espsecure sign-data --version 2` makes them and the ESP32
//! bootloader checks them.
//!
//! The image is padded with 0xff to a multiple of 4096 bytes; then comes one 4096-byte signature
//! sector holding up to three 1216-byte signature blocks, the rest 0xff. A block (little-endian):
//!
//! ```text
//! RSA-3072 (version 0x02)                 ECDSA P-256 (version 0x03)
//!   0    magic 0xE7                         0    magic 0xE7
//!   1    version 0x02                       1    version 0x03
//!   2    0, 0                               2    0x00 (SHA-256), 0
//!   4    SHA-256 of the padded image (32)   4    SHA-256 of the padded image (32)
//!   36   modulus n (384, little-endian)     36   curve 0x02 (P-256)
//!   420  exponent e (u32)                   37   public key x, y (32 + 32, each little-endian)
//!   424  R^2 mod n, R = 2^3072 (384, LE)    101  signature r, s (32 + 32, each little-endian)
//!   808  -n^-1 mod 2^32 (u32)               165  zeros (1031)
//!   812  RSA-PSS signature (384, LE)
//!   1196 CRC-32 (IEEE) of bytes 0..1196     1196 CRC-32 (IEEE) of bytes 0..1196
//!   1200 zeros (16)                         1200 zeros (16)
//! ```
//!
//! RSA signatures are RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt; ECDSA signs the
//! SHA-256 of the padded image. The public-key digest burned into eFuse is the SHA-256 of the key
//! material as it sits in the block: bytes 36..812 for RSA, bytes 36..101 for ECDSA
//! (`espsecure digest-sbv2-public-key`).

use num_bigint::BigUint;

use super::{le_u32, sha256, FirmwareError, FirmwareKey, MAX_IMAGE_LEN};
use crate::key::{SignatureAlgorithm, Signer};

/// Images and signature sectors are aligned to flash sectors of this size.
pub const SECTOR_LEN: usize = 4096;
/// Size of one signature block.
pub const BLOCK_LEN: usize = 1216;
/// Bytes of a block covered by its CRC.
const BLOCK_CRC_OFFSET: usize = 1196;
/// At most this many signature blocks (one per key, for key revocation).
pub const MAX_BLOCKS: usize = 3;
/// A signature block's first byte.
pub const BLOCK_MAGIC: u8 = 0xE7;
/// Block version: RSA-3072-PSS.
pub const VERSION_RSA: u8 = 0x02;
/// Block version: ECDSA.
pub const VERSION_ECDSA: u8 = 0x03;
/// ECDSA curve ID of P-256 in a block.
const CURVE_P256: u8 = 2;
/// First byte of an ESP-IDF image header.
const ESP_IMAGE_MAGIC: u8 = 0xE9;
/// `esp_app_desc_t.magic_word`.
const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// Offset of `esp_app_desc_t` in an app image (after the 24-byte image header and the first
/// 8-byte segment header).
const APP_DESC_OFFSET: usize = 32;

/// A signed image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedImage {
    /// The padded image followed by the signature sector.
    pub bytes: Vec<u8>,
    /// SHA-256 of the padded image, as in the signature block.
    pub digest: [u8; 32],
}

/// What a successful verification found; only [`verify`] makes one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct VerifiedImage {
    /// Bytes covered by the signature (the padded image).
    pub signed_len: usize,
    /// The signature block that verified (0, 1 or 2).
    pub block: usize,
    /// The verified digest (hex).
    #[serde(serialize_with = "hex_bytes")]
    pub digest: [u8; 32],
    /// `esp_app_desc_t.secure_version` (anti-rollback), when the image is an ESP-IDF app.
    pub secure_version: Option<u32>,
    /// `esp_app_desc_t.version`, when the image is an ESP-IDF app.
    pub app_version: Option<String>,
}

fn hex_bytes<S: serde::Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

fn unsupported(alg: SignatureAlgorithm) -> FirmwareError {
    FirmwareError::UnsupportedAlgorithm {
        format: "esp32-sbv2",
        alg: alg.name(),
    }
}

/// Little-endian, zero-padded to `len` bytes.
fn le_fixed(be: &[u8], len: usize) -> Option<Vec<u8>> {
    let i = be.iter().position(|b| *b != 0).unwrap_or(be.len());
    let be = &be[i..];
    if be.len() > len {
        return None;
    }
    let mut out: Vec<u8> = be.iter().rev().copied().collect();
    out.resize(len, 0);
    Some(out)
}

/// The public key as it appears in a signature block (what the eFuse digest covers).
pub fn key_material(key: &FirmwareKey) -> Result<Vec<u8>, FirmwareError> {
    match key.algorithm() {
        SignatureAlgorithm::Rsa3072PssSha256 => {
            let (n_be, e_be) = key
                .rsa_components()
                .ok_or(FirmwareError::BadKey("malformed RSA key"))?;
            let n = BigUint::from_bytes_be(n_be);
            if n.bits() != 3072 {
                return Err(FirmwareError::BadKey("RSA keys must be 3072 bits"));
            }
            let e = e_be
                .iter()
                .try_fold(0u32, |acc, b| acc.checked_mul(256).map(|a| a | u32::from(*b)));
            let e = e.ok_or(FirmwareError::BadKey("RSA exponent too large"))?;
            // The bootloader's Montgomery parameters: R^2 mod n with R = 2^3072, and
            // -n^-1 mod 2^32 (n is odd, so the inverse exists).
            let rinv = (BigUint::from(1u8) << 6144u32) % &n;
            let n0 = BigUint::from(n.iter_u32_digits().next().unwrap_or(0));
            let inv = n0
                .modinv(&(BigUint::from(1u8) << 32u32))
                .and_then(|v| v.iter_u32_digits().next())
                .ok_or(FirmwareError::BadKey("RSA modulus is even"))?;
            let m = inv.wrapping_neg();
            let mut out = Vec::with_capacity(776);
            out.extend(le_fixed(n_be, 384).ok_or(FirmwareError::BadKey("RSA modulus"))?);
            out.extend_from_slice(&e.to_le_bytes());
            out.extend(le_fixed(&rinv.to_bytes_be(), 384).ok_or(FirmwareError::BadKey("RSA modulus"))?);
            out.extend_from_slice(&m.to_le_bytes());
            Ok(out)
        }
        SignatureAlgorithm::EcdsaP256Sha256 => {
            let raw = key.raw();
            if raw.len() != 65 || raw[0] != 0x04 {
                return Err(FirmwareError::BadKey("malformed P-256 point"));
            }
            let mut out = Vec::with_capacity(65);
            out.push(CURVE_P256);
            out.extend(raw[1..33].iter().rev());
            out.extend(raw[33..65].iter().rev());
            Ok(out)
        }
        other => Err(unsupported(other)),
    }
}

/// The public-key digest to burn into eFuse (`espsecure digest-sbv2-public-key`).
pub fn public_key_digest(key: &FirmwareKey) -> Result<[u8; 32], FirmwareError> {
    Ok(sha256(&key_material(key)?))
}

/// Whether `sector` starts with a well-formed signature block (magic, version, CRC).
fn starts_with_block(sector: &[u8]) -> bool {
    match sector.get(..BLOCK_LEN) {
        Some(b) => {
            b[0] == BLOCK_MAGIC
                && (b[1] == VERSION_RSA || b[1] == VERSION_ECDSA)
                && le_u32(b, BLOCK_CRC_OFFSET) == Some(crc32fast::hash(&b[..BLOCK_CRC_OFFSET]))
        }
        None => false,
    }
}

/// Pads `input` to whole sectors and appends a signature sector with one block signed by `signer`.
/// The result is verified with the signer's public key before it is returned.
pub fn sign(input: &[u8], signer: &dyn Signer) -> Result<SignedImage, FirmwareError> {
    let key = FirmwareKey::from_signer(signer)?;
    let material = key_material(&key)?;
    if input.is_empty() {
        return Err(FirmwareError::Empty);
    }
    if input.len() > MAX_IMAGE_LEN - SECTOR_LEN {
        return Err(FirmwareError::TooLarge);
    }
    if input.len().is_multiple_of(SECTOR_LEN)
        && input.len() >= 2 * SECTOR_LEN
        && starts_with_block(&input[input.len() - SECTOR_LEN..])
    {
        return Err(FirmwareError::BadInput(
            "the input already ends with a Secure Boot V2 signature sector",
        ));
    }
    let mut bytes = Vec::with_capacity(input.len() + 2 * SECTOR_LEN);
    bytes.extend_from_slice(input);
    bytes.resize(input.len().div_ceil(SECTOR_LEN) * SECTOR_LEN, 0xff);
    let digest = sha256(&bytes);
    // Both block versions carry fixed-size signatures: RSA-PSS as the modulus-sized integer,
    // ECDSA as r || s (each reversed below).
    let signature = signer.sign_fixed(&bytes).map_err(|e| match e {
        crate::key::KeyError::MalformedSignature { .. } => FirmwareError::SignerInconsistent,
        other => other.into(),
    })?;
    if !key.verify_fixed(&bytes, &signature) {
        return Err(FirmwareError::SignerInconsistent);
    }
    let mut block = Vec::with_capacity(BLOCK_LEN);
    match key.algorithm() {
        SignatureAlgorithm::Rsa3072PssSha256 => {
            block.extend_from_slice(&[BLOCK_MAGIC, VERSION_RSA, 0, 0]);
            block.extend_from_slice(&digest);
            block.extend_from_slice(&material);
            if signature.len() != 384 {
                return Err(FirmwareError::SignerInconsistent);
            }
            block.extend(signature.iter().rev());
        }
        _ => {
            block.extend_from_slice(&[BLOCK_MAGIC, VERSION_ECDSA, 0, 0]);
            block.extend_from_slice(&digest);
            block.extend_from_slice(&material);
            if signature.len() != 64 {
                return Err(FirmwareError::SignerInconsistent);
            }
            block.extend(signature[..32].iter().rev());
            block.extend(signature[32..].iter().rev());
            block.resize(BLOCK_CRC_OFFSET, 0);
        }
    }
    if block.len() != BLOCK_CRC_OFFSET {
        return Err(FirmwareError::SignerInconsistent);
    }
    let crc = crc32fast::hash(&block);
    block.extend_from_slice(&crc.to_le_bytes());
    block.resize(BLOCK_LEN, 0);
    bytes.extend_from_slice(&block);
    bytes.resize(bytes.len() + SECTOR_LEN - BLOCK_LEN, 0xff);
    Ok(SignedImage { bytes, digest })
}

/// One parsed signature block.
struct Block<'a> {
    version: u8,
    digest: &'a [u8],
    material: &'a [u8],
    signature: &'a [u8],
}

/// Parses and checks one block: version, reserved bytes, CRC, padding.
fn parse_block(b: &[u8]) -> Result<Block<'_>, FirmwareError> {
    let malformed = FirmwareError::Malformed;
    if le_u32(b, BLOCK_CRC_OFFSET) != Some(crc32fast::hash(&b[..BLOCK_CRC_OFFSET])) {
        return Err(malformed("signature block CRC"));
    }
    if b[BLOCK_CRC_OFFSET + 4..].iter().any(|x| *x != 0) {
        return Err(malformed("signature block padding"));
    }
    match b[1] {
        VERSION_RSA if b[2] == 0 && b[3] == 0 => Ok(Block {
            version: VERSION_RSA,
            digest: &b[4..36],
            material: &b[36..812],
            signature: &b[812..1196],
        }),
        VERSION_ECDSA if b[2] == 0 && b[3] == 0 => {
            if b[36] != CURVE_P256 {
                return Err(malformed("only ECDSA P-256 signature blocks are supported"));
            }
            if b[165..BLOCK_CRC_OFFSET].iter().any(|x| *x != 0) {
                return Err(malformed("signature block reserved bytes"));
            }
            Ok(Block {
                version: VERSION_ECDSA,
                digest: &b[4..36],
                material: &b[36..101],
                signature: &b[101..165],
            })
        }
        VERSION_RSA | VERSION_ECDSA => Err(malformed("unsupported signature block scheme")),
        _ => Err(malformed("unknown signature block version")),
    }
}

/// Reads `esp_app_desc_t` (secure version, version string) if `data` is an ESP-IDF app image.
pub fn app_descriptor(data: &[u8]) -> Option<(u32, String)> {
    if data.first() != Some(&ESP_IMAGE_MAGIC) || le_u32(data, APP_DESC_OFFSET) != Some(APP_DESC_MAGIC) {
        return None;
    }
    let secure_version = le_u32(data, APP_DESC_OFFSET + 4)?;
    let raw = data.get(APP_DESC_OFFSET + 16..APP_DESC_OFFSET + 48)?;
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    let version = raw[..end]
        .iter()
        .map(|b| {
            if b.is_ascii_graphic() || *b == b' ' {
                char::from(*b)
            } else {
                '?'
            }
        })
        .collect();
    Some((secure_version, version))
}

/// Verifies a Secure Boot V2 signed image with `key`, as the bootloader does: the signature sector
/// is the last 4096 bytes; every block present must be well-formed (CRC, reserved bytes) and carry
/// the digest of everything before the sector; the block whose key material is `key`'s must hold a
/// valid signature. stamp is stricter than the bootloader about form: the sector must hold
/// consecutive blocks from its start and 0xff after them. If `min_secure_version` is given, the
/// image must be an ESP-IDF app whose `secure_version` is at least that (anti-rollback).
pub fn verify(
    image: &[u8],
    key: &FirmwareKey,
    min_secure_version: Option<u32>,
) -> Result<VerifiedImage, FirmwareError> {
    if !crate::firmware::Format::Esp32Sbv2.supports(key.algorithm()) {
        return Err(unsupported(key.algorithm()));
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(FirmwareError::TooLarge);
    }
    if !image.len().is_multiple_of(SECTOR_LEN) {
        return Err(FirmwareError::Truncated(
            "the length is not a multiple of 4096 bytes",
        ));
    }
    if image.len() < 2 * SECTOR_LEN {
        return Err(FirmwareError::Truncated("no image before the signature sector"));
    }
    let (data, sector) = image.split_at(image.len() - SECTOR_LEN);
    let mut blocks = Vec::new();
    let mut end = 0;
    while blocks.len() < MAX_BLOCKS && sector[end] == BLOCK_MAGIC {
        blocks.push(parse_block(&sector[end..end + BLOCK_LEN])?);
        end += BLOCK_LEN;
    }
    if blocks.is_empty() {
        return Err(FirmwareError::Malformed("no signature block"));
    }
    if sector[end..].iter().any(|b| *b != 0xff) {
        return Err(FirmwareError::Malformed("signature sector padding"));
    }
    let digest = sha256(data);
    if blocks.iter().any(|b| b.digest != digest) {
        return Err(FirmwareError::DigestMismatch);
    }
    let material = key_material(key)?;
    let want_version = match key.algorithm() {
        SignatureAlgorithm::Rsa3072PssSha256 => VERSION_RSA,
        _ => VERSION_ECDSA,
    };
    let (index, block) = blocks
        .iter()
        .enumerate()
        .find(|(_, b)| b.version == want_version && b.material == material.as_slice())
        .ok_or(FirmwareError::KeyMismatch("no signature block for this key"))?;
    let ok = match key.algorithm() {
        SignatureAlgorithm::Rsa3072PssSha256 => {
            let sig: Vec<u8> = block.signature.iter().rev().copied().collect();
            key.verify(data, &sig)
        }
        _ => {
            let mut rs: Vec<u8> = block.signature[..32].iter().rev().copied().collect();
            rs.extend(block.signature[32..].iter().rev());
            key.verify_fixed(data, &rs)
        }
    };
    if !ok {
        return Err(FirmwareError::BadSignature);
    }
    let app = app_descriptor(data);
    if let Some(min) = min_secure_version {
        match &app {
            None => {
                return Err(FirmwareError::NoVersion(
                    "ESP-IDF app descriptor (secure_version)",
                ))
            }
            Some((sv, _)) if *sv < min => {
                return Err(FirmwareError::Rollback {
                    found: sv.to_string(),
                    minimum: min.to_string(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(VerifiedImage {
        signed_len: data.len(),
        block: index,
        digest,
        secure_version: app.as_ref().map(|a| a.0),
        app_version: app.map(|a| a.1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::tests::{other_signers, signers};

    fn esp_signers() -> impl Iterator<Item = &'static (SignatureAlgorithm, crate::profile::tests::TestSigner)>
    {
        signers()
            .iter()
            .filter(|(a, _)| *a != SignatureAlgorithm::Ed25519)
    }

    /// A minimal ESP-IDF app image: image header, segment header, app descriptor.
    pub(crate) fn app_image(secure_version: u32, version: &str) -> Vec<u8> {
        let mut v = vec![0u8; 256];
        v[0] = ESP_IMAGE_MAGIC;
        v[1] = 1;
        v[32..36].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
        v[36..40].copy_from_slice(&secure_version.to_le_bytes());
        v[48..48 + version.len()].copy_from_slice(version.as_bytes());
        v
    }

    #[test]
    fn sign_then_verify_pads_to_sectors() {
        for (alg, s) in esp_signers() {
            let key = FirmwareKey::from_signer(s).unwrap();
            for len in [1usize, 4095, 4096, 5000] {
                let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let signed = sign(&input, s).unwrap();
                let padded = len.div_ceil(4096) * 4096;
                assert_eq!(signed.bytes.len(), padded + 4096, "{alg:?}");
                assert_eq!(&signed.bytes[..len], input.as_slice());
                assert!(signed.bytes[len..padded].iter().all(|b| *b == 0xff));
                let v = verify(&signed.bytes, &key, None).unwrap();
                assert_eq!(v.digest, signed.digest);
                assert_eq!(v.signed_len, padded);
                assert_eq!(v.block, 0);
                assert_eq!(v.secure_version, None);
                let b = &signed.bytes[padded..];
                assert_eq!(b[0], 0xE7);
                assert_eq!(&b[4..36], &signed.digest);
                assert_eq!(
                    &b[36..36 + key_material(&key).unwrap().len()],
                    key_material(&key).unwrap()
                );
                assert!(b[BLOCK_LEN..].iter().all(|x| *x == 0xff));
            }
            assert!(matches!(
                sign(&sign(b"x", s).unwrap().bytes, s),
                Err(FirmwareError::BadInput(_))
            ));
        }
        let (_, ed) = &signers()[1];
        assert!(matches!(
            sign(b"x", ed),
            Err(FirmwareError::UnsupportedAlgorithm { .. })
        ));
        let (_, p) = &signers()[0];
        assert_eq!(sign(b"", p), Err(FirmwareError::Empty));
    }

    #[test]
    fn rsa_key_material_has_the_montgomery_parameters() {
        let (_, s) = signers()
            .iter()
            .find(|(a, _)| *a == SignatureAlgorithm::Rsa3072PssSha256)
            .unwrap();
        let key = FirmwareKey::from_signer(s).unwrap();
        let m = key_material(&key).unwrap();
        assert_eq!(m.len(), 776);
        let n = BigUint::from_bytes_le(&m[..384]);
        assert_eq!(u32::from_le_bytes(m[384..388].try_into().unwrap()), 65537);
        let rinv = BigUint::from_bytes_le(&m[388..772]);
        assert_eq!(rinv, (BigUint::from(1u8) << 6144u32) % &n);
        let minv = u32::from_le_bytes(m[772..776].try_into().unwrap());
        let n0 = n.iter_u32_digits().next().unwrap();
        // m * n == -1 mod 2^32
        assert_eq!(minv.wrapping_mul(n0), u32::MAX);
    }

    #[test]
    fn wrong_key_and_rollback_are_refused() {
        for ((alg, s), (_, other)) in esp_signers().zip(
            other_signers()
                .iter()
                .filter(|(a, _)| *a != SignatureAlgorithm::Ed25519),
        ) {
            let img = app_image(3, "v1.4.0");
            let signed = sign(&img, s).unwrap();
            let key = FirmwareKey::from_signer(s).unwrap();
            let v = verify(&signed.bytes, &key, Some(3)).unwrap();
            assert_eq!(v.secure_version, Some(3));
            assert_eq!(v.app_version.as_deref(), Some("v1.4.0"));
            assert!(
                matches!(
                    verify(&signed.bytes, &key, Some(4)),
                    Err(FirmwareError::Rollback { .. })
                ),
                "{alg:?}"
            );
            let other = FirmwareKey::from_signer(other).unwrap();
            assert!(matches!(
                verify(&signed.bytes, &other, None),
                Err(FirmwareError::KeyMismatch(_))
            ));
            let plain = sign(b"not an app", s).unwrap();
            assert!(matches!(
                verify(&plain.bytes, &key, Some(0)),
                Err(FirmwareError::NoVersion(_))
            ));
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_is_refused_without_panic() {
        for (alg, s) in esp_signers() {
            let key = FirmwareKey::from_signer(s).unwrap();
            let signed = sign(b"tiny", s).unwrap().bytes;
            verify(&signed, &key, None).unwrap();
            // Every bit of the image sector and the signature sector.
            for i in 0..signed.len() {
                for bit in 0..8 {
                    let mut m = signed.clone();
                    m[i] ^= 1 << bit;
                    assert!(
                        verify(&m, &key, None).is_err(),
                        "{alg:?}: flip of bit {bit} at byte {i} accepted"
                    );
                }
            }
            for len in (0..signed.len()).step_by(97).chain([4096, 8191, 4095]) {
                assert!(
                    verify(&signed[..len], &key, None).is_err(),
                    "{alg:?}: truncated to {len}"
                );
            }
            let mut longer = signed.clone();
            longer.extend_from_slice(&[0xff; 4096]);
            assert!(verify(&longer, &key, None).is_err());
        }
    }

    #[test]
    fn a_block_with_a_fixed_crc_but_altered_content_is_refused() {
        for (_, s) in esp_signers() {
            let key = FirmwareKey::from_signer(s).unwrap();
            let signed = sign(b"data", s).unwrap().bytes;
            let base = signed.len() - SECTOR_LEN;
            for field in [4usize, 40, 150, 500, 1000] {
                let mut m = signed.clone();
                m[base + field] ^= 0x01;
                let crc = crc32fast::hash(&m[base..base + BLOCK_CRC_OFFSET]);
                m[base + BLOCK_CRC_OFFSET..base + BLOCK_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
                assert!(verify(&m, &key, None).is_err(), "field {field}");
            }
        }
    }
}
