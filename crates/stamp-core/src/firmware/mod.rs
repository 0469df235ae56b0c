//! Signed firmware images in the formats device bootloaders check: MCUboot images ([`mcuboot`]) and
//! ESP32 Secure Boot V2 signature blocks ([`esp32`]).
//!
//! Building takes the image bytes and a [`Signer`]; verifying takes the signed bytes and the public
//! key the device trusts ([`FirmwareKey`]) and checks them the way the bootloader would, returning a
//! value only a successful verification makes. Nothing here reads files: the caller bounds what it
//! reads by [`MAX_IMAGE_LEN`], and both parsers index only after checking lengths.

pub mod esp32;
pub mod mcuboot;

use std::fmt;
use std::str::FromStr;

use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::csr::{self, KeyType};
use crate::key::{KeyError, SignatureAlgorithm, Signer};

/// Largest firmware image stamp signs or verifies (32 MiB: more than any MCU or ESP32 flash slot).
pub const MAX_IMAGE_LEN: usize = 32 * 1024 * 1024;

/// The signed image formats stamp produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Format {
    /// An MCUboot image: header, image, protected and unprotected TLVs.
    #[serde(rename = "mcuboot")]
    Mcuboot,
    /// ESP32 Secure Boot V2: the image padded to 4 KiB, then a 4 KiB signature sector.
    #[serde(rename = "esp32-sbv2")]
    Esp32Sbv2,
}

impl Format {
    /// The format's name, as on the command line and in the HQ database.
    pub fn name(self) -> &'static str {
        match self {
            Format::Mcuboot => "mcuboot",
            Format::Esp32Sbv2 => "esp32-sbv2",
        }
    }

    /// Parses a format name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "mcuboot" => Some(Format::Mcuboot),
            "esp32-sbv2" => Some(Format::Esp32Sbv2),
            _ => None,
        }
    }

    /// Whether the format can carry a signature of this algorithm.
    pub fn supports(self, alg: SignatureAlgorithm) -> bool {
        match self {
            Format::Mcuboot => matches!(
                alg,
                SignatureAlgorithm::EcdsaP256Sha256
                    | SignatureAlgorithm::Ed25519
                    | SignatureAlgorithm::Rsa3072PssSha256
            ),
            Format::Esp32Sbv2 => matches!(
                alg,
                SignatureAlgorithm::EcdsaP256Sha256 | SignatureAlgorithm::Rsa3072PssSha256
            ),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an image could not be built or was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirmwareError {
    /// The image is empty.
    #[error("the firmware image is empty")]
    Empty,
    /// Larger than [`MAX_IMAGE_LEN`] or than the format can describe.
    #[error("the firmware image is too large (at most {MAX_IMAGE_LEN} bytes)")]
    TooLarge,
    /// The key's algorithm has no signature type in this format.
    #[error("a {alg} key cannot sign {format} images")]
    UnsupportedAlgorithm {
        /// The format.
        format: &'static str,
        /// The key's algorithm name.
        alg: &'static str,
    },
    /// The public key is not one stamp uses for firmware.
    #[error("not a firmware public key: {0}")]
    BadKey(&'static str),
    /// The input cannot be signed as asked.
    #[error("cannot sign this image: {0}")]
    BadInput(&'static str),
    /// The signed image ends before a structure it declares.
    #[error("the signed image is truncated: {0}")]
    Truncated(&'static str),
    /// The signed image is not well-formed.
    #[error("the signed image is malformed: {0}")]
    Malformed(&'static str),
    /// The digest in the image is not the digest of the image.
    #[error("the image digest does not match the image: it was modified after signing")]
    DigestMismatch,
    /// The image was signed for another key.
    #[error("the image is not signed by this key ({0})")]
    KeyMismatch(&'static str),
    /// The signature does not verify.
    #[error("the image signature does not verify")]
    BadSignature,
    /// The image's version is lower than the minimum allowed.
    #[error("the image version {found} is lower than the minimum {minimum} (rollback refused)")]
    Rollback {
        /// The image's version.
        found: String,
        /// The minimum.
        minimum: String,
    },
    /// A minimum version was asked for but the image carries none.
    #[error("the image carries no {0} to compare with the minimum")]
    NoVersion(&'static str),
    /// The key backend failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The backend's signature did not verify with its own public key.
    #[error("the signing key produced a signature that does not verify with its public key")]
    SignerInconsistent,
}

impl From<KeyError> for FirmwareError {
    fn from(e: KeyError) -> Self {
        FirmwareError::Sign(e.to_string())
    }
}

/// An MCUboot-style image version: `major.minor.revision+build`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Major version (0-255).
    pub major: u8,
    /// Minor version (0-255).
    pub minor: u8,
    /// Revision (0-65535).
    pub revision: u16,
    /// Build number (0-4294967295).
    pub build: u32,
}

impl Version {
    /// The version without its build number, which MCUboot's downgrade check ignores by default.
    pub fn release(self) -> (u8, u8, u16) {
        (self.major, self.minor, self.revision)
    }
}

/// A version string that is not `major[.minor[.revision]][+build]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid version {0:?}: use major.minor.revision+build, e.g. 1.2.3+45 (major, minor <= 255, revision <= 65535)")]
pub struct BadVersion(pub String);

impl FromStr for Version {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersion(s.chars().take(64).collect());
        let num = |t: &str| -> Result<u64, BadVersion> {
            if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        let (release, build) = match s.split_once('+') {
            Some((r, b)) => (r, num(b)?),
            None => (s, 0),
        };
        let parts: Vec<&str> = release.split('.').collect();
        if parts.len() > 3 {
            return Err(bad());
        }
        let part = |i: usize| parts.get(i).map_or(Ok(0), |t| num(t));
        Ok(Version {
            major: u8::try_from(part(0)?).map_err(|_| bad())?,
            minor: u8::try_from(part(1)?).map_err(|_| bad())?,
            revision: u16::try_from(part(2)?).map_err(|_| bad())?,
            build: u32::try_from(build).map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}+{}",
            self.major, self.minor, self.revision, self.build
        )
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A firmware public key: what a device trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct FirmwareKey {
    alg: SignatureAlgorithm,
    spki_der: Vec<u8>,
    /// The SubjectPublicKeyInfo BIT STRING (EC point, Ed25519 key, PKCS#1 RSAPublicKey).
    raw: Vec<u8>,
    /// RSA modulus and public exponent (big-endian, no leading zeros).
    rsa: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for FirmwareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FirmwareKey({}, {})", self.alg.name(), hex::encode(&self.raw))
    }
}

/// Largest public-key file or SPKI accepted.
const MAX_KEY_LEN: usize = 8 * 1024;

impl FirmwareKey {
    /// Reads a DER SubjectPublicKeyInfo: ECDSA P-256, Ed25519 or RSA-3072 (exponent 65537).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, FirmwareError> {
        if der.len() > MAX_KEY_LEN {
            return Err(FirmwareError::BadKey("too large"));
        }
        let kt = csr::classify_spki(der).map_err(|_| FirmwareError::BadKey("unsupported or malformed"))?;
        let spki = match SubjectPublicKeyInfo::from_der(der) {
            Ok(([], spki)) => spki,
            _ => return Err(FirmwareError::BadKey("malformed SubjectPublicKeyInfo")),
        };
        let raw = spki.subject_public_key.data.to_vec();
        let (alg, rsa) = match kt {
            KeyType::P256 => (SignatureAlgorithm::EcdsaP256Sha256, None),
            KeyType::Ed25519 => (SignatureAlgorithm::Ed25519, None),
            KeyType::Rsa(3072) => match spki.parsed() {
                Ok(PublicKey::RSA(k)) => {
                    let strip = |b: &[u8]| {
                        let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                        b[i..].to_vec()
                    };
                    let e = strip(k.exponent);
                    if e != [0x01, 0x00, 0x01] {
                        return Err(FirmwareError::BadKey("RSA public exponent must be 65537"));
                    }
                    (SignatureAlgorithm::Rsa3072PssSha256, Some((strip(k.modulus), e)))
                }
                _ => return Err(FirmwareError::BadKey("malformed RSA key")),
            },
            KeyType::Rsa(_) => return Err(FirmwareError::BadKey("RSA keys must be 3072 bits")),
            KeyType::P384 => return Err(FirmwareError::BadKey("ECDSA P-384 is not used for firmware")),
        };
        Ok(FirmwareKey {
            alg,
            spki_der: der.to_vec(),
            raw,
            rsa,
        })
    }

    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `openssl pkey -pubout` writes.
    pub fn from_pem(text: &str) -> Result<Self, FirmwareError> {
        if text.len() > MAX_KEY_LEN {
            return Err(FirmwareError::BadKey("too large"));
        }
        let block = pem::parse(text).map_err(|_| FirmwareError::BadKey("not PEM"))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(FirmwareError::BadKey("expected a PEM PUBLIC KEY block"));
        }
        Self::from_spki_der(block.contents())
    }

    /// The public key of a signer.
    pub fn from_signer(signer: &dyn Signer) -> Result<Self, FirmwareError> {
        let key = Self::from_spki_der(&signer.spki_der())?;
        if key.alg != signer.algorithm() {
            return Err(FirmwareError::BadKey(
                "the signer's key does not match its algorithm",
            ));
        }
        Ok(key)
    }

    /// The key's signature algorithm.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.alg
    }

    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The raw public key (SubjectPublicKeyInfo BIT STRING contents).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// PEM `PUBLIC KEY`, for imgtool, espsecure, MCUboot and ESP-IDF builds.
    pub fn to_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("PUBLIC KEY", self.spki_der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// Verifies a signature made by [`Signer::sign`] over `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        crate::key::verify_signature(self.alg, &self.raw, message, signature)
    }

    /// [`FirmwareKey::verify`] for a signature in its fixed-size form (ECDSA `r || s`).
    pub(crate) fn verify_fixed(&self, message: &[u8], signature: &[u8]) -> bool {
        crate::key::verify_fixed_signature(self.alg, &self.raw, message, signature)
    }

    /// The RSA modulus and exponent (big-endian), for RSA keys.
    pub(crate) fn rsa_components(&self) -> Option<(&[u8], &[u8])> {
        self.rsa.as_ref().map(|(n, e)| (n.as_slice(), e.as_slice()))
    }
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    crate::fingerprint::sha256(data)
}

/// Reads a little-endian u16 at `off`, if in bounds.
pub(crate) fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Reads a little-endian u32 at `off`, if in bounds.
pub(crate) fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::profile::tests::TestSigner;

    /// One test signer per algorithm, made once (RSA key generation is slow).
    pub(crate) fn signers() -> &'static [(SignatureAlgorithm, TestSigner)] {
        static SIGNERS: std::sync::OnceLock<Vec<(SignatureAlgorithm, TestSigner)>> =
            std::sync::OnceLock::new();
        SIGNERS.get_or_init(|| {
            [
                SignatureAlgorithm::EcdsaP256Sha256,
                SignatureAlgorithm::Ed25519,
                SignatureAlgorithm::Rsa3072PssSha256,
            ]
            .into_iter()
            .map(|a| (a, TestSigner::new(a)))
            .collect()
        })
    }

    /// A second, different key per algorithm.
    pub(crate) fn other_signers() -> &'static [(SignatureAlgorithm, TestSigner)] {
        static SIGNERS: std::sync::OnceLock<Vec<(SignatureAlgorithm, TestSigner)>> =
            std::sync::OnceLock::new();
        SIGNERS.get_or_init(|| {
            [
                SignatureAlgorithm::EcdsaP256Sha256,
                SignatureAlgorithm::Ed25519,
                SignatureAlgorithm::Rsa3072PssSha256,
            ]
            .into_iter()
            .map(|a| (a, TestSigner::new(a)))
            .collect()
        })
    }

    #[test]
    fn versions_parse_and_print() {
        let v: Version = "1.2.3+45".parse().unwrap();
        assert_eq!(
            v,
            Version {
                major: 1,
                minor: 2,
                revision: 3,
                build: 45
            }
        );
        assert_eq!(v.to_string(), "1.2.3+45");
        assert_eq!("2".parse::<Version>().unwrap().to_string(), "2.0.0+0");
        assert_eq!("0.9".parse::<Version>().unwrap().release(), (0, 9, 0));
        assert_eq!(
            "255.255.65535+4294967295".parse::<Version>().unwrap().build,
            u32::MAX
        );
        for bad in [
            "",
            "1.2.3.4",
            "256",
            "1.256",
            "1.1.65536",
            "1.2.3+",
            "+1",
            "a.b",
            "1..2",
            "-1",
            "1.2.3+4294967296",
            " 1",
            "1.2.3+4+5",
            "99999999999",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert!("1.2.3".parse::<Version>().unwrap() < "1.10.0".parse::<Version>().unwrap());
    }

    #[test]
    fn keys_round_trip_through_pem_and_refuse_others() {
        for (alg, s) in signers() {
            let k = FirmwareKey::from_signer(s).unwrap();
            assert_eq!(k.algorithm(), *alg);
            let again = FirmwareKey::from_pem(&k.to_pem()).unwrap();
            assert_eq!(again, k);
            assert_eq!(again.raw(), s.public_key());
        }
        let p384 = TestSigner::new(SignatureAlgorithm::EcdsaP384Sha384);
        assert!(FirmwareKey::from_spki_der(&p384.spki_der()).is_err());
        assert!(
            FirmwareKey::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
        assert!(FirmwareKey::from_pem("garbage").is_err());
        assert!(FirmwareKey::from_spki_der(&[0x30, 0x00]).is_err());
    }

    #[test]
    fn formats_name_their_algorithms() {
        assert!(Format::Mcuboot.supports(SignatureAlgorithm::Ed25519));
        assert!(!Format::Esp32Sbv2.supports(SignatureAlgorithm::Ed25519));
        assert!(!Format::Mcuboot.supports(SignatureAlgorithm::EcdsaP384Sha384));
        for f in [Format::Mcuboot, Format::Esp32Sbv2] {
            assert_eq!(Format::from_name(f.name()), Some(f));
        }
        assert_eq!(Format::from_name("uf2"), None);
    }
}
