//! Firmware signing at HQ: named code-signing keys certified under the OEM root (profile
//! `firmware-signing`), signed releases in the formats bootloaders check, and a record of every
//! release in the HQ database.

use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use rusqlite::{params, OptionalExtension};
use stamp_core::firmware::{esp32, mcuboot, FirmwareError, FirmwareKey, Format, Version};
use stamp_core::key::SignatureAlgorithm;
use stamp_core::profile::{self, Holder, Profile, Validity};
use stamp_core::{cert, fingerprint};
use stamp_keys::{KeyRef, KeyStore};
use time::OffsetDateTime;

use crate::store::{insert_cert, ts};
use crate::{random_serial, write_pem, Hq, HqError, HqStore};

/// File name prefix of firmware keys and their certificates (keeps them apart from HQ's own keys).
const PREFIX: &str = "firmware-";

/// A firmware key as HQ lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FirmwareKeyInfo {
    /// The key's name.
    pub name: String,
    /// Its algorithm (`ecdsa-p256`, `ed25519`, `rsa3072-pss`).
    pub algorithm: String,
    /// Formats it can sign.
    pub formats: Vec<&'static str>,
    /// PEM of its certificate under the OEM root.
    pub certificate: PathBuf,
    /// PEM of its public key (for imgtool, espsecure, MCUboot and ESP-IDF builds, devices).
    pub public_key: PathBuf,
    /// SHA-256 fingerprint of the certificate.
    pub certificate_fingerprint: String,
    /// The MCUboot key hash (hex), as `imgtool getpubhash` prints it.
    pub mcuboot_key_hash: Option<String>,
    /// The ESP32 Secure Boot V2 public-key digest to burn into eFuse (hex), as
    /// `espsecure digest-sbv2-public-key` computes it.
    pub esp32_sbv2_key_digest: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// A recorded release.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Release {
    /// The release's version.
    pub version: String,
    /// The image format.
    pub format: String,
    /// The key that signed it.
    pub key: String,
    /// SHA-256 of the signed file (hex).
    pub sha256: String,
    /// The digest the signature covers (hex): MCUboot's SHA-256 TLV, or the ESP32 block digest.
    pub image_digest: String,
    /// Size of the signed file in bytes.
    pub size: u64,
    /// When it was signed (RFC 3339).
    pub signed_at: String,
}

/// How to sign a release.
#[derive(Debug, Clone)]
pub struct SignRequest<'a> {
    /// The key's name.
    pub key: &'a str,
    /// The format.
    pub format: Format,
    /// The release version (also written into MCUboot headers).
    pub version: Version,
    /// MCUboot header options (the version field is taken from `version`).
    pub mcuboot: mcuboot::Options,
}

/// What signing a release produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReleaseReport {
    /// The recorded release.
    #[serde(flatten)]
    pub release: Release,
    /// The signed file written.
    pub output: PathBuf,
    /// The signing key's public key PEM.
    pub public_key: PathBuf,
    /// ESP-IDF app descriptor's secure version (anti-rollback), for ESP32 app images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_version: Option<u32>,
    /// ESP-IDF app descriptor's version string, for ESP32 app images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
}

fn cert_pem_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("certs").join(format!("{PREFIX}{name}.pem"))
}

fn pub_pem_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("certs").join(format!("{PREFIX}{name}.pub.pem"))
}

fn formats_of(alg: SignatureAlgorithm) -> Vec<&'static str> {
    [Format::Mcuboot, Format::Esp32Sbv2]
        .into_iter()
        .filter(|f| f.supports(alg))
        .map(Format::name)
        .collect()
}

/// A firmware key's row: reference, algorithm name, certificate, creation time.
fn key_row(store: &HqStore, name: &str) -> Result<(String, String, Vec<u8>, String), HqError> {
    store
        .conn()
        .query_row(
            "SELECT key_ref, algorithm, cert_der, created_at FROM firmware_keys WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?
        .ok_or_else(|| HqError::UnknownFirmwareKey(name.chars().take(64).collect()))
}

/// The public key of a firmware key, read from its certificate.
pub fn public_key(store: &HqStore, name: &str) -> Result<FirmwareKey, HqError> {
    let (_, _, der, _) = key_row(store, name)?;
    let parsed = cert::parse(&der).map_err(|e| HqError::StoredCert("firmware-signing", e))?;
    Ok(FirmwareKey::from_spki_der(parsed.public_key().raw)?)
}

fn info(dir: &Path, name: String, der: &[u8], created_at: String) -> Result<FirmwareKeyInfo, HqError> {
    let parsed = cert::parse(der).map_err(|e| HqError::StoredCert("firmware-signing", e))?;
    let key = FirmwareKey::from_spki_der(parsed.public_key().raw)?;
    let alg = key.algorithm();
    Ok(FirmwareKeyInfo {
        algorithm: alg.name().to_owned(),
        formats: formats_of(alg),
        certificate: cert_pem_path(dir, &name),
        public_key: pub_pem_path(dir, &name),
        certificate_fingerprint: fingerprint::cert_sha256(der),
        mcuboot_key_hash: Format::Mcuboot
            .supports(alg)
            .then(|| hex::encode(mcuboot::key_hash(&key))),
        esp32_sbv2_key_digest: esp32::public_key_digest(&key).ok().map(hex::encode),
        created_at,
        name,
    })
}

/// Every firmware key, by name.
pub fn keys(dir: &Path, store: &HqStore) -> Result<Vec<FirmwareKeyInfo>, HqError> {
    let mut stmt = store
        .conn()
        .prepare("SELECT name, cert_der, created_at FROM firmware_keys ORDER BY name")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<Vec<(String, Vec<u8>, String)>, _>>()?;
    rows.into_iter()
        .map(|(name, der, created)| info(dir, name, &der, created))
        .collect()
}

/// Every release, oldest first.
pub fn releases(store: &HqStore) -> Result<Vec<Release>, HqError> {
    let mut stmt = store.conn().prepare(
        "SELECT version, format, key_name, sha256, image_digest, size, signed_at
         FROM firmware_releases ORDER BY id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Release {
                version: r.get(0)?,
                format: r.get(1)?,
                key: r.get(2)?,
                sha256: hex::encode(r.get::<_, Vec<u8>>(3)?),
                image_digest: hex::encode(r.get::<_, Vec<u8>>(4)?),
                size: r.get(5)?,
                signed_at: r.get(6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Removes a key file that was just generated and that nothing refers to yet.
#[allow(irrefutable_let_patterns)] // key files only: other backends' objects are left to them
fn remove_new_key(dir: &Path, key_ref: &KeyRef) {
    if let KeyRef::File(p) = key_ref {
        let _ = fs::remove_file(dir.join(p));
    }
}

impl Hq {
    /// Creates a named firmware-signing key, certifies it under the OEM root (profile
    /// `firmware-signing`) and records it; writes its certificate and public key as PEM. On any
    /// error nothing is recorded and no key file is left.
    pub fn add_firmware_key(
        &mut self,
        name: &str,
        alg: SignatureAlgorithm,
        now: OffsetDateTime,
    ) -> Result<FirmwareKeyInfo, HqError> {
        profile::check_firmware_key_name(name)?;
        if formats_of(alg).is_empty() {
            return Err(FirmwareError::UnsupportedAlgorithm {
                format: "any firmware format",
                alg: alg.name(),
            }
            .into());
        }
        if key_row(&self.store, name).is_ok() {
            return Err(HqError::FirmwareKeyExists(name.to_owned()));
        }
        let org = self.store.org()?;
        let (root_ref, root_der) = self.store.own_key(Profile::OemRoot)?;
        let root_signer = self.keys.open_signer(&KeyRef::parse(&root_ref)?)?;
        let (key_ref, signer) = self.keys.generate_signer(&format!("{PREFIX}{name}"), alg)?;
        let result = (|| {
            let der = profile::issue(
                Profile::FirmwareSigning,
                &org,
                &Holder::FirmwareKey(name.to_owned()),
                &cert::subject_key(alg.rcgen(), signer.public_key()),
                Validity::starting(now, Profile::FirmwareSigning.default_lifetime()),
                random_serial(&SystemRandom::new())?,
                &profile::Issuer {
                    cert_der: &root_der,
                    signer: root_signer.as_ref(),
                },
            )?;
            let public = FirmwareKey::from_signer(signer.as_ref())?;
            self.store.db_mut().write(|tx| {
                tx.execute(
                    "INSERT INTO firmware_keys (name, key_ref, algorithm, cert_der, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![name, key_ref.to_string(), alg.name(), der, ts(now)],
                )?;
                insert_cert(tx, Profile::FirmwareSigning, None, &der, now)
            })?;
            Ok::<_, HqError>((der, public))
        })();
        let (der, public) = match result {
            Ok(v) => v,
            Err(e) => {
                remove_new_key(&self.dir, &key_ref);
                return Err(e);
            }
        };
        write_pem(&cert_pem_path(&self.dir, name), &der)?;
        stamp_store::write_atomic(&pub_pem_path(&self.dir, name), public.to_pem().as_bytes(), 0o644)?;
        info(&self.dir, name.to_owned(), &der, ts(now))
    }

    /// Signs `image` as a release with a firmware key, writes the signed image to `out` and
    /// records the release. A version is released once per key and format. On any error nothing
    /// is recorded and no output file is left.
    pub fn sign_firmware(
        &mut self,
        req: &SignRequest<'_>,
        image: &[u8],
        out: &Path,
        now: OffsetDateTime,
    ) -> Result<ReleaseReport, HqError> {
        let (key_ref, _, cert_der, _) = key_row(&self.store, req.key)?;
        let parsed = cert::parse(&cert_der).map_err(|e| HqError::StoredCert("firmware-signing", e))?;
        cert::check_valid_at("firmware-signing", &parsed, now)
            .map_err(|e| HqError::StoredCert("firmware-signing", e))?;
        let version = req.version.to_string();
        let released: Option<i64> = self
            .store
            .conn()
            .query_row(
                "SELECT id FROM firmware_releases WHERE format = ?1 AND key_name = ?2 AND version = ?3",
                params![req.format.name(), req.key, version],
                |r| r.get(0),
            )
            .optional()?;
        if released.is_some() {
            return Err(HqError::FirmwareReleased {
                version,
                key: req.key.to_owned(),
                format: req.format.name(),
            });
        }
        let signer = self.keys.open_signer(&KeyRef::parse(&key_ref)?)?;
        if signer.public_key() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(HqError::StoredCert(
                "firmware-signing",
                cert::CertError::UnsupportedKey("firmware-signing (not the key's certificate)"),
            ));
        }
        let (bytes, image_digest, app) = match req.format {
            Format::Mcuboot => {
                let opts = mcuboot::Options {
                    version: req.version,
                    ..req.mcuboot
                };
                let s = mcuboot::sign(image, &opts, signer.as_ref())?;
                (s.bytes, s.image_hash, None)
            }
            Format::Esp32Sbv2 => {
                let s = esp32::sign(image, signer.as_ref())?;
                (s.bytes, s.digest, esp32::app_descriptor(image))
            }
        };
        let release = Release {
            version,
            format: req.format.name().to_owned(),
            key: req.key.to_owned(),
            sha256: hex::encode(fingerprint::sha256(&bytes)),
            image_digest: hex::encode(image_digest),
            size: bytes.len() as u64,
            signed_at: ts(now),
        };
        stamp_store::write_atomic(out, &bytes, 0o644)?;
        let recorded = self.store.db_mut().write(|tx| {
            tx.execute(
                "INSERT INTO firmware_releases
                   (version, format, key_name, sha256, image_digest, size, signed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    release.version,
                    release.format,
                    release.key,
                    fingerprint::sha256(&bytes).as_slice(),
                    image_digest.as_slice(),
                    release.size,
                    release.signed_at
                ],
            )
        });
        if let Err(e) = recorded {
            let _ = fs::remove_file(out);
            return Err(e.into());
        }
        Ok(ReleaseReport {
            release,
            output: out.to_owned(),
            public_key: pub_pem_path(&self.dir, req.key),
            secure_version: app.as_ref().map(|a| a.0),
            app_version: app.map(|a| a.1),
        })
    }
}
