//! MCUboot signed images, as `imgtool sign` makes them and MCUboot's bootutil checks them.
//!
//! ```text
//! offset 0            image header (32 bytes, little-endian):
//!                       magic 0x96f3b83d, load_addr u32, hdr_size u16, protect_tlv_size u16,
//!                       img_size u32, flags u32, version (major u8, minor u8, revision u16,
//!                       build u32), pad u32 = 0
//!        32..hdr_size header padding (0xff when stamp adds the header, as imgtool --pad-header)
//!        hdr_size     the image (img_size bytes)
//!        +img_size    protected TLV area (only when protect_tlv_size != 0):
//!                       info (magic 0x6908, total length u16), then TLVs (SEC_CNT 0x50)
//!        ...          unprotected TLV area: info (magic 0x6907, total length u16 including the
//!                       info), then TLVs (type u8, 0 u8, len u16, value):
//!                       SHA256 0x10 = SHA-256(header || image || protected TLVs)
//!                       KEYHASH 0x01 = SHA-256(public key: SubjectPublicKeyInfo DER for
//!                                      ECDSA/Ed25519, PKCS#1 RSAPublicKey DER for RSA)
//!                       signature: ECDSASIG 0x22 (DER, ECDSA P-256 over the hashed region),
//!                                  ED25519 0x24 (Ed25519 over the 32-byte SHA-256),
//!                                  RSA3072 0x23 (RSA-PSS SHA-256, salt 32, over the hashed region)
//! ```

use super::{le_u16, le_u32, sha256, FirmwareError, FirmwareKey, Format, Version, MAX_IMAGE_LEN};
use crate::key::{SignatureAlgorithm, Signer};

/// The image header's magic number.
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// Size of the image header structure (the header area may be larger).
pub const HEADER_LEN: usize = 32;
/// [`HEADER_LEN`] as the header's own 16-bit field writes it.
const HEADER_SIZE: u16 = 32;
/// Magic of the unprotected TLV area.
pub const TLV_INFO_MAGIC: u16 = 0x6907;
/// Magic of the protected TLV area.
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
/// TLV: SHA-256 of the public key.
pub const TLV_KEYHASH: u16 = 0x01;
/// TLV: SHA-256 of header, image and protected TLVs.
pub const TLV_SHA256: u16 = 0x10;
/// TLV: ECDSA signature (DER).
pub const TLV_ECDSASIG: u16 = 0x22;
/// TLV: RSA-3072 PSS signature.
pub const TLV_RSA3072: u16 = 0x23;
/// TLV: Ed25519 signature.
pub const TLV_ED25519: u16 = 0x24;
/// Protected TLV: security counter (hardware rollback protection).
pub const TLV_SEC_CNT: u16 = 0x50;
/// Header flag: the image is loaded into RAM at `load_addr`.
pub const IMAGE_F_RAM_LOAD: u32 = 0x20;
/// Header flags stamp's verifier refuses: encrypted (AES-128/256) and compressed images, whose
/// bytes are not what runs.
const IMAGE_F_UNSUPPORTED: u32 = 0x04 | 0x08 | 0x200 | 0x400 | 0x800;

/// How to build the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The image version written into the header.
    pub version: Version,
    /// Size of the header area (at least 32; Zephyr uses 0x200).
    pub header_size: u16,
    /// Prepend a header area of 0xff bytes (imgtool `--pad-header`); otherwise the input must
    /// start with `header_size` zero bytes reserved by the build for the header.
    pub pad_header: bool,
    /// RAM load address; non-zero sets the RAM_LOAD flag (imgtool `--load-addr`).
    pub load_addr: u32,
    /// A security counter in a protected TLV (imgtool `--security-counter`), if any.
    pub security_counter: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            version: Version::default(),
            header_size: HEADER_SIZE,
            pad_header: true,
            load_addr: 0,
            security_counter: None,
        }
    }
}

/// A signed image and what identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedImage {
    /// The signed image bytes.
    pub bytes: Vec<u8>,
    /// The SHA-256 TLV: the digest of header, image and protected TLVs.
    pub image_hash: [u8; 32],
    /// The KEYHASH TLV.
    pub key_hash: [u8; 32],
}

/// What a successful verification found; only [`verify`] makes one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct VerifiedImage {
    /// The header's version.
    pub version: Version,
    /// The header area size.
    pub header_size: u16,
    /// The image size (without header and TLVs).
    pub image_size: u32,
    /// The load address.
    pub load_addr: u32,
    /// The header flags.
    pub flags: u32,
    /// The protected security counter, if present.
    pub security_counter: Option<u32>,
    /// The verified SHA-256 TLV (hex).
    #[serde(serialize_with = "hex_bytes")]
    pub image_hash: [u8; 32],
}

fn hex_bytes<S: serde::Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

/// The bytes MCUboot hashes for the KEYHASH TLV (imgtool's `get_public_bytes`).
pub fn key_hash(key: &FirmwareKey) -> [u8; 32] {
    match key.algorithm() {
        SignatureAlgorithm::Rsa3072PssSha256 => sha256(key.raw()),
        _ => sha256(key.spki_der()),
    }
}

fn signature_tlv(alg: SignatureAlgorithm) -> Option<u16> {
    match alg {
        SignatureAlgorithm::EcdsaP256Sha256 => Some(TLV_ECDSASIG),
        SignatureAlgorithm::Ed25519 => Some(TLV_ED25519),
        SignatureAlgorithm::Rsa3072PssSha256 => Some(TLV_RSA3072),
        SignatureAlgorithm::EcdsaP384Sha384 => None,
    }
}

fn push_tlv(out: &mut Vec<u8>, kind: u16, value: &[u8]) -> Result<(), FirmwareError> {
    let len = u16::try_from(value.len()).map_err(|_| FirmwareError::TooLarge)?;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// An area of TLVs with its info header; `tlvs` must be non-empty.
fn tlv_area(magic: u16, tlvs: &[u8]) -> Result<Vec<u8>, FirmwareError> {
    let total = u16::try_from(tlvs.len() + 4).map_err(|_| FirmwareError::TooLarge)?;
    let mut out = Vec::with_capacity(tlvs.len() + 4);
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(tlvs);
    Ok(out)
}

/// Builds and signs an MCUboot image from `input` (a raw binary, or one with a zeroed header area).
/// The result is verified with the signer's public key before it is returned.
pub fn sign(input: &[u8], opts: &Options, signer: &dyn Signer) -> Result<SignedImage, FirmwareError> {
    let key = FirmwareKey::from_signer(signer)?;
    let alg = key.algorithm();
    let sig_tlv = signature_tlv(alg)
        .filter(|_| Format::Mcuboot.supports(alg))
        .ok_or(FirmwareError::UnsupportedAlgorithm {
            format: "mcuboot",
            alg: alg.name(),
        })?;
    if input.is_empty() {
        return Err(FirmwareError::Empty);
    }
    if input.len() > MAX_IMAGE_LEN {
        return Err(FirmwareError::TooLarge);
    }
    if le_u32(input, 0) == Some(IMAGE_MAGIC) {
        return Err(FirmwareError::BadInput("the input is already an MCUboot image"));
    }
    let hs = usize::from(opts.header_size);
    if hs < HEADER_LEN {
        return Err(FirmwareError::BadInput(
            "the header size must be at least 32 bytes",
        ));
    }
    let mut region = if opts.pad_header {
        let mut v = Vec::with_capacity(hs + input.len() + 512);
        v.resize(hs, 0xff);
        v.extend_from_slice(input);
        v
    } else {
        match input.get(..hs) {
            Some(head) if head.iter().all(|b| *b == 0) => {}
            _ => {
                return Err(FirmwareError::BadInput(
                    "the image does not start with header-size zero bytes reserved for the header \
                     (pad the header to prepend one)",
                ))
            }
        }
        input.to_vec()
    };
    let image_size = region.len() - hs;
    if image_size == 0 {
        return Err(FirmwareError::Empty);
    }
    let image_size = u32::try_from(image_size).map_err(|_| FirmwareError::TooLarge)?;

    let prot = match opts.security_counter {
        Some(c) => {
            let mut tlvs = Vec::new();
            push_tlv(&mut tlvs, TLV_SEC_CNT, &c.to_le_bytes())?;
            tlv_area(TLV_PROT_INFO_MAGIC, &tlvs)?
        }
        None => Vec::new(),
    };
    let prot_size = u16::try_from(prot.len()).map_err(|_| FirmwareError::TooLarge)?;
    let flags = if opts.load_addr != 0 { IMAGE_F_RAM_LOAD } else { 0 };
    let v = opts.version;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&IMAGE_MAGIC.to_le_bytes());
    header.extend_from_slice(&opts.load_addr.to_le_bytes());
    header.extend_from_slice(&opts.header_size.to_le_bytes());
    header.extend_from_slice(&prot_size.to_le_bytes());
    header.extend_from_slice(&image_size.to_le_bytes());
    header.extend_from_slice(&flags.to_le_bytes());
    header.push(v.major);
    header.push(v.minor);
    header.extend_from_slice(&v.revision.to_le_bytes());
    header.extend_from_slice(&v.build.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    region[..HEADER_LEN].copy_from_slice(&header);
    region.extend_from_slice(&prot);

    let image_hash = sha256(&region);
    let key_hash = key_hash(&key);
    // ECDSA and RSA sign the hashed region (hashing it with SHA-256, the same as signing the
    // digest pre-hashed); Ed25519 signs the 32-byte digest, as MCUboot's non-pure Ed25519 does.
    let message: &[u8] = match alg {
        SignatureAlgorithm::Ed25519 => &image_hash,
        _ => &region,
    };
    let signature = signer.sign(message)?;
    if !key.verify(message, &signature) {
        return Err(FirmwareError::SignerInconsistent);
    }
    let mut tlvs = Vec::with_capacity(signature.len() + 80);
    push_tlv(&mut tlvs, TLV_SHA256, &image_hash)?;
    push_tlv(&mut tlvs, TLV_KEYHASH, &key_hash)?;
    push_tlv(&mut tlvs, sig_tlv, &signature)?;
    region.extend_from_slice(&tlv_area(TLV_INFO_MAGIC, &tlvs)?);
    Ok(SignedImage {
        bytes: region,
        image_hash,
        key_hash,
    })
}

/// Iterates over the TLVs of an area body; every TLV must fit exactly.
fn tlvs(body: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), FirmwareError>> + '_ {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off >= body.len() {
            return None;
        }
        let (Some(kind), Some(len)) = (le_u16(body, off), le_u16(body, off + 2)) else {
            off = body.len();
            return Some(Err(FirmwareError::Malformed("a TLV header runs past its area")));
        };
        let start = off + 4;
        let end = start + usize::from(len);
        match body.get(start..end) {
            Some(value) => {
                off = end;
                Some(Ok((kind, value)))
            }
            None => {
                off = body.len();
                Some(Err(FirmwareError::Malformed("a TLV runs past its area")))
            }
        }
    })
}

/// Verifies a signed MCUboot image with `key`, as MCUboot's bootutil does: header, the image hash
/// over header, image and protected TLVs, the key hash, the signature; then, if `min_version` is
/// given, refuses an image whose major.minor.revision is lower (MCUboot's downgrade prevention;
/// the build number is not compared). The file must end exactly at the end of the TLV area.
pub fn verify(
    image: &[u8],
    key: &FirmwareKey,
    min_version: Option<Version>,
) -> Result<VerifiedImage, FirmwareError> {
    if image.len() > MAX_IMAGE_LEN {
        return Err(FirmwareError::TooLarge);
    }
    let sig_tlv = signature_tlv(key.algorithm())
        .filter(|_| Format::Mcuboot.supports(key.algorithm()))
        .ok_or(FirmwareError::UnsupportedAlgorithm {
            format: "mcuboot",
            alg: key.algorithm().name(),
        })?;
    let field = |off| le_u32(image, off).ok_or(FirmwareError::Truncated("image header"));
    if field(0)? != IMAGE_MAGIC {
        return Err(FirmwareError::Malformed("no MCUboot image magic"));
    }
    let load_addr = field(4)?;
    let header_size = le_u16(image, 8).ok_or(FirmwareError::Truncated("image header"))?;
    let prot_size = le_u16(image, 10).ok_or(FirmwareError::Truncated("image header"))?;
    let image_size = field(12)?;
    let flags = field(16)?;
    let build = field(24)?;
    field(28)?;
    let version = Version {
        major: image[20],
        minor: image[21],
        revision: le_u16(image, 22).ok_or(FirmwareError::Truncated("image header"))?,
        build,
    };
    if usize::from(header_size) < HEADER_LEN {
        return Err(FirmwareError::Malformed("header size below 32 bytes"));
    }
    if flags & IMAGE_F_UNSUPPORTED != 0 {
        return Err(FirmwareError::Malformed(
            "encrypted or compressed images are not supported",
        ));
    }
    let tlv_off = usize::from(header_size)
        .checked_add(usize::try_from(image_size).map_err(|_| FirmwareError::TooLarge)?)
        .ok_or(FirmwareError::TooLarge)?;
    if tlv_off > image.len() {
        return Err(FirmwareError::Truncated("image body"));
    }
    let prot_end = tlv_off + usize::from(prot_size);
    let mut security_counter = None;
    if prot_size != 0 {
        let area = image
            .get(tlv_off..prot_end)
            .ok_or(FirmwareError::Truncated("protected TLV area"))?;
        if le_u16(area, 0) != Some(TLV_PROT_INFO_MAGIC) || le_u16(area, 2) != Some(prot_size) {
            return Err(FirmwareError::Malformed(
                "protected TLV area does not match the header",
            ));
        }
        for tlv in tlvs(&area[4..]) {
            let (kind, value) = tlv?;
            if kind == TLV_SEC_CNT {
                let (Some(c), 4, None) = (le_u32(value, 0), value.len(), security_counter) else {
                    return Err(FirmwareError::Malformed("bad or repeated security counter"));
                };
                security_counter = Some(c);
            }
        }
    }
    let info = image
        .get(prot_end..prot_end + 4)
        .ok_or(FirmwareError::Truncated("TLV area"))?;
    if le_u16(info, 0) != Some(TLV_INFO_MAGIC) {
        return Err(FirmwareError::Malformed("no TLV area after the image"));
    }
    let total = usize::from(le_u16(info, 2).unwrap_or(0));
    if total < 4 {
        return Err(FirmwareError::Malformed("TLV area length"));
    }
    let tlv_end = prot_end + total;
    if tlv_end > image.len() {
        return Err(FirmwareError::Truncated("TLV area"));
    }
    if tlv_end < image.len() {
        return Err(FirmwareError::Malformed("bytes after the TLV area"));
    }
    let (mut hash, mut kh, mut sig) = (None, None, None);
    for tlv in tlvs(&image[prot_end + 4..tlv_end]) {
        let (kind, value) = tlv?;
        let slot = match kind {
            TLV_SHA256 => &mut hash,
            TLV_KEYHASH => &mut kh,
            k if k == sig_tlv => &mut sig,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(FirmwareError::Malformed("repeated TLV"));
        }
    }
    let region = &image[..prot_end];
    let image_hash = sha256(region);
    match hash {
        None => return Err(FirmwareError::Malformed("no SHA-256 TLV")),
        Some(h) if h != image_hash => return Err(FirmwareError::DigestMismatch),
        Some(_) => {}
    }
    match kh {
        None => return Err(FirmwareError::Malformed("no key hash TLV")),
        Some(h) if h != key_hash(key) => return Err(FirmwareError::KeyMismatch("key hash")),
        Some(_) => {}
    }
    let sig = sig.ok_or(FirmwareError::KeyMismatch("no signature for this key type"))?;
    let message: &[u8] = match key.algorithm() {
        SignatureAlgorithm::Ed25519 => &image_hash,
        _ => region,
    };
    if !key.verify(message, sig) {
        return Err(FirmwareError::BadSignature);
    }
    if let Some(min) = min_version {
        if version.release() < min.release() {
            return Err(FirmwareError::Rollback {
                found: version.to_string(),
                minimum: min.to_string(),
            });
        }
    }
    Ok(VerifiedImage {
        version,
        header_size,
        image_size,
        load_addr,
        flags,
        security_counter,
        image_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::tests::{other_signers, signers};

    fn opts(v: &str) -> Options {
        Options {
            version: v.parse().unwrap(),
            ..Options::default()
        }
    }

    #[test]
    fn sign_then_verify_every_algorithm_and_layout() {
        for (alg, s) in signers() {
            let key = FirmwareKey::from_signer(s).unwrap();
            let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
            let o = Options {
                security_counter: Some(7),
                load_addr: 0x2000_0000,
                ..opts("1.2.3+4")
            };
            let signed = sign(&payload, &o, s).unwrap();
            let v = verify(&signed.bytes, &key, Some("1.2.3".parse().unwrap())).unwrap();
            assert_eq!(v.version.to_string(), "1.2.3+4");
            assert_eq!(v.image_size, 300);
            assert_eq!(v.security_counter, Some(7));
            assert_eq!(v.flags, IMAGE_F_RAM_LOAD);
            assert_eq!(v.image_hash, signed.image_hash);
            assert_eq!(&signed.bytes[32..332], payload.as_slice(), "{alg:?}");

            // A build-reserved (zeroed) 0x200 header area is used in place.
            let mut reserved = vec![0u8; 0x200];
            reserved.extend_from_slice(&payload);
            let o = Options {
                header_size: 0x200,
                pad_header: false,
                ..opts("2.0.0")
            };
            let signed = sign(&reserved, &o, s).unwrap();
            assert_eq!(
                signed.bytes.len() - 0x200 - 300,
                signed.bytes.len() - reserved.len()
            );
            let v = verify(&signed.bytes, &key, None).unwrap();
            assert_eq!(v.header_size, 0x200);
            assert_eq!(v.security_counter, None);
            assert!(signed.bytes[32..0x200].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn layout_is_imgtools() {
        // imgtool 2.5's layout for a 4-byte image, header 0x20, version 1.2.3+4, Ed25519 (the
        // integration tests compare whole images with imgtool's own output).
        let (_, s) = &signers()[1];
        let signed = sign(b"\x01\x02\x03\x04", &opts("1.2.3+4"), s).unwrap();
        let b = &signed.bytes;
        assert_eq!(
            hex::encode(&b[..32]),
            "3db8f39600000000200000000400000000000000010203000400000000000000"
        );
        assert_eq!(&b[32..36], b"\x01\x02\x03\x04");
        // info: magic, total = 4 + (4+32) + (4+32) + (4+64)
        assert_eq!(hex::encode(&b[36..38]), "0769");
        assert_eq!(le_u16(b, 38), Some(4 + 36 + 36 + 68));
        assert_eq!(hex::encode(&b[40..44]), "10002000");
        assert_eq!(hex::encode(&b[76..80]), "01002000");
        assert_eq!(hex::encode(&b[112..116]), "24004000");
        assert_eq!(b.len(), 116 + 64);
    }

    #[test]
    fn wrong_key_rollback_and_bad_input_are_refused() {
        for ((alg, s), (_, other)) in signers().iter().zip(other_signers()) {
            let signed = sign(b"firmware", &opts("3.1.0+9"), s).unwrap();
            let other_key = FirmwareKey::from_signer(other).unwrap();
            assert_eq!(
                verify(&signed.bytes, &other_key, None),
                Err(FirmwareError::KeyMismatch("key hash")),
                "{alg:?}"
            );
            let key = FirmwareKey::from_signer(s).unwrap();
            assert!(verify(&signed.bytes, &key, Some("3.1.0+99".parse().unwrap())).is_ok());
            assert!(matches!(
                verify(&signed.bytes, &key, Some("3.1.1".parse().unwrap())),
                Err(FirmwareError::Rollback { .. })
            ));
            assert!(matches!(
                verify(&signed.bytes, &key, Some("4.0.0".parse().unwrap())),
                Err(FirmwareError::Rollback { .. })
            ));
            // A key of another type finds no signature it can check.
            for (_, t) in signers().iter().filter(|(a, _)| a != alg) {
                let k = FirmwareKey::from_signer(t).unwrap();
                assert!(verify(&signed.bytes, &k, None).is_err());
            }
        }
        let (_, s) = &signers()[0];
        assert_eq!(sign(b"", &opts("1"), s), Err(FirmwareError::Empty));
        let not_reserved = Options {
            pad_header: false,
            ..opts("1")
        };
        assert!(matches!(
            sign(b"\x01rest of the image that is long enough", &not_reserved, s),
            Err(FirmwareError::BadInput(_))
        ));
        let signed = sign(b"x", &opts("1"), s).unwrap();
        assert!(matches!(
            sign(&signed.bytes, &opts("1"), s),
            Err(FirmwareError::BadInput(_))
        ));
        let small = Options {
            header_size: 16,
            ..opts("1")
        };
        assert!(sign(b"x", &small, s).is_err());
        let p384 = crate::profile::tests::TestSigner::new(SignatureAlgorithm::EcdsaP384Sha384);
        assert!(sign(b"x", &opts("1"), &p384).is_err());
    }

    #[test]
    fn every_bit_flip_and_every_truncation_is_refused_without_panic() {
        for (alg, s) in signers() {
            let key = FirmwareKey::from_signer(s).unwrap();
            let o = Options {
                security_counter: Some(1),
                ..opts("1.0.0+1")
            };
            let signed = sign(b"tiny image", &o, s).unwrap().bytes;
            verify(&signed, &key, None).unwrap();
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
            for len in 0..signed.len() {
                assert!(
                    verify(&signed[..len], &key, None).is_err(),
                    "{alg:?}: truncated to {len}"
                );
            }
            let mut longer = signed.clone();
            longer.push(0xff);
            assert!(verify(&longer, &key, None).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let (_, s) = &signers()[0];
        let key = FirmwareKey::from_signer(s).unwrap();
        let signed = sign(b"abc", &opts("1"), s).unwrap().bytes;
        // Headers that declare huge or overlapping sizes.
        for (off, val) in [(8usize, 0xffffu32), (10, 0xffff), (12, u32::MAX), (12, 0)] {
            let mut m = signed.clone();
            if off == 12 {
                m[12..16].copy_from_slice(&val.to_le_bytes());
            } else {
                m[off..off + 2].copy_from_slice(&(val as u16).to_le_bytes());
            }
            assert!(verify(&m, &key, None).is_err());
        }
        let mut x: u32 = 0x1234_5678;
        for n in 0..2000usize {
            let mut m = signed.clone();
            for _ in 0..(n % 7 + 1) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = (x as usize) % m.len();
                m[i] = (x >> 8) as u8;
            }
            let _ = verify(&m, &key, None);
        }
    }
}
