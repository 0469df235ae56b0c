//! The two files of the enrollment ceremony: the site's request and HQ's credentials.
//!
//! Both are JSON objects with a `format` and a `version`; docs/formats/ceremony.md specifies them.

use base64::Engine as _;
use time::OffsetDateTime;

use crate::cert::{self, CertError};
use crate::csr::{self, CsrError, KeyType, VerifiedCsr};
use crate::fingerprint;
use crate::key::{verify_signature, KeyAgreement, SignatureAlgorithm, Signer};
use crate::profile::Profile;
use crate::SiteId;

/// Largest request or credentials file accepted.
pub const MAX_FILE: usize = 256 * 1024;

/// `format` value of a site request.
pub const REQUEST_FORMAT: &str = "stamp.site-request";
/// `format` value of site credentials.
pub const CREDENTIALS_FORMAT: &str = "stamp.site-credentials";
/// Domain-separation prefix of the binding message.
const BINDING_CONTEXT: &[u8] = b"stamp.site-request.v1\0";

/// Why a ceremony file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeremonyError {
    /// Larger than [`MAX_FILE`].
    #[error("file is larger than {MAX_FILE} bytes")]
    TooLarge,
    /// Not JSON or not a stamp file at all.
    #[error("not a stamp file (expected a JSON object with \"format\" and \"version\")")]
    NotStampFile,
    /// A stamp file of another kind.
    #[error("this is a {found} file, expected a {expected} file")]
    WrongKind {
        /// The `format` found.
        found: String,
        /// The `format` expected.
        expected: &'static str,
    },
    /// A version this build does not understand.
    #[error("unsupported {format} version {version} (this stamp reads version 1)")]
    UnsupportedVersion {
        /// The file's format.
        format: &'static str,
        /// The version found.
        version: u64,
    },
    /// Well-formed JSON with missing, extra or mistyped fields.
    #[error("malformed {format} file: {detail}")]
    Malformed {
        /// The file's format.
        format: &'static str,
        /// What serde said.
        detail: String,
    },
    /// A CSR inside the request was refused.
    #[error("{which} CSR refused")]
    Csr {
        /// Which CSR.
        which: &'static str,
        /// Why.
        source: CsrError,
    },
    /// A key of a type this role may not have.
    #[error("{0} key has a type not allowed for that role")]
    KeyTypeNotAllowed(&'static str),
    /// A PEM field failed to decode.
    #[error("{0}: not a valid PEM block")]
    BadPem(&'static str),
    /// The binding signature does not verify: fields were changed after the site signed them.
    #[error("request binding signature does not verify: the request was altered or assembled from parts")]
    BadBinding,
    /// A certificate was refused.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// Building a request failed (the key backend could not sign).
    #[error("building the request failed: the key store could not sign")]
    Build,
    /// Credentials for another site.
    #[error("credentials are for site {found}, this is site {expected}")]
    WrongSite {
        /// Site ID in the credentials.
        found: String,
        /// This site.
        expected: String,
    },
    /// A certificate names another holder than it should.
    #[error("{0} certificate names the wrong holder")]
    WrongHolder(&'static str),
    /// A certificate's key is not this site's key.
    #[error("{0} certificate is not for this site's key: these credentials were issued for other keys")]
    NotOurKey(&'static str),
    /// The root is not the pinned one.
    #[error("OEM root fingerprint {found} does not match the pinned {expected}")]
    RootMismatch {
        /// The root's fingerprint.
        found: String,
        /// The pinned fingerprint.
        expected: String,
    },
}

#[derive(serde::Deserialize)]
struct Header {
    format: String,
    version: u64,
}

fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    format: &'static str,
) -> Result<T, CeremonyError> {
    if bytes.len() > MAX_FILE {
        return Err(CeremonyError::TooLarge);
    }
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>();
    let value = match stream.next() {
        Some(Ok(v @ serde_json::Value::Object(_))) => v,
        _ => return Err(CeremonyError::NotStampFile),
    };
    let end = stream.byte_offset();
    let header: Header = serde_json::from_value(value.clone()).map_err(|_| CeremonyError::NotStampFile)?;
    if header.format != format {
        return Err(CeremonyError::WrongKind {
            found: header.format.chars().take(64).collect(),
            expected: format,
        });
    }
    if header.version != 1 {
        return Err(CeremonyError::UnsupportedVersion {
            format,
            version: header.version,
        });
    }
    if bytes[end..].iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(CeremonyError::Malformed {
            format,
            detail: "trailing bytes after the JSON object".to_owned(),
        });
    }
    serde_json::from_value(value).map_err(|e| CeremonyError::Malformed {
        format,
        detail: e.to_string(),
    })
}

/// A site's enrollment request as written to disk.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRequest {
    /// Always [`REQUEST_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u64,
    /// The site's ID.
    pub site_id: SiteId,
    /// PKCS#10 (PEM) for the site identity signing key.
    pub identity_signing_csr: String,
    /// SubjectPublicKeyInfo (PEM `PUBLIC KEY`) of the site identity key-agreement key, which cannot
    /// sign its own CSR; the binding signature vouches for it.
    pub identity_key_agreement_public_key: String,
    /// PKCS#10 (PEM) for the site issuing CA key.
    pub issuing_ca_csr: String,
    /// Base64 signature by the identity signing key over the binding message.
    pub binding_signature: String,
}

/// The bytes the site identity key signs and the fingerprint hashes: the context string, then
/// the site ID and the three SPKIs, each preceded by its length as a 4-byte big-endian integer.
pub fn binding_message(site_id: &SiteId, identity: &[u8], key_agreement: &[u8], issuing: &[u8]) -> Vec<u8> {
    let mut m = BINDING_CONTEXT.to_vec();
    for part in [site_id.as_str().as_bytes(), identity, key_agreement, issuing] {
        // Site IDs and SPKIs are bounded far below 4 GiB before they get here.
        #[allow(clippy::cast_possible_truncation)]
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// PEM-encodes DER under a label, LF line endings.
pub fn pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn unpem(text: &str, label: &'static str, field: &'static str) -> Result<Vec<u8>, CeremonyError> {
    let block = pem::parse(text).map_err(|_| CeremonyError::BadPem(field))?;
    if block.tag() != label {
        return Err(CeremonyError::BadPem(field));
    }
    Ok(block.into_contents())
}

/// A request whose CSRs and binding signature have been verified; only [`SiteRequest::verify`]
/// makes one.
#[derive(Debug)]
pub struct VerifiedSiteRequest {
    /// The site's ID.
    pub site_id: SiteId,
    /// The identity signing key's CSR.
    pub identity: VerifiedCsr,
    /// The identity key-agreement key (SPKI DER) and its type.
    pub key_agreement_spki: Vec<u8>,
    /// Type of the key-agreement key.
    pub key_agreement_type: KeyType,
    /// The issuing CA key's CSR.
    pub issuing: VerifiedCsr,
    /// SHA-256 of the binding message.
    pub fingerprint: [u8; 32],
}

impl VerifiedSiteRequest {
    /// The short fingerprint read out over the phone.
    pub fn short_fingerprint(&self) -> String {
        fingerprint::short(&self.fingerprint)
    }

    /// The raw public key of the key-agreement key.
    pub fn key_agreement_raw(&self) -> Result<Vec<u8>, CeremonyError> {
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&self.key_agreement_spki)
            .map_err(|_| CeremonyError::BadPem("identity_key_agreement_public_key"))?;
        Ok(spki.subject_public_key.data.to_vec())
    }
}

/// The signature algorithm a (verified) signing key of this type uses.
pub fn signature_algorithm(kt: KeyType) -> Option<SignatureAlgorithm> {
    match kt {
        KeyType::P256 => Some(SignatureAlgorithm::EcdsaP256Sha256),
        KeyType::P384 => Some(SignatureAlgorithm::EcdsaP384Sha384),
        KeyType::Ed25519 => Some(SignatureAlgorithm::Ed25519),
        KeyType::Rsa(_) => None,
    }
}

impl SiteRequest {
    /// Builds and signs a site's request from its three keys.
    pub fn build(
        site_id: &SiteId,
        identity: &dyn Signer,
        key_agreement: &dyn KeyAgreement,
        issuing: &dyn Signer,
    ) -> Result<Self, CeremonyError> {
        let build_err = |_| CeremonyError::Build;
        let id_csr =
            csr::create(identity, &format!("site {site_id} identity (signing)")).map_err(build_err)?;
        let ca_csr = csr::create(issuing, &format!("site {site_id} issuing CA")).map_err(build_err)?;
        let ka_spki = key_agreement.spki_der();
        let message = binding_message(site_id, &identity.spki_der(), &ka_spki, &issuing.spki_der());
        let sig = identity.sign(&message).map_err(|_| CeremonyError::Build)?;
        Ok(SiteRequest {
            format: REQUEST_FORMAT.to_owned(),
            version: 1,
            site_id: site_id.clone(),
            identity_signing_csr: pem("CERTIFICATE REQUEST", &id_csr),
            identity_key_agreement_public_key: pem("PUBLIC KEY", &ka_spki),
            issuing_ca_csr: pem("CERTIFICATE REQUEST", &ca_csr),
            binding_signature: base64::engine::general_purpose::STANDARD.encode(sig),
        })
    }

    /// Parses a request file (size-bounded, exact format and version, no unknown fields).
    pub fn parse(bytes: &[u8]) -> Result<Self, CeremonyError> {
        parse_json(bytes, REQUEST_FORMAT)
    }

    /// Serializes the request as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Verifies both CSRs, the key types and the binding signature.
    pub fn verify(&self) -> Result<VerifiedSiteRequest, CeremonyError> {
        let id_der = unpem(
            &self.identity_signing_csr,
            "CERTIFICATE REQUEST",
            "identity_signing_csr",
        )?;
        let identity = csr::verify(&id_der).map_err(|source| CeremonyError::Csr {
            which: "identity signing",
            source,
        })?;
        let ca_der = unpem(&self.issuing_ca_csr, "CERTIFICATE REQUEST", "issuing_ca_csr")?;
        let issuing = csr::verify(&ca_der).map_err(|source| CeremonyError::Csr {
            which: "issuing CA",
            source,
        })?;
        let ka_spki = unpem(
            &self.identity_key_agreement_public_key,
            "PUBLIC KEY",
            "identity_key_agreement_public_key",
        )?;
        let ka_type = csr::classify_spki(&ka_spki).map_err(|source| CeremonyError::Csr {
            which: "identity key agreement",
            source,
        })?;
        if !matches!(ka_type, KeyType::P256 | KeyType::P384) {
            return Err(CeremonyError::KeyTypeNotAllowed("identity key agreement"));
        }
        let id_alg = signature_algorithm(identity.key_type())
            .ok_or(CeremonyError::KeyTypeNotAllowed("identity signing"))?;
        if signature_algorithm(issuing.key_type()).is_none() {
            return Err(CeremonyError::KeyTypeNotAllowed("issuing CA"));
        }
        let message = binding_message(&self.site_id, identity.spki_der(), &ka_spki, issuing.spki_der());
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&self.binding_signature)
            .map_err(|_| CeremonyError::BadBinding)?;
        if !verify_signature(id_alg, identity.raw_public_key(), &message, &sig) {
            return Err(CeremonyError::BadBinding);
        }
        Ok(VerifiedSiteRequest {
            site_id: self.site_id.clone(),
            identity,
            key_agreement_spki: ka_spki,
            key_agreement_type: ka_type,
            issuing,
            fingerprint: fingerprint::sha256(&message),
        })
    }
}

/// The credentials HQ returns to a site.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteCredentials {
    /// Always [`CREDENTIALS_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u64,
    /// The site these are for.
    pub site_id: SiteId,
    /// Short fingerprint of the request they answer.
    pub request_fingerprint: String,
    /// OEM root certificate (PEM).
    pub oem_root: String,
    /// HQ authority signing certificate (PEM).
    pub hq_authority_signing: String,
    /// HQ authority key-agreement certificate (PEM).
    pub hq_authority_key_agreement: String,
    /// Site identity signing certificate (PEM).
    pub site_identity_signing: String,
    /// Site identity key-agreement certificate (PEM).
    pub site_identity_key_agreement: String,
    /// Site issuing CA certificate (PEM).
    pub site_issuing_ca: String,
}

/// One certificate of a credentials file to check: its role, PEM text, profile, expected
/// organizational unit, and (for the site's own certificates) the key it must certify.
type CredentialEntry<'a> = (&'static str, &'a String, Profile, &'a str, Option<&'a [u8]>);

/// The public keys a site holds, to match against its credentials.
pub struct SitePublicKeys<'a> {
    /// Raw identity signing public key.
    pub identity_signing: &'a [u8],
    /// Raw identity key-agreement public key.
    pub identity_key_agreement: &'a [u8],
    /// Raw issuing CA public key.
    pub issuing_ca: &'a [u8],
}

/// Credentials that chain to the root, match the profiles and this site's keys; only
/// [`SiteCredentials::verify`] makes one. Certificates are DER.
#[derive(Clone, Debug)]
pub struct VerifiedCredentials {
    /// The site.
    pub site_id: SiteId,
    /// OEM root.
    pub oem_root: Vec<u8>,
    /// HQ authority signing.
    pub hq_authority_signing: Vec<u8>,
    /// HQ authority key agreement.
    pub hq_authority_key_agreement: Vec<u8>,
    /// Site identity signing.
    pub site_identity_signing: Vec<u8>,
    /// Site identity key agreement.
    pub site_identity_key_agreement: Vec<u8>,
    /// Site issuing CA.
    pub site_issuing_ca: Vec<u8>,
    /// SHA-256 fingerprint of the root (openssl style).
    pub root_fingerprint: String,
}

impl SiteCredentials {
    /// Parses a credentials file (size-bounded, exact format and version, no unknown fields).
    pub fn parse(bytes: &[u8]) -> Result<Self, CeremonyError> {
        parse_json(bytes, CREDENTIALS_FORMAT)
    }

    /// Serializes as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Verifies the credentials for `site` holding `keys`, at `now`, optionally against a pinned
    /// root fingerprint (SHA-256 of the root's DER).
    pub fn verify(
        &self,
        site: &SiteId,
        keys: &SitePublicKeys<'_>,
        pinned_root: Option<&[u8; 32]>,
        now: OffsetDateTime,
    ) -> Result<VerifiedCredentials, CeremonyError> {
        if &self.site_id != site {
            return Err(CeremonyError::WrongSite {
                found: self.site_id.to_string(),
                expected: site.to_string(),
            });
        }
        let root = unpem(&self.oem_root, "CERTIFICATE", "oem_root")?;
        let root_sha = fingerprint::sha256(&root);
        if let Some(pin) = pinned_root {
            if pin != &root_sha {
                return Err(CeremonyError::RootMismatch {
                    found: fingerprint::colon_hex(&root_sha),
                    expected: fingerprint::colon_hex(pin),
                });
            }
        }
        let root_cert = cert::parse(&root)?;
        cert::check_root(&root_cert, now)?;
        let site_unit = format!("site {site}");
        let entries: [CredentialEntry<'_>; 5] = [
            (
                "HQ authority signing",
                &self.hq_authority_signing,
                Profile::HqAuthoritySigning,
                "HQ",
                None,
            ),
            (
                "HQ authority key agreement",
                &self.hq_authority_key_agreement,
                Profile::HqAuthorityKeyAgreement,
                "HQ",
                None,
            ),
            (
                "site identity signing",
                &self.site_identity_signing,
                Profile::SiteIdentitySigning,
                &site_unit,
                Some(keys.identity_signing),
            ),
            (
                "site identity key agreement",
                &self.site_identity_key_agreement,
                Profile::SiteIdentityKeyAgreement,
                &site_unit,
                Some(keys.identity_key_agreement),
            ),
            (
                "site issuing CA",
                &self.site_issuing_ca,
                Profile::SiteIssuingCa,
                &site_unit,
                Some(keys.issuing_ca),
            ),
        ];
        let mut ders = Vec::with_capacity(5);
        for (what, pem_text, profile, unit, own_key) in entries {
            let der = unpem(pem_text, "CERTIFICATE", what)?;
            cert::check_under_root(what, &der, profile, &root, now)?;
            let c = cert::parse(&der)?;
            let ou = c
                .subject()
                .iter_organizational_unit()
                .next()
                .and_then(|a| a.as_str().ok());
            if ou != Some(unit) {
                return Err(CeremonyError::WrongHolder(what));
            }
            if let Some(own) = own_key {
                if c.public_key().subject_public_key.data.as_ref() != own {
                    return Err(CeremonyError::NotOurKey(what));
                }
            }
            ders.push(der);
        }
        let mut it = ders.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Ok(VerifiedCredentials {
            site_id: site.clone(),
            oem_root: root,
            hq_authority_signing: next(),
            hq_authority_key_agreement: next(),
            site_identity_signing: next(),
            site_identity_key_agreement: next(),
            site_issuing_ca: next(),
            root_fingerprint: fingerprint::colon_hex(&root_sha),
        })
    }
}
