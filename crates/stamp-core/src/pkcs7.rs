//! EST (RFC 7030) bodies: certs-only PKCS#7 (a CMS SignedData with certificates and no signers,
//! RFC 5652 / RFC 7030 section 4.1.3), CSR attributes (section 4.5.2), and base64 transfer
//! encoding.

use crate::entitlement::DeviceKeyType;
use base64::Engine as _;
use x509_cert::der::asn1::{ObjectIdentifier, SetOfVec};
use x509_cert::der::{Any, Decode, Encode};

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// Most certificates read from a certs-only message.
pub const MAX_CERTS: usize = 16;

/// Why a PKCS#7 or CSR attributes body could not be built or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs7Error {
    /// DER encoding or decoding failed.
    #[error("PKCS#7: {0}")]
    Der(String),
    /// A well-formed message that is not certs-only SignedData.
    #[error("PKCS#7: not a certs-only SignedData ({0})")]
    NotCertsOnly(&'static str),
}

fn der_err(e: x509_cert::der::Error) -> Pkcs7Error {
    Pkcs7Error::Der(e.to_string())
}

/// A certs-only message (DER ContentInfo holding SignedData) carrying `certs` (DER).
pub fn certs_only(certs: &[Vec<u8>]) -> Result<Vec<u8>, Pkcs7Error> {
    use cms::cert::CertificateChoices;
    use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
    let mut set = SetOfVec::new();
    for der in certs {
        let c = x509_cert::Certificate::from_der(der).map_err(der_err)?;
        set.insert(CertificateChoices::Certificate(c)).map_err(der_err)?;
    }
    let sd = SignedData {
        version: cms::content_info::CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(set)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let ci = cms::content_info::ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(der_err)?,
    };
    ci.to_der().map_err(der_err)
}

/// The certificates (DER) of a certs-only message; refuses signers, content and other kinds.
pub fn read_certs_only(der: &[u8]) -> Result<Vec<Vec<u8>>, Pkcs7Error> {
    use cms::cert::CertificateChoices;
    let ci = cms::content_info::ContentInfo::from_der(der).map_err(der_err)?;
    if ci.content_type != ID_SIGNED_DATA {
        return Err(Pkcs7Error::NotCertsOnly("content type"));
    }
    let sd: cms::signed_data::SignedData = ci.content.decode_as().map_err(der_err)?;
    if !sd.signer_infos.0.is_empty() || sd.encap_content_info.econtent.is_some() {
        return Err(Pkcs7Error::NotCertsOnly("has signers or content"));
    }
    let certs = sd.certificates.map(|c| c.0.into_vec()).unwrap_or_default();
    if certs.is_empty() || certs.len() > MAX_CERTS {
        return Err(Pkcs7Error::NotCertsOnly("number of certificates"));
    }
    certs
        .into_iter()
        .map(|c| match c {
            CertificateChoices::Certificate(c) => c.to_der().map_err(der_err),
            CertificateChoices::Other(_) => Err(Pkcs7Error::NotCertsOnly("other certificate format")),
        })
        .collect()
}

fn attribute(oid: ObjectIdentifier, values: &[ObjectIdentifier]) -> Result<Any, Pkcs7Error> {
    let mut set = SetOfVec::new();
    for v in values {
        set.insert(Any::encode_from(v).map_err(der_err)?)
            .map_err(der_err)?;
    }
    let attr = x509_cert::attr::Attribute { oid, values: set };
    Any::encode_from(&attr).map_err(der_err)
}

/// CSR attributes (RFC 7030 section 4.5.2) for a grant allowing `key_types`: the allowed public
/// key algorithms (EC with the allowed curves, Ed25519, RSA) and signature algorithms.
pub fn csr_attrs(key_types: &[DeviceKeyType]) -> Result<Vec<u8>, Pkcs7Error> {
    let mut items: Vec<Any> = Vec::new();
    let mut curves = Vec::new();
    if key_types.contains(&DeviceKeyType::P256) {
        curves.push(SECP256R1);
    }
    if key_types.contains(&DeviceKeyType::P384) {
        curves.push(SECP384R1);
    }
    if !curves.is_empty() {
        items.push(attribute(ID_EC_PUBLIC_KEY, &curves)?);
        items.push(Any::encode_from(&ECDSA_WITH_SHA256).map_err(der_err)?);
    }
    if key_types.contains(&DeviceKeyType::Ed25519) {
        items.push(Any::encode_from(&ID_ED25519).map_err(der_err)?);
    }
    if key_types.iter().any(|k| {
        matches!(
            k,
            DeviceKeyType::Rsa2048 | DeviceKeyType::Rsa3072 | DeviceKeyType::Rsa4096
        )
    }) {
        items.push(Any::encode_from(&RSA_ENCRYPTION).map_err(der_err)?);
        items.push(Any::encode_from(&SHA256_WITH_RSA).map_err(der_err)?);
    }
    items.to_der().map_err(der_err)
}

/// Base64 in lines of 64 characters, each ending in CRLF (RFC 2045 transfer encoding, as RFC 7030 uses).
pub fn base64_lines(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 32 + 2);
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push_str("\r\n");
    }
    out
}

/// Decodes base64 that may be split into lines (RFC 7030 bodies); `None` if it is not base64.
pub fn base64_decode(text: &[u8], max: usize) -> Option<Vec<u8>> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.len() > max.saturating_mul(4) / 3 + 4 {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(compact).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["x.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn certs_only_round_trips_and_refuses_other_messages() {
        let (a, b) = (cert(), cert());
        let msg = certs_only(&[a.clone(), b.clone()]).unwrap();
        let mut back = read_certs_only(&msg).unwrap();
        back.sort();
        let mut want = vec![a.clone(), b];
        want.sort();
        assert_eq!(back, want);
        assert!(read_certs_only(&a).is_err());
        assert!(read_certs_only(&msg[..msg.len() - 1]).is_err());
        assert!(read_certs_only(&certs_only(&[]).unwrap()).is_err());
    }

    #[test]
    fn csr_attrs_name_the_allowed_algorithms() {
        let der = csr_attrs(&[DeviceKeyType::P256, DeviceKeyType::Ed25519]).unwrap();
        let items: Vec<Any> = Vec::<Any>::from_der(&der).unwrap();
        assert_eq!(items.len(), 3);
        let ed: ObjectIdentifier = items[2].decode_as().unwrap();
        assert_eq!(ed, ID_ED25519);
        assert_eq!(csr_attrs(&[]).unwrap(), vec![0x30, 0x00]);
    }

    #[test]
    fn base64_lines_decode_back() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = base64_lines(&data);
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(base64_decode(text.as_bytes(), 4096).unwrap(), data);
        assert!(base64_decode(b"not base64!", 100).is_none());
        assert!(base64_decode(text.as_bytes(), 10).is_none());
    }
}
