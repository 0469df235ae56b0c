//! Line stations and the site service's own certificate.
//!
//! A station is a programming station on the factory floor. It talks to the site service over
//! mutual TLS with a key the site generates for it and a `station` certificate from the site
//! issuing CA; the site records each station (name, certificate hash) and can revoke it. The
//! service's TLS server certificate (`site-service` profile) is issued fresh, for a fresh key, each
//! time the service starts.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rusqlite::{params, OptionalExtension};
use serde_bytes::ByteBuf;
use stamp_core::audit::Event;
use stamp_core::entitlement::DeviceKeyType;
use stamp_core::key::SignatureAlgorithm;
use stamp_core::profile::{self, Holder, Issuer, Profile, Serial, ServiceName, Validity};
use stamp_core::{cert, fingerprint};
use stamp_keys::{KeyRef, KeyStore};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::{unix_ms, Site, SiteError, SiteStore};

/// A new station's credentials: its private key (give it to the station only) and certificates.
pub struct StationCredentials {
    /// The station's name (its certificate's CN).
    pub name: String,
    /// The private key, PKCS#8 DER (ECDSA P-256); wiped on drop.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// The station certificate (DER).
    pub certificate: Vec<u8>,
    /// SHA-256 of the certificate.
    pub cert_sha256: [u8; 32],
    /// The site issuing CA's certificate (DER), which the station presents above its own.
    pub issuing_ca: Vec<u8>,
    /// The OEM root (DER): the station trusts it for the service's certificate.
    pub root: Vec<u8>,
}

/// A TLS server identity for the site service: a fresh key and its certificate chain.
pub struct ServiceCredentials {
    /// The private key, PKCS#8 DER (ECDSA P-256); wiped on drop.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// The service certificate, then the site issuing CA (DER).
    pub chain: Vec<Vec<u8>>,
}

/// A station as the site records it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StationInfo {
    /// Name.
    pub name: String,
    /// SHA-256 of its certificate (hex).
    pub cert_sha256: String,
    /// When it was added (Unix milliseconds).
    pub added_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// Whether a presented station certificate may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StationStanding {
    /// Recorded with this certificate and not revoked.
    Active,
    /// Recorded and revoked.
    Revoked,
    /// No station of that name with that certificate.
    Unknown,
}

fn fresh_p256() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), SiteError> {
    let generated = stamp_keys::device::generate(DeviceKeyType::P256)?;
    let raw = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &generated.pkcs8)
        .map_err(|_| stamp_keys::KeyStoreError::Generation("TLS key".into()))?
        .public_key()
        .as_ref()
        .to_vec();
    Ok((generated.pkcs8, raw))
}

fn random_serial() -> Result<Serial, SiteError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| stamp_keys::KeyStoreError::Generation("certificate serial".into()))?;
    Ok(Serial::from_random(b))
}

/// The organization (O) of a certificate's subject.
fn organization(der: &[u8]) -> Result<String, SiteError> {
    let c = cert::parse(der).map_err(|_| SiteError::CorruptLog("stored issuing CA certificate"))?;
    let org = c
        .subject()
        .iter_organization()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned)
        .ok_or(SiteError::CorruptLog(
            "issuing CA certificate has no organization",
        ))?;
    Ok(org)
}

impl Site {
    /// The site issuing CA's certificate (DER) and its signer; `NotInstalled` before credentials.
    pub(crate) fn issuing(&self) -> Result<(Vec<u8>, Box<dyn stamp_core::key::Signer>), SiteError> {
        let ca = self
            .store
            .certificate(Profile::SiteIssuingCa)?
            .ok_or(crate::entitlements::ImportError::NotInstalled)?;
        let signer = self
            .keys
            .open_signer(&KeyRef::parse(&self.store.key_ref(Profile::SiteIssuingCa)?)?)?;
        Ok((ca, signer))
    }

    /// Adds a line station: generates its key, issues its `station` certificate from the site
    /// issuing CA and records it. Names are unique for the life of the site (a revoked name is not
    /// reused, so the audit log's station names stay unambiguous).
    pub fn add_station(&mut self, name: &str, now: OffsetDateTime) -> Result<StationCredentials, SiteError> {
        profile::check_station_name(name)?;
        if self.store.station(name)?.is_some() {
            return Err(SiteError::StationExists(name.to_owned()));
        }
        let root = self
            .store
            .certificate(Profile::OemRoot)?
            .ok_or(crate::entitlements::ImportError::NotInstalled)?;
        let (ca, signer) = self.issuing()?;
        let site = self.store.site_id()?;
        let (key_pkcs8, raw) = fresh_p256()?;
        let der = profile::issue(
            Profile::Station,
            &organization(&ca)?,
            &Holder::Station {
                site,
                name: name.to_owned(),
            },
            &cert::subject_key(SignatureAlgorithm::EcdsaP256Sha256.rcgen(), &raw),
            Validity::starting(now, Profile::Station.default_lifetime()),
            random_serial()?,
            &Issuer {
                cert_der: &ca,
                signer: signer.as_ref(),
            },
        )?;
        let cert_sha256 = fingerprint::sha256(&der);
        let added = unix_ms(now);
        self.store.db_mut().transaction(|tx| {
            tx.execute(
                "INSERT INTO stations (name, cert_sha256, certificate, added_ms) VALUES (?1, ?2, ?3, ?4)",
                params![name, cert_sha256.as_slice(), der, added],
            )?;
            crate::log::append_one(
                tx,
                added,
                Event::StationAdded {
                    station: name.to_owned(),
                    certificate_sha256: ByteBuf::from(cert_sha256.to_vec()),
                },
            )
            .map(|_| ())
        })?;
        Ok(StationCredentials {
            name: name.to_owned(),
            key_pkcs8,
            certificate: der,
            cert_sha256,
            issuing_ca: ca,
            root,
        })
    }

    /// Revokes a station: the site service refuses it from its next request on.
    pub fn revoke_station(&mut self, name: &str, now: OffsetDateTime) -> Result<StationInfo, SiteError> {
        let Some(info) = self.store.station(name)? else {
            return Err(SiteError::UnknownStation(name.chars().take(64).collect()));
        };
        if info.revoked_ms.is_some() {
            return Ok(info);
        }
        let when = unix_ms(now);
        self.store.db_mut().transaction(|tx| {
            tx.execute(
                "UPDATE stations SET revoked_ms = ?1 WHERE name = ?2",
                params![when, name],
            )?;
            crate::log::append_one(
                tx,
                when,
                Event::StationRevoked {
                    station: name.to_owned(),
                },
            )
            .map(|_| ())
        })?;
        Ok(StationInfo {
            revoked_ms: Some(when),
            ..info
        })
    }

    /// Issues a fresh TLS server identity for the site service, valid for `names`.
    pub fn issue_service_certificate(
        &self,
        names: &[ServiceName],
        now: OffsetDateTime,
    ) -> Result<ServiceCredentials, SiteError> {
        let (ca, signer) = self.issuing()?;
        let (key_pkcs8, raw) = fresh_p256()?;
        let der = profile::issue_site_service(
            &organization(&ca)?,
            &self.store.site_id()?,
            names,
            &cert::subject_key(SignatureAlgorithm::EcdsaP256Sha256.rcgen(), &raw),
            Validity::starting(now, Profile::SiteService.default_lifetime()),
            random_serial()?,
            &Issuer {
                cert_der: &ca,
                signer: signer.as_ref(),
            },
        )?;
        Ok(ServiceCredentials {
            key_pkcs8,
            chain: vec![der, ca],
        })
    }
}

impl SiteStore {
    /// One station by name.
    pub fn station(&self, name: &str) -> Result<Option<StationInfo>, SiteError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, cert_sha256, added_ms, revoked_ms FROM stations WHERE name = ?1",
                [name],
                |r| {
                    Ok(StationInfo {
                        name: r.get(0)?,
                        cert_sha256: hex::encode(r.get::<_, Vec<u8>>(1)?),
                        added_ms: r.get(2)?,
                        revoked_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every station, by name.
    pub fn stations(&self) -> Result<Vec<StationInfo>, SiteError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT name, cert_sha256, added_ms, revoked_ms FROM stations ORDER BY name")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StationInfo {
                    name: r.get(0)?,
                    cert_sha256: hex::encode(r.get::<_, Vec<u8>>(1)?),
                    added_ms: r.get(2)?,
                    revoked_ms: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Whether the station `name` presenting a certificate with SHA-256 `cert_sha256` may be served.
    pub fn station_standing(&self, name: &str, cert_sha256: &[u8; 32]) -> Result<StationStanding, SiteError> {
        let row: Option<Option<i64>> = self
            .conn()
            .prepare_cached("SELECT revoked_ms FROM stations WHERE name = ?1 AND cert_sha256 = ?2")?
            .query_row(params![name, cert_sha256.as_slice()], |r| r.get(0))
            .optional()?;
        Ok(match row {
            None => StationStanding::Unknown,
            Some(None) => StationStanding::Active,
            Some(Some(_)) => StationStanding::Revoked,
        })
    }
}
