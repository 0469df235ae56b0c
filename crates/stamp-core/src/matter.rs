//! Matter onboarding data for one device: the setup passcode and discriminator, the SPAKE2+
//! verifier the device keeps, and the onboarding payload printed on its label (the `MT:` QR code
//! string and the 11- or 21-digit manual pairing code).
//!
//! Everything here follows the Matter Core specification (5.1 "Onboarding Payload", 3.10
//! "Password-Based Key Derivation Function" and 4.14.1 "Passcode-Authenticated Session
//! Establishment") as the Matter SDK (project-chip/connectedhomeip) implements it:
//! `Spake2pVerifier::Generate`, `QRCodeSetupPayloadGenerator` and `ManualSetupPayloadGenerator`.
//! `docs/formats/matter.md` specifies the bytes. Randomness is passed in; nothing here keeps state.

use std::fmt;
use std::num::NonZeroU32;

use aws_lc_rs::pbkdf2;
use aws_lc_rs::rand::SecureRandom;
use base64::Engine as _;
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::elliptic_curve::PrimeField;
use p256::{AffinePoint, EncodedPoint, ProjectivePoint, Scalar};
use zeroize::{Zeroize, Zeroizing};

#[cfg(test)]
mod tests;

/// The largest setup passcode the specification allows (99999999 itself is one of the invalid values).
pub const MAX_PASSCODE: u32 = 99_999_998;
/// Setup passcodes the specification forbids inside `1..=MAX_PASSCODE` (5.1.7.1): repeated digits
/// and the two sequences. 00000000 and 99999999 are outside the range.
pub const INVALID_PASSCODES: [u32; 10] = [
    11_111_111, 22_222_222, 33_333_333, 44_444_444, 55_555_555, 66_666_666, 77_777_777, 88_888_888,
    12_345_678, 87_654_321,
];
/// How many draws of caller-supplied randomness a passcode may take before [`MatterError::RandomnessExhausted`].
/// One 27-bit draw is accepted with probability about 0.745, so 64 failures in a row (about
/// 1e-38) mean the randomness is broken, not unlucky.
pub const MAX_DRAWS: usize = 64;

/// Smallest and largest PBKDF2 iteration counts the specification allows (3.10).
pub const MIN_ITERATIONS: u32 = 1000;
/// See [`MIN_ITERATIONS`].
pub const MAX_ITERATIONS: u32 = 100_000;
/// Shortest and longest PBKDF2 salts the specification allows, in bytes (3.10).
pub const MIN_SALT: usize = 16;
/// See [`MIN_SALT`].
pub const MAX_SALT: usize = 32;
/// Length of a serialized verifier: W0 (32 bytes) followed by L (65 bytes, uncompressed).
pub const VERIFIER_LEN: usize = 32 + 65;

/// Length of a QR code string without optional TLV data: `MT:` and 19 base-38 characters.
pub const QR_CODE_LEN: usize = 3 + 19;
/// Longest input [`parse_qr_code`] reads before refusing it.
pub const MAX_QR_INPUT: usize = 512;

const QR_PREFIX: &str = "MT:";
const BASE38: &[u8; 38] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-.";
/// The packed payload without TLV data: 3+16+16+2+8+12+27+4 = 88 bits.
const PACKED_LEN: usize = 11;

/// Why onboarding data could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MatterError {
    /// The caller's randomness failed.
    #[error("the random number generator failed")]
    Rng,
    /// [`MAX_DRAWS`] draws in a row gave no acceptable passcode.
    #[error("no valid setup passcode in {MAX_DRAWS} random draws: the randomness is broken")]
    RandomnessExhausted,
    /// A passcode outside `1..=99999998` or one of [`INVALID_PASSCODES`] (the value is not shown).
    #[error("not a valid Matter setup passcode")]
    InvalidPasscode,
    /// A discriminator above 4095.
    #[error("discriminator {0} does not fit in 12 bits")]
    InvalidDiscriminator(u16),
    /// A PBKDF2 salt outside 16..=32 bytes.
    #[error("SPAKE2+ salt of {0} bytes (Matter allows 16 to 32)")]
    SaltLength(usize),
    /// A PBKDF2 iteration count outside 1000..=100000.
    #[error("PBKDF2 iteration count {0} (Matter allows 1000 to 100000)")]
    Iterations(u32),
    /// w1 reduced to zero, so L would be the point at infinity (probability about 2^-256).
    #[error("the passcode and salt give a degenerate SPAKE2+ verifier")]
    DegenerateVerifier,
    /// A serialized verifier that is not 97 bytes.
    #[error("SPAKE2+ verifier of {0} bytes (expected 97)")]
    VerifierLength(usize),
    /// A serialized verifier whose W0 is not a scalar below the group order.
    #[error("SPAKE2+ verifier W0 is not a P-256 scalar")]
    VerifierW0,
    /// A serialized verifier whose L is not an uncompressed P-256 point other than infinity.
    #[error("SPAKE2+ verifier L is not an uncompressed P-256 point")]
    VerifierL,
    /// Commissioning flow value 3 (reserved).
    #[error("commissioning flow 3 is reserved")]
    ReservedFlow,
    /// Discovery capabilities with no method, or with a reserved bit (4..7) set.
    #[error("discovery capabilities {0:#04x}: need at least one of bits 0..3 and none of bits 4..7")]
    InvalidRendezvous(u8),
    /// A vendor ID above 0xFFF4 (0xFFF5..=0xFFFF are reserved; 0 means unspecified).
    #[error("vendor ID {0:#06x} is reserved")]
    InvalidVendorId(u16),
    /// Product ID 0 with a vendor ID (only an unspecified vendor may leave the product unspecified).
    #[error("product ID 0 with vendor ID {0:#06x}")]
    InvalidProductId(u16),
    /// A QR code string longer than [`MAX_QR_INPUT`].
    #[error("QR code string longer than {MAX_QR_INPUT} characters")]
    QrTooLong,
    /// A QR code string that does not start with `MT:`.
    #[error("QR code string does not start with MT:")]
    QrPrefix,
    /// A character outside the base-38 alphabet (`0-9`, `A-Z`, `-`, `.`).
    #[error("QR code character {0:?} is not base-38")]
    QrCharacter(char),
    /// A base-38 text whose length leaves a chunk of 1 or 3 characters.
    #[error("base-38 text of {0} characters (a trailing chunk must be 2, 4 or 5 long)")]
    QrLength(usize),
    /// A base-38 chunk whose value does not fit its bytes.
    #[error("base-38 chunk out of range")]
    QrChunk,
    /// A payload longer than the fixed 88 bits: optional TLV data, which stamp does not read.
    #[error("QR code carries optional TLV data, which stamp does not generate or read")]
    QrOptionalData,
    /// A payload shorter than 88 bits.
    #[error("QR code payload too short")]
    QrShort,
    /// A version other than 0.
    #[error("QR code payload version {0} (only 0 is defined)")]
    QrVersion(u8),
    /// Non-zero padding bits.
    #[error("QR code payload padding is not zero")]
    QrPadding,
    /// A manual pairing code that is not 11 or 21 characters.
    #[error("manual pairing code of {0} characters (expected 11 or 21 digits)")]
    ManualLength(usize),
    /// A manual pairing code with a character other than a decimal digit.
    #[error("manual pairing code contains a non-digit")]
    ManualCharacter,
    /// A manual pairing code whose Verhoeff check digit is wrong.
    #[error("manual pairing code check digit is wrong")]
    ManualCheckDigit,
    /// A first digit of 8 or 9 (reserved).
    #[error("manual pairing code first digit {0} is reserved")]
    ManualReserved(u8),
    /// The first digit says long (21 digits) and the code is short, or the other way round.
    #[error("manual pairing code length does not match its VID/PID flag")]
    ManualForm,
    /// A 5-digit chunk above 65535, which cannot carry 2 + 14 bits.
    #[error("manual pairing code digits 2 to 6 exceed 16 bits")]
    ManualRange,
    /// A vendor or product ID field above 65535.
    #[error("manual pairing code vendor or product ID {0} does not fit in 16 bits")]
    ManualId(u32),
}

/// A Matter setup passcode: 27 bits, `1..=99999998`, none of [`INVALID_PASSCODES`].
///
/// Zeroized on drop; `Debug` does not show it. [`SetupPasscode::value`] is for the onboarding
/// payload and for handing the passcode out; stamp does not store it.
#[derive(Clone, PartialEq, Eq)]
pub struct SetupPasscode(u32);

impl SetupPasscode {
    /// Checks `value` against the specification's rules.
    pub fn new(value: u32) -> Result<Self, MatterError> {
        if value == 0 || value > MAX_PASSCODE || INVALID_PASSCODES.contains(&value) {
            return Err(MatterError::InvalidPasscode);
        }
        Ok(Self(value))
    }

    /// Draws a passcode uniformly from the valid ones: 27 random bits, rejected and drawn again
    /// when invalid, at most [`MAX_DRAWS`] times.
    pub fn random(rng: &dyn SecureRandom) -> Result<Self, MatterError> {
        Self::draw(|buf| rng.fill(buf).map_err(|_| MatterError::Rng))
    }

    /// [`SetupPasscode::random`] over any source of bytes (the tests script one).
    fn draw(mut fill: impl FnMut(&mut [u8]) -> Result<(), MatterError>) -> Result<Self, MatterError> {
        for _ in 0..MAX_DRAWS {
            let mut bytes = Zeroizing::new([0u8; 4]);
            fill(bytes.as_mut())?;
            let value = u32::from_le_bytes(*bytes) & ((1 << 27) - 1);
            if let Ok(passcode) = Self::new(value) {
                return Ok(passcode);
            }
        }
        Err(MatterError::RandomnessExhausted)
    }

    /// The passcode's value.
    pub fn value(&self) -> u32 {
        self.0
    }
}

impl Drop for SetupPasscode {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SetupPasscode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SetupPasscode(<redacted>)")
    }
}

/// A 12-bit discriminator, which a commissioner uses to find the device before pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Discriminator(u16);

impl Discriminator {
    /// The largest discriminator (12 bits).
    pub const MAX: u16 = 0x0fff;

    /// Checks that `value` fits in 12 bits.
    pub fn new(value: u16) -> Result<Self, MatterError> {
        if value > Self::MAX {
            return Err(MatterError::InvalidDiscriminator(value));
        }
        Ok(Self(value))
    }

    /// Draws a discriminator uniformly from all 4096 (every 12-bit value is valid, so the first draw is taken).
    pub fn random(rng: &dyn SecureRandom) -> Result<Self, MatterError> {
        Self::draw(|buf| rng.fill(buf).map_err(|_| MatterError::Rng))
    }

    fn draw(mut fill: impl FnMut(&mut [u8]) -> Result<(), MatterError>) -> Result<Self, MatterError> {
        let mut bytes = [0u8; 2];
        fill(&mut bytes)?;
        Self::new(u16::from_le_bytes(bytes) & Self::MAX)
    }

    /// The 12-bit value.
    pub fn value(self) -> u16 {
        self.0
    }

    /// The short discriminator of the manual pairing code: the top 4 of the 12 bits.
    pub fn short(self) -> u8 {
        // 12 bits shifted right by 8 leave 4.
        u8::try_from(self.0 >> 8).unwrap_or(0x0f)
    }
}

/// Draws a PBKDF2 salt of `len` bytes (16..=32) for [`Spake2pVerifier::generate`].
pub fn random_salt(rng: &dyn SecureRandom, len: usize) -> Result<Vec<u8>, MatterError> {
    check_salt(len)?;
    let mut salt = vec![0u8; len];
    rng.fill(&mut salt).map_err(|_| MatterError::Rng)?;
    Ok(salt)
}

fn check_salt(len: usize) -> Result<(), MatterError> {
    if !(MIN_SALT..=MAX_SALT).contains(&len) {
        return Err(MatterError::SaltLength(len));
    }
    Ok(())
}

/// The SPAKE2+ verifier a device keeps in its factory data: W0 and L (Matter Core 3.10, 4.14.1).
///
/// W0 with L lets anyone search the passcode space offline, so W0 is zeroized on drop and `Debug`
/// shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Spake2pVerifier {
    w0: [u8; 32],
    l: [u8; 65],
}

impl Spake2pVerifier {
    /// Derives the verifier as `Spake2pVerifier::Generate` does: PBKDF2-HMAC-SHA256 of the
    /// passcode (4 bytes, little-endian) with `salt` and `iterations`, 80 bytes out; w0 is the
    /// first 40 bytes and w1 the last 40, each big-endian and reduced modulo the P-256 group order;
    /// L = w1·G.
    pub fn generate(passcode: &SetupPasscode, salt: &[u8], iterations: u32) -> Result<Self, MatterError> {
        check_salt(salt.len())?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(MatterError::Iterations(iterations));
        }
        let rounds = NonZeroU32::new(iterations).ok_or(MatterError::Iterations(iterations))?;
        let pin = Zeroizing::new(passcode.value().to_le_bytes());
        let mut ws = Zeroizing::new([0u8; 80]);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            salt,
            pin.as_ref(),
            ws.as_mut(),
        );
        let mut w0 = reduce_be(&ws[..40]);
        let mut w1 = reduce_be(&ws[40..]);
        let point = (ProjectivePoint::GENERATOR * w1)
            .to_affine()
            .to_encoded_point(false);
        w1.zeroize();
        let l: [u8; 65] = point
            .as_bytes()
            .try_into()
            .map_err(|_| MatterError::DegenerateVerifier)?;
        let verifier = Self {
            w0: w0.to_bytes().into(),
            l,
        };
        w0.zeroize();
        Ok(verifier)
    }

    /// W0, 32 bytes big-endian.
    pub fn w0(&self) -> &[u8; 32] {
        &self.w0
    }

    /// L, an uncompressed P-256 point (0x04, X, Y).
    pub fn l(&self) -> &[u8; 65] {
        &self.l
    }

    /// The SDK's serialization: W0 followed by L, 97 bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; VERIFIER_LEN]> {
        let mut out = Zeroizing::new([0u8; VERIFIER_LEN]);
        out[..32].copy_from_slice(&self.w0);
        out[32..].copy_from_slice(&self.l);
        out
    }

    /// The serialization in standard base64 with padding, as factory-data files carry it.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.to_bytes().as_ref()))
    }

    /// Reads a serialization: 97 bytes, W0 below the group order, L a point on the curve.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MatterError> {
        if bytes.len() != VERIFIER_LEN {
            return Err(MatterError::VerifierLength(bytes.len()));
        }
        let mut w0 = [0u8; 32];
        w0.copy_from_slice(&bytes[..32]);
        if Option::<Scalar>::from(Scalar::from_repr(w0.into())).is_none() {
            w0.zeroize();
            return Err(MatterError::VerifierW0);
        }
        let mut l = [0u8; 65];
        l.copy_from_slice(&bytes[32..]);
        let encoded = EncodedPoint::from_bytes(l).map_err(|_| MatterError::VerifierL)?;
        if encoded.is_compressed()
            || encoded.is_identity()
            || Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&encoded)).is_none()
        {
            return Err(MatterError::VerifierL);
        }
        Ok(Self { w0, l })
    }
}

impl Drop for Spake2pVerifier {
    fn drop(&mut self) {
        self.w0.zeroize();
    }
}

impl fmt::Debug for Spake2pVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Spake2pVerifier(<redacted>)")
    }
}

/// A big-endian integer of any length modulo the P-256 group order, by Horner's rule on bytes
/// with the curve crate's constant-time scalar arithmetic.
fn reduce_be(bytes: &[u8]) -> Scalar {
    let radix = Scalar::from(256u64);
    bytes
        .iter()
        .fold(Scalar::ZERO, |acc, b| acc * radix + Scalar::from(u64::from(*b)))
}

/// How a device enters commissioning mode (the QR code's 2-bit field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommissioningFlow {
    /// 0: the device is commissionable when powered up.
    Standard,
    /// 1: the user must act on the device (for example press a button) first.
    UserIntent,
    /// 2: the vendor's own steps, described in the DCL.
    Custom,
}

impl CommissioningFlow {
    fn bits(self) -> u32 {
        match self {
            Self::Standard => 0,
            Self::UserIntent => 1,
            Self::Custom => 2,
        }
    }

    fn from_bits(bits: u32) -> Result<Self, MatterError> {
        match bits {
            0 => Ok(Self::Standard),
            1 => Ok(Self::UserIntent),
            2 => Ok(Self::Custom),
            _ => Err(MatterError::ReservedFlow),
        }
    }
}

/// The discovery capabilities bitmap (the QR code's 8-bit "rendezvous information").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rendezvous(u8);

impl Rendezvous {
    /// Bit 0: Soft-AP.
    pub const SOFT_AP: u8 = 0x01;
    /// Bit 1: Bluetooth LE.
    pub const BLE: u8 = 0x02;
    /// Bit 2: already on the IP network.
    pub const ON_NETWORK: u8 = 0x04;
    /// Bit 3: Wi-Fi Public Action Frame (Matter 1.4).
    pub const WIFI_PAF: u8 = 0x08;
    const DEFINED: u8 = 0x0f;

    /// At least one method, no reserved bit.
    pub fn new(bits: u8) -> Result<Self, MatterError> {
        if bits == 0 || bits & !Self::DEFINED != 0 {
            return Err(MatterError::InvalidRendezvous(bits));
        }
        Ok(Self(bits))
    }

    /// The bitmap.
    pub fn bits(self) -> u8 {
        self.0
    }
}

/// What the onboarding payload (QR code and manual pairing code) of one device says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnboardingPayload {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Product ID.
    pub product_id: u16,
    /// How the device enters commissioning mode.
    pub flow: CommissioningFlow,
    /// How a commissioner can reach it.
    pub rendezvous: Rendezvous,
    /// The 12-bit discriminator.
    pub discriminator: Discriminator,
    /// The setup passcode.
    pub passcode: SetupPasscode,
}

/// The SDK's `CheckPayloadCommonConstraints` on IDs: the vendor ID is 0 (unspecified) or at most
/// 0xFFF4, and the product ID is not 0 unless the vendor ID is.
fn check_ids(vendor_id: u16, product_id: u16) -> Result<(), MatterError> {
    if vendor_id > 0xfff4 {
        return Err(MatterError::InvalidVendorId(vendor_id));
    }
    if product_id == 0 && vendor_id != 0 {
        return Err(MatterError::InvalidProductId(vendor_id));
    }
    Ok(())
}

impl OnboardingPayload {
    /// The QR code string: `MT:` and the base-38 text of the 88 packed bits (version 0, no TLV data).
    /// Refuses reserved vendor IDs and a product ID of 0 with a vendor ID, as the SDK does.
    pub fn qr_code(&self) -> Result<Zeroizing<String>, MatterError> {
        check_ids(self.vendor_id, self.product_id)?;
        let mut bits = Zeroizing::new([0u8; PACKED_LEN]);
        let mut offset = 0;
        for (value, width) in [
            (0, 3),
            (u32::from(self.vendor_id), 16),
            (u32::from(self.product_id), 16),
            (self.flow.bits(), 2),
            (u32::from(self.rendezvous.bits()), 8),
            (u32::from(self.discriminator.value()), 12),
            (self.passcode.value(), 27),
            (0, 4),
        ] {
            put_bits(bits.as_mut(), &mut offset, value, width);
        }
        let mut out = Zeroizing::new(String::with_capacity(QR_CODE_LEN));
        out.push_str(QR_PREFIX);
        base38_encode(bits.as_ref(), &mut out);
        Ok(out)
    }

    /// The manual pairing code: 11 digits for the standard flow, 21 (with the vendor and product
    /// IDs) otherwise, as the SDK's `ManualSetupPayloadGenerator` chooses. Refuses the IDs
    /// [`OnboardingPayload::qr_code`] refuses, even in the short form (as the SDK does).
    pub fn manual_code(&self) -> Result<Zeroizing<String>, MatterError> {
        check_ids(self.vendor_id, self.product_id)?;
        let long = self.flow != CommissioningFlow::Standard;
        let short = u32::from(self.discriminator.short());
        let passcode = self.passcode.value();
        let chunk1 = (u32::from(long) << 2) | (short >> 2);
        let chunk2 = ((short & 0x3) << 14) | (passcode & 0x3fff);
        let chunk3 = passcode >> 14;
        let mut digits = Zeroizing::new(format!("{chunk1}{chunk2:05}{chunk3:04}"));
        if long {
            digits.push_str(&format!("{:05}{:05}", self.vendor_id, self.product_id));
        }
        let check = verhoeff_check(digits.as_bytes());
        digits.push(char::from(b'0' + check));
        Ok(digits)
    }
}

/// What a manual pairing code says: less than the QR code (4 bits of the discriminator, and the
/// vendor and product IDs only in the long form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualCode {
    /// The top 4 bits of the discriminator.
    pub short_discriminator: u8,
    /// The setup passcode.
    pub passcode: SetupPasscode,
    /// Vendor and product ID, present in the 21-digit form.
    pub vendor_product: Option<(u16, u16)>,
}

fn put_bits(buf: &mut [u8], offset: &mut usize, value: u32, width: usize) {
    for i in 0..width {
        if value >> i & 1 == 1 {
            buf[*offset / 8] |= 1 << (*offset % 8);
        }
        *offset += 1;
    }
}

fn get_bits(buf: &[u8], offset: &mut usize, width: usize) -> u32 {
    let mut value = 0;
    for i in 0..width {
        if buf[*offset / 8] >> (*offset % 8) & 1 == 1 {
            value |= 1 << i;
        }
        *offset += 1;
    }
    value
}

/// Base-38 as the SDK writes it: each 3 bytes (little-endian) as 5 characters, least significant
/// first; a tail of 2 bytes as 4 characters and of 1 byte as 2.
fn base38_encode(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let mut value = chunk.iter().rev().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let chars = match chunk.len() {
            3 => 5,
            2 => 4,
            _ => 2,
        };
        for _ in 0..chars {
            // value % 38 < 38, so the index is in range whatever usize is.
            let digit = u8::try_from(value % 38).unwrap_or(0);
            out.push(char::from(BASE38[usize::from(digit)]));
            value /= 38;
        }
        value.zeroize();
    }
}

fn base38_decode(text: &str) -> Result<Zeroizing<Vec<u8>>, MatterError> {
    let digits: Zeroizing<Vec<u8>> = Zeroizing::new(
        text.chars()
            .map(|c| {
                u8::try_from(c)
                    .ok()
                    .and_then(|b| BASE38.iter().position(|&a| a == b))
                    .and_then(|p| u8::try_from(p).ok())
                    .ok_or(MatterError::QrCharacter(c))
            })
            .collect::<Result<_, _>>()?,
    );
    let mut out = Zeroizing::new(Vec::with_capacity(digits.len() / 5 * 3 + 2));
    for chunk in digits.chunks(5) {
        let bytes = match chunk.len() {
            5 => 3,
            4 => 2,
            2 => 1,
            _ => return Err(MatterError::QrLength(digits.len())),
        };
        let mut value = chunk.iter().rev().fold(0u32, |acc, d| acc * 38 + u32::from(*d));
        if value >> (8 * bytes) != 0 {
            return Err(MatterError::QrChunk);
        }
        for _ in 0..bytes {
            out.push(value.to_le_bytes()[0]);
            value >>= 8;
        }
    }
    Ok(out)
}

/// Reads a QR code string as stamp writes it (the SDK's `QRCodeSetupPayloadParser` for payloads
/// without optional TLV data), refusing anything else.
pub fn parse_qr_code(text: &str) -> Result<OnboardingPayload, MatterError> {
    if text.len() > MAX_QR_INPUT {
        return Err(MatterError::QrTooLong);
    }
    let body = text.strip_prefix(QR_PREFIX).ok_or(MatterError::QrPrefix)?;
    let bytes = base38_decode(body)?;
    if bytes.len() > PACKED_LEN {
        return Err(MatterError::QrOptionalData);
    }
    if bytes.len() < PACKED_LEN {
        return Err(MatterError::QrShort);
    }
    let mut offset = 0;
    let mut field = |width| get_bits(&bytes, &mut offset, width);
    let version = field(3);
    let vendor_id = field(16);
    let product_id = field(16);
    let flow = field(2);
    let rendezvous = field(8);
    let discriminator = field(12);
    let passcode = Zeroizing::new(field(27));
    let padding = field(4);
    if version != 0 {
        return Err(MatterError::QrVersion(u8::try_from(version).unwrap_or(u8::MAX)));
    }
    if padding != 0 {
        return Err(MatterError::QrPadding);
    }
    let vendor_id = u16::try_from(vendor_id).map_err(|_| MatterError::QrChunk)?;
    let product_id = u16::try_from(product_id).map_err(|_| MatterError::QrChunk)?;
    check_ids(vendor_id, product_id)?;
    Ok(OnboardingPayload {
        vendor_id,
        product_id,
        flow: CommissioningFlow::from_bits(flow)?,
        rendezvous: Rendezvous::new(u8::try_from(rendezvous).map_err(|_| MatterError::QrChunk)?)?,
        discriminator: Discriminator::new(u16::try_from(discriminator).map_err(|_| MatterError::QrChunk)?)?,
        passcode: SetupPasscode::new(*passcode)?,
    })
}

/// Reads an 11- or 21-digit manual pairing code (the SDK's `ManualSetupPayloadParser`), checking
/// the Verhoeff digit, the reserved first digits, the passcode and the ID ranges.
pub fn parse_manual_code(text: &str) -> Result<ManualCode, MatterError> {
    let len = text.chars().count();
    if len != 11 && len != 21 {
        return Err(MatterError::ManualLength(len));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MatterError::ManualCharacter);
    }
    let digits = text.as_bytes();
    if !verhoeff_valid(digits) {
        return Err(MatterError::ManualCheckDigit);
    }
    let number = |range: std::ops::Range<usize>| {
        digits[range]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let chunk1 = number(0..1);
    if chunk1 > 7 {
        return Err(MatterError::ManualReserved(
            u8::try_from(chunk1).unwrap_or(u8::MAX),
        ));
    }
    let long = chunk1 & 0x4 != 0;
    if long != (len == 21) {
        return Err(MatterError::ManualForm);
    }
    let chunk2 = Zeroizing::new(number(1..6));
    let chunk3 = Zeroizing::new(number(6..10));
    // chunk2 (5 digits, up to 17 bits) carries 2 + 14 bits and chunk3 (4 digits, up to 14 bits)
    // the passcode's top 13: a set bit 16 of chunk2 is refused, and SetupPasscode::new refuses
    // what chunk3's surplus could make.
    if *chunk2 >> 16 != 0 {
        return Err(MatterError::ManualRange);
    }
    let passcode = Zeroizing::new((*chunk3 << 14) | (*chunk2 & 0x3fff));
    let short = ((chunk1 & 0x3) << 2) | (*chunk2 >> 14);
    let vendor_product = if long {
        let id = |range| {
            let value = number(range);
            u16::try_from(value).map_err(|_| MatterError::ManualId(value))
        };
        let (vendor_id, product_id) = (id(10..15)?, id(15..20)?);
        check_ids(vendor_id, product_id)?;
        Some((vendor_id, product_id))
    } else {
        None
    };
    Ok(ManualCode {
        short_discriminator: u8::try_from(short).unwrap_or(0x0f),
        passcode: SetupPasscode::new(*passcode)?,
        vendor_product,
    })
}

const VERHOEFF_D: [[u8; 10]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
];
const VERHOEFF_P: [[u8; 10]; 8] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
];
const VERHOEFF_INV: [u8; 10] = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9];

/// The Verhoeff checksum state over ASCII digits, the rightmost at position `first`.
fn verhoeff_state(digits: &[u8], first: usize) -> u8 {
    digits.iter().rev().enumerate().fold(0u8, |c, (i, d)| {
        let digit = usize::from(d - b'0');
        VERHOEFF_D[usize::from(c)][usize::from(VERHOEFF_P[(i + first) % 8][digit])]
    })
}

/// The Verhoeff check digit (0..=9) for ASCII `digits`.
fn verhoeff_check(digits: &[u8]) -> u8 {
    VERHOEFF_INV[usize::from(verhoeff_state(digits, 1))]
}

/// Whether ASCII `digits` end with their Verhoeff check digit.
fn verhoeff_valid(digits: &[u8]) -> bool {
    verhoeff_state(digits, 0) == 0
}
