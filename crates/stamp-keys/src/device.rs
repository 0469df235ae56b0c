//! Keys HQ generates for devices that cannot make their own.
//!
//! They are not stamp's keys: they travel sealed inside an entitlement to one site, which hands
//! each to one device. HQ keeps only their public-key hashes.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use stamp_core::entitlement::DeviceKeyType;
use zeroize::Zeroizing;

use crate::KeyStoreError;

/// A generated device key.
pub struct GeneratedDeviceKey {
    /// The private key, PKCS#8 DER; wiped on drop.
    pub pkcs8: Zeroizing<Vec<u8>>,
    /// Its SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}

/// Generates a device key of `kt` (ECDSA P-256/P-384 or Ed25519).
pub fn generate(kt: DeviceKeyType) -> Result<GeneratedDeviceKey, KeyStoreError> {
    let fail = || KeyStoreError::Generation(format!("device key ({})", kt.name()));
    let pkcs8 = match kt {
        DeviceKeyType::P256 => EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
            .and_then(|k| k.to_pkcs8v1())
            .map_err(|_| fail())?,
        DeviceKeyType::P384 => EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_ASN1_SIGNING)
            .and_then(|k| k.to_pkcs8v1())
            .map_err(|_| fail())?,
        DeviceKeyType::Ed25519 => Ed25519KeyPair::generate()
            .and_then(|k| k.to_pkcs8v1())
            .map_err(|_| fail())?,
        _ => {
            return Err(KeyStoreError::Generation(
                "HQ-generated RSA device keys are not supported".into(),
            ))
        }
    };
    let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
    let spki_der = public_spki(&pkcs8).ok_or_else(fail)?.1;
    Ok(GeneratedDeviceKey { pkcs8, spki_der })
}

/// The key type and SubjectPublicKeyInfo of a PKCS#8 device key, or `None` if it is not a valid
/// ECDSA P-256/P-384 or Ed25519 key.
pub fn public_spki(pkcs8: &[u8]) -> Option<(DeviceKeyType, Vec<u8>)> {
    if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8) {
        return Some((
            DeviceKeyType::P256,
            k.public_key().as_der().ok()?.as_ref().to_vec(),
        ));
    }
    if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8) {
        return Some((
            DeviceKeyType::P384,
            k.public_key().as_der().ok()?.as_ref().to_vec(),
        ));
    }
    let k = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).ok()?;
    Some((
        DeviceKeyType::Ed25519,
        k.public_key().as_der().ok()?.as_ref().to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_report_their_public_key() {
        for kt in [DeviceKeyType::P256, DeviceKeyType::P384, DeviceKeyType::Ed25519] {
            let k = generate(kt).unwrap();
            let (t, spki) = public_spki(&k.pkcs8).unwrap();
            assert_eq!(t, kt);
            assert_eq!(spki, k.spki_der);
            assert!(stamp_core::csr::classify_spki(&spki).is_ok());
        }
        assert!(generate(DeviceKeyType::Rsa2048).is_err());
        assert!(public_spki(b"junk").is_none());
    }
}
