//! Test support: a site's audit log and the bundles it exports, built exactly as
//! docs/formats/audit.md specifies, with the core functions the site uses (`stamp_core::audit`,
//! `envelope::seal`, `checkpoint::sign`, `device::issue`, `merkle`) and a real site's keys. Tests
//! then tamper with the parts or the frames to check what HQ detects.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_bytes::ByteBuf;
use stamp_core::audit::{
    self, BundleChunk, BundleHeader, DeviceRecord, Entry, Event, RefusalReason, TreeHead, CHUNK_CONTENT_TYPE,
    HEADER_CONTENT_TYPE,
};
use stamp_core::checkpoint::{self, Checkpoint};
use stamp_core::entitlement::Grant;
use stamp_core::envelope::{self, Recipient};
use stamp_core::fingerprint::sha256;
use stamp_core::key::{KeyAgreementAlgorithm, Signer};
use stamp_core::merkle::{self, Hash};
use stamp_core::profile::{Issuer, Serial};
use stamp_core::SiteId;
use stamp_keys::soft::SoftKeyStore;
use stamp_keys::{KeyRef, KeyStore, Passphrase};

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, 65-byte point).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A fresh device key's SubjectPublicKeyInfo (P-256).
pub fn device_spki() -> Vec<u8> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(kp.public_key().as_ref());
    spki
}

pub fn pem_der(path: &Path) -> Vec<u8> {
    ::pem::parse(std::fs::read(path).unwrap())
        .unwrap()
        .into_contents()
}

/// Raw public key (EC point) of a certificate.
pub fn cert_public_key(der: &[u8]) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.public_key().subject_public_key.data.to_vec()
}

/// The keys and certificates of a real site directory.
#[derive(Clone)]
pub struct SiteKeys {
    pub site_id: SiteId,
    pub identity: Arc<dyn Signer>,
    pub identity_cert: Vec<u8>,
    pub issuing: Arc<dyn Signer>,
    pub issuing_cert: Vec<u8>,
    /// The site's own key-agreement public key (to seal something NOT to HQ).
    pub site_ka_public: Vec<u8>,
    /// HQ's key-agreement public key.
    pub hq_ka_public: Vec<u8>,
}

impl SiteKeys {
    /// Opens the keys of the site directory `dir` (installed) with the passphrase file `pass`.
    pub fn open(dir: &Path, pass: &Path, site_id: &str) -> Self {
        let store = SoftKeyStore::new(dir, Passphrase::from_file(pass).unwrap());
        let key = |name: &str| -> Arc<dyn Signer> {
            Arc::from(
                store
                    .open_signer(&KeyRef::parse(&format!("file:keys/{name}.key")).unwrap())
                    .unwrap(),
            )
        };
        SiteKeys {
            site_id: SiteId::new(site_id).unwrap(),
            identity: key("site-identity-signing"),
            identity_cert: pem_der(&dir.join("certs/site-identity-signing.pem")),
            issuing: key("site-issuing-ca"),
            issuing_cert: pem_der(&dir.join("certs/site-issuing-ca.pem")),
            site_ka_public: cert_public_key(&pem_der(&dir.join("certs/site-identity-key-agreement.pem"))),
            hq_ka_public: cert_public_key(&pem_der(&dir.join("certs/hq-authority-key-agreement.pem"))),
        }
    }
}

/// The parts of one bundle, before sealing.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub header: BundleHeader,
    pub chunks: Vec<BundleChunk>,
}

impl Bundle {
    /// Decodes entry `i` of chunk `c`.
    pub fn entry(&self, c: usize, i: usize) -> Entry {
        Entry::from_cbor(&self.chunks[c].entries[i]).unwrap()
    }

    /// Replaces entry `i` of chunk `c`.
    pub fn set_entry(&mut self, c: usize, i: usize, e: &Entry) {
        self.chunks[c].entries[i] = ByteBuf::from(e.to_cbor());
    }
}

/// A site's audit log, in memory, with the site's real keys.
#[derive(Clone)]
pub struct SiteLog {
    pub keys: SiteKeys,
    pub entries: Vec<Vec<u8>>,
    leaves: Vec<Hash>,
    /// Size at the last export.
    pub exported: u64,
    /// Time of the next entry (Unix milliseconds).
    pub time_ms: i64,
    /// Milliseconds between entries.
    pub step_ms: i64,
    /// Entries per chunk when exporting.
    pub chunk_size: usize,
    /// Whether an export appends its export-made entry (always, at a real site).
    pub export_entry: bool,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp() + 1) * 1000
}

impl SiteLog {
    pub fn new(keys: SiteKeys) -> Self {
        SiteLog {
            keys,
            entries: Vec::new(),
            leaves: Vec::new(),
            exported: 0,
            time_ms: now_ms(),
            step_ms: 10,
            chunk_size: audit::MAX_ENTRIES_PER_CHUNK,
            export_entry: true,
        }
    }

    pub fn size(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Appends an event at the current time; returns its index.
    pub fn push(&mut self, event: Event) -> u64 {
        let index = self.size();
        let e = Entry {
            index,
            time_ms: self.time_ms,
            event,
        };
        let bytes = e.to_cbor();
        self.leaves.push(merkle::leaf_hash(&bytes));
        self.entries.push(bytes);
        self.time_ms += self.step_ms;
        index
    }

    /// Moves the clock on.
    pub fn wait_ms(&mut self, ms: i64) {
        self.time_ms += ms;
    }

    /// An entitlement-applied entry for the package file `package`.
    pub fn applied(&mut self, package: &Path, sequence: u64, entitlement_id: &str, action: &str) -> u64 {
        let bytes = std::fs::read(package).unwrap();
        self.push(Event::EntitlementApplied {
            entitlement_id: entitlement_id.into(),
            sequence,
            action: action.into(),
            package_sha256: ByteBuf::from(sha256(&bytes).to_vec()),
        })
    }

    /// A device certificate for `spki` under `grant`, signed by `issuer` (default: this site's
    /// issuing CA) at the current time.
    pub fn certificate(
        &self,
        grant: &Grant,
        serial: u64,
        spki: &[u8],
        issuer: Option<(&dyn Signer, &[u8])>,
    ) -> Vec<u8> {
        self.certificate_at(grant, serial, spki, issuer, self.time_ms)
    }

    /// The same, dated `time_ms` (a certificate's notBefore is its entry's time).
    pub fn certificate_at(
        &self,
        grant: &Grant,
        serial: u64,
        spki: &[u8],
        issuer: Option<(&dyn Signer, &[u8])>,
        time_ms: i64,
    ) -> Vec<u8> {
        let (signer, cert_der) = issuer.unwrap_or((self.keys.issuing.as_ref(), &self.keys.issuing_cert));
        let mut r = [0u8; 16];
        SystemRandom::new().fill(&mut r).unwrap();
        let now = time::OffsetDateTime::from_unix_timestamp(time_ms.div_euclid(1000)).unwrap();
        stamp_core::device::issue(
            grant,
            serial,
            spki,
            now,
            Serial::from_random(r),
            &Issuer { cert_der, signer },
        )
        .unwrap()
    }

    /// The device record of a certificate, with hashes computed from it.
    pub fn record(
        grant_id: &str,
        serial: u64,
        cert: Vec<u8>,
        spki: &[u8],
        hq_key_index: Option<u64>,
    ) -> DeviceRecord {
        DeviceRecord {
            entitlement_id: grant_id.into(),
            device_serial: serial,
            certificate_sha256: ByteBuf::from(sha256(&cert).to_vec()),
            certificate: ByteBuf::from(cert),
            public_key_sha256: ByteBuf::from(sha256(spki).to_vec()),
            station: "line-1".into(),
            hq_key_index,
            possession_proof: None,
        }
    }

    /// A genuine device: fresh key, this site's CA, `grant`'s profile.
    pub fn device(&mut self, grant: &Grant, serial: u64) -> u64 {
        let spki = device_spki();
        self.device_with_key(grant, serial, &spki)
    }

    /// A device with the given key.
    pub fn device_with_key(&mut self, grant: &Grant, serial: u64, spki: &[u8]) -> u64 {
        let cert = self.certificate(grant, serial, spki, None);
        self.push(Event::DeviceIssued(Self::record(
            &grant.entitlement_id,
            serial,
            cert,
            spki,
            None,
        )))
    }

    /// A refused request.
    pub fn refused(&mut self, grant_id: Option<&str>, reason: RefusalReason) -> u64 {
        self.push(Event::RequestRefused {
            entitlement_id: grant_id.map(str::to_owned),
            station: "line-1".into(),
            reason,
            public_key_sha256: None,
        })
    }

    /// Exports: appends the export-made entry and returns the bundle's parts (entries since the
    /// last export, the signed checkpoint, the consistency proof).
    pub fn export(&mut self) -> Bundle {
        let mut id = [0u8; 16];
        SystemRandom::new().fill(&mut id).unwrap();
        let bundle_id = ByteBuf::from(id.to_vec());
        let previous_size = self.exported;
        if self.export_entry {
            self.push(Event::ExportMade {
                previous_size,
                bundle_id: bundle_id.clone(),
            });
        }
        let size = self.size();
        let root = merkle::root_from_leaves(&self.leaves);
        let origin = format!("stamp/site/{}", self.keys.site_id);
        let note = checkpoint::sign(
            &Checkpoint {
                origin: origin.clone(),
                size,
                root,
                extensions: vec![],
            },
            &origin,
            self.keys.identity.as_ref(),
        )
        .unwrap();
        let (previous, proof) = if previous_size == 0 {
            (None, vec![])
        } else {
            let prev_root = merkle::root_from_leaves(&self.leaves[..previous_size as usize]);
            let proof = merkle::consistency_proof(&self.leaves, previous_size, size).unwrap();
            (
                Some(TreeHead {
                    size: previous_size,
                    root: ByteBuf::from(prev_root.to_vec()),
                }),
                proof.iter().map(|h| ByteBuf::from(h.to_vec())).collect(),
            )
        };
        let chunks: Vec<BundleChunk> = self.entries[previous_size as usize..]
            .chunks(self.chunk_size)
            .enumerate()
            .map(|(n, es)| BundleChunk {
                bundle_id: bundle_id.clone(),
                chunk: n as u64,
                first_index: previous_size + (n * self.chunk_size) as u64,
                entries: es.iter().map(|e| ByteBuf::from(e.clone())).collect(),
            })
            .collect();
        self.exported = size;
        Bundle {
            header: BundleHeader {
                version: audit::VERSION,
                site_id: self.keys.site_id.clone(),
                bundle_id,
                created_at_ms: self.time_ms,
                previous,
                checkpoint: note,
                consistency_proof: proof,
                first_index: previous_size,
                entry_count: size - previous_size,
                chunk_count: chunks.len() as u64,
            },
            chunks,
        }
    }

    /// Seals one part the way the site does: signed by the site identity, encrypted to HQ.
    pub fn seal_part(&self, content_type: &str, plaintext: &[u8]) -> Vec<u8> {
        self.seal_part_with(
            content_type,
            plaintext,
            self.keys.identity.as_ref(),
            std::slice::from_ref(&self.keys.identity_cert),
            &self.keys.hq_ka_public,
        )
    }

    /// Seals one part with any signer, chain and recipient key (kid `hq`, recipient ID the site).
    pub fn seal_part_with(
        &self,
        content_type: &str,
        plaintext: &[u8],
        signer: &dyn Signer,
        chain: &[Vec<u8>],
        recipient: &[u8],
    ) -> Vec<u8> {
        envelope::seal(
            content_type,
            plaintext,
            signer,
            chain,
            &Recipient {
                alg: KeyAgreementAlgorithm::EcdhP256,
                public_key: recipient,
                key_id: b"hq",
                recipient_id: self.keys.site_id.as_str().as_bytes(),
            },
            &[],
            &SystemRandom::new(),
        )
        .unwrap()
    }

    /// The sealed frames of a bundle: header, then chunks.
    pub fn frames(&self, b: &Bundle) -> Vec<Vec<u8>> {
        self.frames_with(
            b,
            self.keys.identity.as_ref(),
            std::slice::from_ref(&self.keys.identity_cert),
            &self.keys.hq_ka_public,
        )
    }

    /// The bundle's frames (header, then chunks), each sealed with `signer` and `chain` to
    /// `recipient` (kid `hq`, recipient ID the site): a bundle re-sealed by someone else, or to
    /// someone else.
    pub fn frames_with(
        &self,
        b: &Bundle,
        signer: &dyn Signer,
        chain: &[Vec<u8>],
        recipient: &[u8],
    ) -> Vec<Vec<u8>> {
        let seal = |ct: &str, pt: &[u8]| self.seal_part_with(ct, pt, signer, chain, recipient);
        let mut out = vec![seal(HEADER_CONTENT_TYPE, &b.header.to_cbor())];
        out.extend(b.chunks.iter().map(|c| seal(CHUNK_CONTENT_TYPE, &c.to_cbor())));
        out
    }

    /// The bundle file: its frames as a CBOR sequence.
    pub fn seal(&self, b: &Bundle) -> Vec<u8> {
        file(&self.frames(b))
    }
}

/// A bundle file from frames.
pub fn file(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        audit::write_frame(&mut out, f).unwrap();
    }
    out
}
