//! The provisioning engine: checks a device's request against its entitlement, builds the device
//! certificate from the entitlement's profile, makes the event durable in the audit log, and only
//! then hands the certificate back.
//!
//! Concurrency: CSR verification runs on the caller's thread, in parallel. Admission (the one rule
//! of [`stamp_core::admission`], module `policy`), serial choice and certificate signing run under
//! one lock, so requests racing for the last unit of quota are decided one at a time and log order
//! is admission order (entry times never go back). A single writer thread (module `writer`)
//! commits log entries in groups (group commit, WAL with fsync); every caller waits for the commit
//! that covers its entry. If storage fails the engine stops issuing (fail-stop): a site that cannot
//! log must not issue.
//!
//! Issuance, hand-out and renewal differ only in how they are admitted; the rest (build the
//! certificate at the entry's time, record, send, wait) is one step, [`Engine::finish`].

mod key_filter;
mod policy;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde_bytes::ByteBuf;
use stamp_core::admission::Ask;
use stamp_core::audit::{DeviceRecord, Event, RefusalReason};
use stamp_core::csr::{self, CsrError};
use stamp_core::entitlement::{Grant, GrantState, Product};
use stamp_core::key::Signer;
use stamp_core::profile::{Issuer, Profile, Serial};
use stamp_core::{device, fingerprint};
use stamp_keys::{KeyRef, KeyStore};
use time::OffsetDateTime;

use crate::{log, unix_ms, Site, SiteError, SiteStore};
use key_filter::KeyFilter;
use policy::{serial_after, Admitted, GrantRuntime, Policy};
use writer::{write_loop, Job, Pending};

/// What a device receives: its certificate, the chain to the OEM root, and its data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStamp {
    /// The grant it was made under.
    pub entitlement_id: String,
    /// The product.
    pub product: Product,
    /// The device serial.
    pub device_serial: u64,
    /// The device certificate (DER).
    #[serde(skip)]
    pub certificate: Vec<u8>,
    /// The chain above it (DER): site issuing CA, OEM root.
    #[serde(skip)]
    pub chain: Vec<Vec<u8>>,
    /// Data the station writes to the device.
    pub device_data: BTreeMap<String, String>,
    /// Firmware releases the station may program into it.
    pub firmware: Vec<crate::entitlements::FirmwareInfo>,
    /// The audit log entry recording the issuance.
    pub log_index: u64,
}

/// Why a device got no certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// Refused by policy (and logged).
    #[error("refused: {}", .0.code())]
    Refused(RefusalReason),
    /// The audit log failed before this request; the engine issues nothing until the site
    /// restarts. Nothing was handed out.
    #[error("the audit log failed earlier; restart the site once its storage is fixed")]
    LogFailedEarlier,
    /// Writing this request's log entry failed; the engine stops issuing (fail-stop). Nothing was
    /// handed out.
    #[error("the audit log write failed")]
    LogWrite(#[source] Arc<SiteError>),
    /// The engine is stopping (or its log writer has stopped).
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// Reading the site's database failed. Nothing was handed out.
    #[error("reading its database failed")]
    Store(#[source] SiteError),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The request's time cannot be a certificate's.
    #[error("the clock is out of range")]
    Clock,
    /// The grant admitted disappeared before its certificate was built (a bug).
    #[error("the grant is not loaded")]
    GrantGone,
}

impl IssueError {
    /// A stable code: the refusal's, or why the site is unavailable.
    pub fn code(&self) -> &'static str {
        match self {
            IssueError::Refused(r) => r.code(),
            IssueError::LogFailedEarlier | IssueError::LogWrite(_) => "log-failed",
            IssueError::ShuttingDown => "shutting-down",
            IssueError::Store(_) => "store-failed",
            IssueError::Random => "random-failed",
            IssueError::Clock => "clock-out-of-range",
            IssueError::GrantGone => "internal",
        }
    }
}

/// An HQ-generated key handed out: give it to the device, then forget it.
pub struct HandedOutKey {
    /// The private key, PKCS#8 DER; wiped on drop.
    pub pkcs8: zeroize::Zeroizing<Vec<u8>>,
    /// Per-device secrets by name; wiped on drop.
    pub secrets: BTreeMap<String, zeroize::Zeroizing<Vec<u8>>>,
    /// Index of the key in the grant.
    pub index: u64,
}

/// What an admitted request becomes in the log.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A first certificate (for the device's own key, or an HQ-generated key: `Some(index)`).
    First(Option<u64>),
    /// A renewal, with or without a proof of possession.
    Renewal,
}

/// The provisioning engine of one site.
pub struct Engine {
    policy: Mutex<Policy>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    failed: Arc<AtomicBool>,
    issuing: Arc<dyn Signer>,
    /// The issuing CA with its certificate parsed once (`None` if that fails: then every
    /// issuance goes through `device::issue`, which refuses it the same way as before).
    prepared: Option<device::DeviceIssuer>,
    issuing_ca: Vec<u8>,
    root: Vec<u8>,
    rng: SystemRandom,
    /// The site's engine lock: one engine per site at a time, across processes.
    _exclusive: crate::inbox::EngineLock,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Engine {
    /// Starts the engine for an installed site: opens the issuing CA key, loads every grant's
    /// state from the database and starts the log writer.
    pub fn start(site: &Site) -> Result<Engine, SiteError> {
        let exclusive = crate::inbox::EngineLock::try_acquire(&site.dir)?.ok_or(SiteError::EngineBusy)?;
        let store = &site.store;
        let issuing_ca = store
            .certificate(Profile::SiteIssuingCa)?
            .ok_or(crate::entitlements::ImportError::NotInstalled)?;
        let root = store
            .certificate(Profile::OemRoot)?
            .ok_or(crate::entitlements::ImportError::NotInstalled)?;
        let issuing: Arc<dyn Signer> = Arc::from(
            site.keys
                .open_signer(&KeyRef::parse(&store.key_ref(Profile::SiteIssuingCa)?)?)?,
        );
        let prepared = device::DeviceIssuer::new(&issuing_ca, issuing.clone()).ok();
        let path: PathBuf = store.path().to_owned();
        let reader = SiteStore::open(&path)?;
        let mut grants = HashMap::new();
        for (state, _) in store.grants()? {
            let id = state.grant.entitlement_id.clone();
            grants.insert(id, GrantRuntime::load(&reader, state)?);
        }
        let mut hq_keys = HashMap::new();
        for (id, g) in &grants {
            if g.state.grant.device_keys.is_empty() {
                continue;
            }
            let full = site
                .reopen_grant(id)?
                .ok_or(SiteError::CorruptLog("grant package missing"))?;
            let used: i64 = reader.conn().query_row(
                "SELECT COUNT(*) FROM devices WHERE entitlement_id = ?1 AND hq_key_index IS NOT NULL",
                [id],
                |r| r.get(0),
            )?;
            hq_keys.insert(
                id.clone(),
                (full.device_keys.clone(), stamp_store::from_sql(used)),
            );
        }
        let key_filter = KeyFilter::load(&reader)?;
        let last_time_ms = log::head(reader.conn())?.last_time_ms;
        let failed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_store = SiteStore::open(&path)?;
        let writer_failed = failed.clone();
        let pending = Arc::new(Pending::default());
        let writer_pending = pending.clone();
        let writer = std::thread::Builder::new()
            .name("stamp-audit-writer".into())
            .spawn(move || write_loop(writer_store, rx, writer_failed, writer_pending))
            .map_err(|source| SiteError::Io { path, source })?;
        Ok(Engine {
            policy: Mutex::new(Policy {
                grants,
                hq_keys,
                pending,
                key_filter,
                last_time_ms,
                reader,
            }),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            failed,
            issuing,
            prepared,
            issuing_ca,
            root,
            rng: SystemRandom::new(),
            _exclusive: exclusive,
        })
    }

    /// Builds and signs a device certificate (`device::issue`, with the CA parsed once).
    fn device_certificate(
        &self,
        grant: &Grant,
        device_serial: u64,
        spki_der: &[u8],
        at: OffsetDateTime,
        serial: Serial,
    ) -> Result<Vec<u8>, stamp_core::profile::ProfileError> {
        match &self.prepared {
            Some(p) => p.issue(grant, device_serial, spki_der, at, serial),
            None => device::issue(
                grant,
                device_serial,
                spki_der,
                at,
                serial,
                &Issuer {
                    cert_der: &self.issuing_ca,
                    signer: self.issuing.as_ref(),
                },
            ),
        }
    }

    /// The chain a device certificate is given: site issuing CA, OEM root (DER).
    pub fn chain(&self) -> Vec<Vec<u8>> {
        vec![self.issuing_ca.clone(), self.root.clone()]
    }

    fn send(&self, job: Job) -> Result<(), IssueError> {
        match lock(&self.jobs).as_ref() {
            Some(tx) => tx.send(job).map_err(|_| IssueError::ShuttingDown),
            None => Err(IssueError::ShuttingDown),
        }
    }

    fn wait(rx: mpsc::Receiver<writer::Written>) -> Result<u64, IssueError> {
        match rx.recv() {
            Ok(Ok(index)) => Ok(index),
            Ok(Err(Some(e))) => Err(IssueError::LogWrite(e)),
            Ok(Err(None)) => Err(IssueError::LogFailedEarlier),
            Err(_) => Err(IssueError::ShuttingDown),
        }
    }

    /// Logs a refusal decided outside the engine (by the site service: a revoked or unknown
    /// station) durably, and returns it as the error.
    pub fn record_refusal(
        &self,
        entitlement_id: Option<&str>,
        station: &str,
        reason: RefusalReason,
        now: OffsetDateTime,
    ) -> IssueError {
        self.refuse(None, entitlement_id, station, reason, None, unix_ms(now))
    }

    /// Logs a refusal (durably) and returns it as the error.
    fn refuse(
        &self,
        policy: Option<MutexGuard<'_, Policy>>,
        entitlement_id: Option<&str>,
        station: &str,
        reason: RefusalReason,
        spki_sha256: Option<[u8; 32]>,
        now_ms: i64,
    ) -> IssueError {
        let mut p = policy.unwrap_or_else(|| lock(&self.policy));
        let time_ms = now_ms.max(p.last_time_ms);
        p.last_time_ms = time_ms;
        let (reply, rx) = mpsc::sync_channel(1);
        let event = Event::RequestRefused {
            entitlement_id: entitlement_id.map(|e| e.chars().take(64).collect()),
            station: station.chars().take(64).collect(),
            reason,
            public_key_sha256: spki_sha256.map(|h| ByteBuf::from(h.to_vec())),
        };
        let sent = self.send(Job::Refusal {
            time_ms,
            event,
            reply,
        });
        drop(p);
        match sent.and_then(|()| Self::wait(rx)) {
            Ok(_) => IssueError::Refused(reason),
            Err(e) => e,
        }
    }

    fn check_running(&self) -> Result<[u8; 16], IssueError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(IssueError::LogFailedEarlier);
        }
        let mut serial = [0u8; 16];
        self.rng.fill(&mut serial).map_err(|_| IssueError::Random)?;
        Ok(serial)
    }

    /// The step every admitted request ends with, under the policy lock taken for its admission:
    /// build the certificate at the entry's time (so its notBefore is the entry's time, to the
    /// second), record the admission, queue the log entry, release the lock, wait for the commit.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mut p: MutexGuard<'_, Policy>,
        a: Admitted,
        kind: Kind,
        spki_der: &[u8],
        station: &str,
        possession_proof: Option<&[u8]>,
        serial: [u8; 16],
    ) -> Result<DeviceStamp, IssueError> {
        let Some(grant) = p.grants.get(&a.entitlement_id).map(|g| g.state.grant.clone()) else {
            return Err(IssueError::GrantGone);
        };
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(a.time_ms) * 1_000_000)
            .map_err(|_| IssueError::Clock)?;
        let cert =
            match self.device_certificate(&grant, a.device_serial, spki_der, at, Serial::from_random(serial))
            {
                Ok(c) => c,
                Err(_) => {
                    return Err(self.refuse(
                        Some(p),
                        Some(&a.entitlement_id),
                        station,
                        RefusalReason::Internal,
                        None,
                        a.time_ms,
                    ))
                }
            };
        p.commit(&a, &cert);
        let hq_key_index = match kind {
            Kind::First(Some(index)) => {
                if let Some((_, used)) = p.hq_keys.get_mut(&a.entitlement_id) {
                    *used += 1;
                }
                Some(index)
            }
            _ => None,
        };
        let record = DeviceRecord {
            entitlement_id: a.entitlement_id.clone(),
            device_serial: a.device_serial,
            certificate_sha256: ByteBuf::from(fingerprint::sha256(&cert).to_vec()),
            public_key_sha256: ByteBuf::from(a.spki_sha256.to_vec()),
            certificate: ByteBuf::from(cert.clone()),
            station: station.chars().take(64).collect(),
            hq_key_index,
            possession_proof: possession_proof.map(|p| ByteBuf::from(p.to_vec())),
        };
        let (reply, rx) = mpsc::sync_channel(1);
        let time_ms = a.time_ms;
        let job = match kind {
            Kind::First(_) => Job::Device {
                time_ms,
                record,
                reply,
            },
            Kind::Renewal => Job::Renewal {
                time_ms,
                record,
                reply,
            },
        };
        let sent = self.send(job);
        drop(p);
        let log_index = sent.and_then(|()| Self::wait(rx))?;
        Ok(DeviceStamp {
            entitlement_id: a.entitlement_id,
            product: grant.product.clone(),
            device_serial: a.device_serial,
            certificate: cert,
            chain: self.chain(),
            device_data: grant.device_data.clone(),
            firmware: crate::entitlements::firmware_of(&grant),
            log_index,
        })
    }

    /// Issues a device certificate for the key in `csr_der` under `entitlement_id`, for `station`.
    pub fn issue(
        &self,
        entitlement_id: &str,
        csr_der: &[u8],
        station: &str,
        now: OffsetDateTime,
    ) -> Result<DeviceStamp, IssueError> {
        let serial = self.check_running()?;
        let now_ms = unix_ms(now);
        let csr = match csr::verify(csr_der) {
            Ok(c) => c,
            Err(e) => {
                return Err(self.refuse(None, Some(entitlement_id), station, csr_refusal(e), None, now_ms))
            }
        };
        let p = lock(&self.policy);
        self.admit_first(
            p,
            entitlement_id,
            Ask::Issue,
            csr.key_type(),
            csr.spki_der(),
            None,
            station,
            serial,
            now_ms,
        )
    }

    /// The shared step of [`Engine::issue`] and [`Engine::hand_out`]: judge the request under the
    /// grant, then issue (durably logged) or refuse (logged too).
    #[allow(clippy::too_many_arguments)]
    fn admit_first(
        &self,
        p: MutexGuard<'_, Policy>,
        entitlement_id: &str,
        ask: Ask,
        key_type: csr::KeyType,
        spki_der: &[u8],
        hq_key_index: Option<u64>,
        station: &str,
        serial: [u8; 16],
        now_ms: i64,
    ) -> Result<DeviceStamp, IssueError> {
        let spki_sha256 = fingerprint::sha256(spki_der);
        let time_ms = now_ms.max(p.last_time_ms);
        match p.admit(entitlement_id, ask, station, key_type, spki_sha256, time_ms) {
            Ok(Ok(a)) => self.finish(p, a, Kind::First(hq_key_index), spki_der, station, None, serial),
            Ok(Err(reason)) => Err(self.refuse(
                Some(p),
                Some(entitlement_id),
                station,
                reason,
                Some(spki_sha256),
                now_ms,
            )),
            Err(e) => Err(IssueError::Store(e)),
        }
    }

    /// Hands out the next HQ-generated key of `entitlement_id` with a certificate for it: the same
    /// rule as [`Engine::issue`], each key at most once, logged durably before it leaves.
    pub fn hand_out(
        &self,
        entitlement_id: &str,
        station: &str,
        now: OffsetDateTime,
    ) -> Result<(DeviceStamp, HandedOutKey), IssueError> {
        let serial = self.check_running()?;
        let now_ms = unix_ms(now);
        let p = lock(&self.policy);
        let picked = p.hq_keys.get(entitlement_id).and_then(|(keys, used)| {
            keys.get(usize::try_from(*used).ok()?).map(|k| {
                let key = HandedOutKey {
                    pkcs8: zeroize::Zeroizing::new(k.private_key.to_vec()),
                    secrets: k
                        .secrets
                        .iter()
                        .map(|(n, v)| (n.clone(), zeroize::Zeroizing::new(v.to_vec())))
                        .collect(),
                    index: *used,
                };
                (key, stamp_keys::device::public_spki(&k.private_key))
            })
        });
        let (key, spki) = match picked {
            Some((key, Some((_, spki)))) => (key, spki),
            Some((_, None)) => {
                return Err(self.refuse(
                    Some(p),
                    Some(entitlement_id),
                    station,
                    RefusalReason::Internal,
                    None,
                    now_ms,
                ))
            }
            None => {
                let reason = if p.grants.contains_key(entitlement_id) {
                    RefusalReason::NoKeysLeft
                } else {
                    RefusalReason::UnknownEntitlement
                };
                return Err(self.refuse(Some(p), Some(entitlement_id), station, reason, None, now_ms));
            }
        };
        let Ok(key_type) = csr::classify_spki(&spki) else {
            return Err(self.refuse(
                Some(p),
                Some(entitlement_id),
                station,
                RefusalReason::Internal,
                None,
                now_ms,
            ));
        };
        let index = Some(key.index);
        let stamp = self.admit_first(
            p,
            entitlement_id,
            Ask::HandOut,
            key_type,
            &spki,
            index,
            station,
            serial,
            now_ms,
        )?;
        Ok((stamp, key))
    }

    /// Issues a new certificate to a device that has one from this site (EST re-enrollment), which
    /// supersedes its certificate until then. The request's subject must equal that certificate's
    /// (and ask for no subject alternative name). Keeping the key, the request's signature proves
    /// possession; for a new key, `proof` must be the device's signature with its current key
    /// ([`stamp_core::device::verify_renewal_proof`]): a station alone cannot renew. Then the
    /// grant's rule: status, device revocation, station list, window, key types, HQ-generated
    /// keys, the key's uniqueness and the renewal limit; quota and rates do not apply (the device
    /// exists). Logged durably as `device-renewed` before it is returned.
    pub fn renew(
        &self,
        csr_der: &[u8],
        proof: Option<&[u8]>,
        station: &str,
        now: OffsetDateTime,
    ) -> Result<DeviceStamp, IssueError> {
        let serial = self.check_running()?;
        let now_ms = unix_ms(now);
        let csr = match csr::verify(csr_der) {
            Ok(c) => c,
            Err(e) => return Err(self.refuse(None, None, station, csr_refusal(e), None, now_ms)),
        };
        let spki_sha256 = fingerprint::sha256(csr.spki_der());
        let p = lock(&self.policy);
        let time_ms = now_ms.max(p.last_time_ms);
        match p.admit_renewal(&csr, proof, station, time_ms) {
            Ok(Ok((a, keeps_key))) => {
                // The proof is logged only for a new key (keeping it, none is needed).
                let proof = if keeps_key { None } else { proof };
                self.finish(p, a, Kind::Renewal, csr.spki_der(), station, proof, serial)
            }
            Ok(Err((entitlement_id, reason))) => Err(self.refuse(
                Some(p),
                entitlement_id.as_deref(),
                station,
                reason,
                Some(spki_sha256),
                now_ms,
            )),
            Err(e) => Err(IssueError::Store(e)),
        }
    }

    /// Takes in entitlement packages applied since the engine started (or last reloaded): new
    /// grants are loaded as [`Engine::start`] loads them; amended grants get their new status,
    /// window, quota, serial ranges and revocations while keeping their counters, reservations
    /// and rate history. Returns how many grants were added or changed. While the engine runs,
    /// packages reach it through its inbox ([`Engine::apply_inbox`]), which calls this under the
    /// policy lock; this is for packages applied otherwise.
    pub fn reload(&self, site: &Site) -> Result<usize, SiteError> {
        let mut p = lock(&self.policy);
        Self::refresh(&mut p, site)
    }

    fn refresh(p: &mut Policy, site: &Site) -> Result<usize, SiteError> {
        let fresh: Vec<GrantState> = site
            .store
            .grants()?
            .into_iter()
            .map(|(state, _)| state)
            .filter(|state| {
                !matches!(p.grants.get(&state.grant.entitlement_id),
                    Some(g) if g.state.last_sequence == state.last_sequence)
            })
            .collect();
        let mut changed = 0;
        for state in fresh {
            let id = state.grant.entitlement_id.clone();
            if let Some(g) = p.grants.get_mut(&id) {
                if g.next_serial.is_none() {
                    // The old ranges are used up; go on above the last of them.
                    let last = g.state.grant.serial_ranges.iter().map(|r| r.last).max();
                    g.next_serial = serial_after(&state.grant.serial_ranges, last);
                }
                g.state = state;
                changed += 1;
                continue;
            }
            if !state.grant.device_keys.is_empty() {
                // A new grant of HQ-generated keys: reopen its sealed package for them.
                let full = site
                    .reopen_grant(&id)?
                    .ok_or(SiteError::CorruptLog("grant package missing"))?;
                let used: i64 = p.reader.conn().query_row(
                    "SELECT COUNT(*) FROM devices WHERE entitlement_id = ?1 AND hq_key_index IS NOT NULL",
                    [&id],
                    |r| r.get(0),
                )?;
                p.hq_keys
                    .insert(id.clone(), (full.device_keys, stamp_store::from_sql(used)));
            }
            let runtime = GrantRuntime::load(&p.reader, state)?;
            p.grants.insert(id, runtime);
            changed += 1;
        }
        // Entries appended outside the engine (a package's) move the log's clock.
        p.last_time_ms = p.last_time_ms.max(log::head(p.reader.conn())?.last_time_ms);
        Ok(changed)
    }

    /// Applies the packages `stamp site import` left for this engine (module
    /// [`inbox`](crate::inbox)), in sequence order, each verified again: under the policy lock,
    /// once every entry admitted before is committed, so that the log records each package
    /// between the admissions made under the grant's old terms and those made under its new
    /// ones. A refused package leaves its reason in the inbox for `stamp site import` to report.
    /// Returns how many were applied.
    pub fn apply_inbox(&self, site: &mut Site, now: OffsetDateTime) -> Result<usize, SiteError> {
        let mut applied = 0;
        for (sequence, path) in site.queued()? {
            let result = read_package(&path).and_then(|bytes| {
                let v = site.verify_entitlement(&bytes, now)?;
                let mut p = lock(&self.policy);
                let (reply, rx) = mpsc::sync_channel(1);
                self.send(Job::Barrier { reply })
                    .and_then(|()| Self::wait(rx))
                    .map_err(|e| SiteError::Engine(Box::new(e)))?;
                site.apply_entitlement(v, now)?;
                Self::refresh(&mut p, site)
            });
            match result {
                Ok(_) => {
                    site.dequeue(sequence, None)?;
                    applied += 1;
                }
                Err(e) => site.dequeue(sequence, Some(&e.to_string()))?,
            }
        }
        Ok(applied)
    }

    /// Whether the audit log failed (the engine then refuses to issue until the site restarts).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Stops accepting requests and waits until every queued log entry is committed.
    pub fn shutdown(&self) {
        drop(lock(&self.jobs).take());
        if let Some(w) = lock(&self.writer).take() {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The refusal reason for a CSR that failed its checks.
fn csr_refusal(e: CsrError) -> RefusalReason {
    match e {
        CsrError::BadSignature => RefusalReason::BadCsrSignature,
        CsrError::BadEcKey | CsrError::WeakRsaKey => RefusalReason::WeakKey,
        CsrError::UnsupportedKey => RefusalReason::KeyTypeNotAllowed,
        _ => RefusalReason::MalformedCsr,
    }
}

/// A queued package's bytes (bounded like `stamp site import`'s input).
fn read_package(path: &std::path::Path) -> Result<Vec<u8>, SiteError> {
    use std::io::Read;
    let io = |source| SiteError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(crate::entitlements::MAX_PACKAGE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > crate::entitlements::MAX_PACKAGE {
        return Err(io(std::io::Error::other("larger than a package may be")));
    }
    Ok(bytes)
}
