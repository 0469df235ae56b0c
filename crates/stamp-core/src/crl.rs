//! X.509 certificate revocation lists (RFC 5280 §5): the OEM root's CRL of the certificates it
//! issued to revoked sites, and a site issuing CA's CRL of its revoked devices. Built with rcgen
//! (version 2, authority key identifier and CRL number as RFC 5280 requires), signed through a
//! [`Signer`], so the key may be in a token. [`verify`] reads one back strictly.

use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::cert;
use crate::key::{RcgenSigner, Signer};

/// Largest CRL [`verify`] reads (a site CRL lists every certificate of a revoked grant).
pub const MAX_CRL_DER: usize = 64 << 20;

/// Errors making or reading a CRL.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// The issuer certificate is unusable.
    #[error(transparent)]
    Cert(#[from] cert::CertError),
    /// The signer's key is not the issuer certificate's.
    #[error("the signing key is not the key of the CRL issuer's certificate")]
    WrongKey,
    /// rcgen refused the parameters or the signer failed.
    #[error("cannot make the CRL: {0}")]
    Build(String),
    /// Larger than [`MAX_CRL_DER`].
    #[error("CRL is larger than {MAX_CRL_DER} bytes")]
    TooLarge,
    /// Not a DER X.509 v2 CRL, or bytes after it.
    #[error("not a valid DER X.509 v2 CRL")]
    Malformed,
    /// Issued by someone else.
    #[error("the CRL names a different issuer")]
    IssuerMismatch,
    /// The signature does not verify with the issuer's key.
    #[error("the CRL's signature does not verify with its issuer's key")]
    BadSignature,
    /// No CRL number, or one that is not a positive integer below 2^63.
    #[error("the CRL has no usable CRL number")]
    BadNumber,
    /// A validity outside 1 to [`MAX_CRL_DAYS`] days.
    #[error("a CRL is valid 1 to {MAX_CRL_DAYS} days, not {0}")]
    BadDays(u32),
}

/// Longest time from a CRL's thisUpdate to its nextUpdate, in days.
pub const MAX_CRL_DAYS: u32 = 366;

/// thisUpdate and nextUpdate of a CRL made at `now` (whole seconds), valid `days` days.
pub fn times(now: OffsetDateTime, days: u32) -> Result<(OffsetDateTime, OffsetDateTime), CrlError> {
    if days == 0 || days > MAX_CRL_DAYS {
        return Err(CrlError::BadDays(days));
    }
    let this = now.replace_nanosecond(0).unwrap_or(now);
    Ok((this, this + time::Duration::days(i64::from(days))))
}

/// A CRL made, as commands report it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CrlReport {
    /// Its CRL number.
    pub number: u64,
    /// thisUpdate (RFC 3339).
    pub this_update: String,
    /// nextUpdate (RFC 3339): publish the next CRL before then.
    pub next_update: String,
    /// Certificates it lists.
    pub revoked: usize,
    /// SHA-256 of the DER, hex.
    pub sha256: String,
}

impl CrlReport {
    /// The report of a CRL made by [`issue`].
    pub fn of(
        der: &[u8],
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        revoked: usize,
    ) -> CrlReport {
        let text = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        CrlReport {
            number,
            this_update: text(this_update),
            next_update: text(next_update),
            revoked,
            sha256: hex::encode(crate::fingerprint::sha256(der)),
        }
    }
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The certificate's serial number (its INTEGER's content octets).
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
}

impl Revoked {
    /// The entry for a certificate (DER), revoked at `revoked_at`.
    pub fn of(certificate: &[u8], revoked_at: OffsetDateTime) -> Result<Revoked, CrlError> {
        let c = cert::parse(certificate)?;
        Ok(Revoked {
            serial: c.raw_serial().to_vec(),
            revoked_at,
        })
    }
}

/// What a CRL says, as [`verify`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// The CRL number.
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate, if present.
    pub next_update: Option<OffsetDateTime>,
    /// The revoked certificates, in the CRL's order.
    pub revoked: Vec<Revoked>,
}

/// PEM-encodes a DER CRL (label `X509 CRL`, as OpenSSL reads it).
pub fn to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("X509 CRL", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Makes a CRL signed by `signer`, the key of `issuer_cert_der` (which must allow cRLSign). The
/// revocation entries are written in the order given; `number` must grow with every CRL the
/// issuer makes (the caller keeps it).
pub fn issue(
    issuer_cert_der: &[u8],
    signer: &dyn Signer,
    number: u64,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
    revoked: &[Revoked],
) -> Result<Vec<u8>, CrlError> {
    let issuer = cert::parse(issuer_cert_der)?;
    if issuer.public_key().subject_public_key.data.as_ref() != signer.public_key() {
        return Err(CrlError::WrongKey);
    }
    let params = rcgen::CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|r| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&r.serial),
                revocation_time: r.revoked_at,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let rcgen_issuer = rcgen::Issuer::from_ca_cert_der(&issuer_cert_der.to_vec().into(), RcgenSigner(signer))
        .map_err(|e| CrlError::Build(e.to_string()))?;
    let crl = params
        .signed_by(&rcgen_issuer)
        .map_err(|e| CrlError::Build(e.to_string()))?;
    Ok(crl.der().to_vec())
}

/// Reads a CRL strictly (DER, no trailing bytes, version 2) and checks that `issuer_cert_der`
/// issued it: the issuer name and the signature.
pub fn verify(der: &[u8], issuer_cert_der: &[u8]) -> Result<CrlInfo, CrlError> {
    if der.len() > MAX_CRL_DER {
        return Err(CrlError::TooLarge);
    }
    if <x509_cert::crl::CertificateList as x509_cert::der::Decode>::from_der(der).is_err() {
        return Err(CrlError::Malformed);
    }
    let crl = match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) if crl.signature_value.unused_bits == 0 && crl.version().is_some() => crl,
        _ => return Err(CrlError::Malformed),
    };
    let issuer = cert::parse(issuer_cert_der)?;
    if crl.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(CrlError::IssuerMismatch);
    }
    crl.verify_signature(issuer.public_key())
        .map_err(|_| CrlError::BadSignature)?;
    let number = match crl.crl_number().map(|n| n.to_u64_digits()) {
        Some(d) if d.len() == 1 && d[0] > 0 && d[0] < 1 << 63 => d[0],
        _ => return Err(CrlError::BadNumber),
    };
    Ok(CrlInfo {
        number,
        this_update: crl.last_update().to_datetime(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| Revoked {
                serial: r.raw_serial().to_vec(),
                revoked_at: r.revocation_date.to_datetime(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SignatureAlgorithm;
    use crate::profile::tests::TestSigner;
    use crate::profile::{self, Serial, Validity};
    use time::Duration;

    const NOW: OffsetDateTime = time::macros::datetime!(2026-11-22 12:00 UTC);

    fn ca(name: &str) -> (Vec<u8>, TestSigner) {
        let key = TestSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
        let validity = Validity::starting(NOW - Duration::days(1), Duration::days(3650));
        let der = profile::self_signed_root(&key, name, validity, Serial::from_random([7; 16])).unwrap();
        (der, key)
    }

    #[test]
    fn issue_then_verify() {
        let (root, key) = ca("Acme Root");
        let revoked = vec![
            Revoked {
                serial: vec![0x12, 0x34],
                revoked_at: NOW - Duration::days(1),
            },
            Revoked {
                serial: vec![0x7f; 16],
                revoked_at: NOW,
            },
        ];
        let der = issue(&root, &key, 3, NOW, NOW + Duration::days(7), &revoked).unwrap();
        let info = verify(&der, &root).unwrap();
        assert_eq!(info.number, 3);
        assert_eq!(info.this_update, NOW);
        assert_eq!(info.next_update, Some(NOW + Duration::days(7)));
        assert_eq!(info.revoked, revoked);
        // Empty CRLs are fine (no revokedCertificates field at all).
        let empty = issue(&root, &key, 4, NOW, NOW + Duration::days(7), &[]).unwrap();
        assert!(verify(&empty, &root).unwrap().revoked.is_empty());
    }

    #[test]
    fn refusals() {
        let (root, key) = ca("Acme Root");
        let (other, other_key) = ca("Other Root");
        assert!(matches!(
            issue(&root, &other_key, 1, NOW, NOW + Duration::days(1), &[]),
            Err(CrlError::WrongKey)
        ));
        assert!(issue(&root, &key, 1, NOW, NOW, &[]).is_err());
        let der = issue(&root, &key, 1, NOW, NOW + Duration::days(1), &[]).unwrap();
        assert!(matches!(verify(&der, &other), Err(CrlError::IssuerMismatch)));
        // Same name, different key.
        let (twin, _) = ca("Acme Root");
        assert!(matches!(verify(&der, &twin), Err(CrlError::BadSignature)));
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(verify(&trailing, &root), Err(CrlError::Malformed)));
        assert!(matches!(
            verify(&der[..der.len() - 1], &root),
            Err(CrlError::Malformed)
        ));
        // Every single-bit flip is refused.
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 0x01;
            assert!(verify(&bad, &root).is_err(), "bit flip at {i} accepted");
        }
        assert!(matches!(
            verify(&vec![0u8; MAX_CRL_DER + 1], &root),
            Err(CrlError::TooLarge)
        ));
    }
}
