//! The provisioning engine: checks a device's request against its entitlement, builds the device
//! certificate from the entitlement's profile, makes the event durable in the audit log, and only
//! then hands the certificate back.
//!
//! Concurrency: CSR verification runs on the caller's thread, in parallel. Policy checks, serial
//! reservation and certificate signing run under one lock, so requests racing for the last unit of
//! quota are decided one at a time and log order is admission order (entry times never go back).
//! A single writer thread commits log entries in groups (group commit, WAL with fsync); every
//! caller waits for the commit that covers its entry. If storage fails the engine stops issuing
//! (fail-stop): a site that cannot log must not issue.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde_bytes::ByteBuf;
use stamp_core::audit::{DeviceRecord, Event, RefusalReason};
use stamp_core::csr::{self, CsrError};
use stamp_core::entitlement::{GrantState, HqDeviceKey, Product, RatePeriod, SerialRange, Status};
use stamp_core::key::Signer;
use stamp_core::profile::{Issuer, Profile, Serial};
use stamp_core::{device, fingerprint};
use stamp_keys::{KeyRef, KeyStore};
use stamp_store::rusqlite::{params, OptionalExtension};
use time::OffsetDateTime;

use crate::{log, unix_ms, Site, SiteError, SiteStore};

/// Most log entries committed in one transaction.
const MAX_BATCH: usize = 1024;

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
    /// The site cannot issue now (storage or signing failure); nothing was handed out.
    #[error("the site cannot issue: {0}")]
    Unavailable(String),
}

/// A grant as the engine tracks it.
struct GrantRuntime {
    state: GrantState,
    /// Issued, committed or in flight.
    issued: u64,
    /// The next serial to hand out, if any is left.
    next_serial: Option<u64>,
    /// Per rate period, the times of the last `limit` issuances.
    recent: BTreeMap<RatePeriod, VecDeque<i64>>,
}

impl GrantRuntime {
    /// A grant's runtime state from the database: devices issued, the next serial, and the tail
    /// of issuance times for each rate period.
    fn load(reader: &SiteStore, state: GrantState) -> Result<GrantRuntime, SiteError> {
        let id = state.grant.entitlement_id.clone();
        let (issued, max_serial): (i64, Option<i64>) = reader.conn().query_row(
            "SELECT COUNT(*), MAX(device_serial) FROM devices WHERE entitlement_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut recent = BTreeMap::new();
        for (period, limit) in &state.grant.rate_limits {
            let mut stmt = reader.conn().prepare(
                "SELECT issued_ms FROM devices WHERE entitlement_id = ?1 ORDER BY issued_ms DESC LIMIT ?2",
            )?;
            let mut times: Vec<i64> = stmt
                .query_map(params![&id, (*limit).min(i64::MAX as u64) as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            times.reverse();
            recent.insert(*period, times.into_iter().collect::<VecDeque<_>>());
        }
        let next_serial = serial_after(&state.grant.serial_ranges, max_serial.map(|s| s as u64));
        Ok(GrantRuntime {
            state,
            issued: issued as u64,
            next_serial,
            recent,
        })
    }
}

fn sorted_ranges(ranges: &[SerialRange]) -> Vec<SerialRange> {
    let mut rs = ranges.to_vec();
    rs.sort_by_key(|r| r.first);
    rs
}

/// The serial after `last` in the ranges (the first one if `last` is none).
fn serial_after(ranges: &[SerialRange], last: Option<u64>) -> Option<u64> {
    let rs = sorted_ranges(ranges);
    match last {
        None => rs.first().map(|r| r.first),
        Some(l) => rs.iter().find_map(|r| {
            if l < r.first {
                Some(r.first)
            } else if l < r.last {
                Some(l + 1)
            } else {
                None
            }
        }),
    }
}

/// A reservation made under the policy lock, undone if the certificate cannot be built.
struct Reservation {
    entitlement_id: String,
    device_serial: u64,
    previous_next: Option<u64>,
    spki_sha256: [u8; 32],
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

/// Every public key the site has certified or admitted (the SPKI SHA-256 of its devices and
/// renewals, committed or in flight), as a Bloom filter: "absent" is certain, so admission skips
/// the database lookup for a new key; "maybe" (a key seen before, or about one new key in a
/// thousand) asks the database (and the in-flight set) as before. Built at start from the
/// database; a key enters it when it is admitted. Never shrinks: a key admitted and then released
/// only costs later requests for it a lookup.
struct KeyFilter {
    bits: Vec<u64>,
    /// Bit count minus one (a power of two minus one).
    mask: u64,
}

impl KeyFilter {
    /// Bit positions per key.
    const PROBES: u64 = 6;

    /// A filter with 16 bits per key for `keys` keys (at least 2^20), rounded up to a power of
    /// two: about one false "maybe" in a thousand new keys until that many are in it, one in
    /// fifty at twice as many. 2 MiB for up to 1M keys, 4 MiB for 2M.
    fn with_capacity(keys: u64) -> KeyFilter {
        let bits = keys
            .clamp(1 << 20, 1 << 34)
            .saturating_mul(16)
            .next_power_of_two();
        KeyFilter {
            bits: vec![0; usize::try_from(bits / 64).unwrap_or(1 << 20)],
            mask: bits - 1,
        }
    }

    /// The bit positions of a key (word, bit mask): double hashing over two 64-bit words of the
    /// SHA-256, which is uniform.
    fn probes(mask: u64, h: &[u8; 32]) -> impl Iterator<Item = (usize, u64)> {
        let word = |from: usize| {
            h.get(from..from + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let (h1, h2) = (word(0), word(8) | 1);
        (0..Self::PROBES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & mask;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn insert(&mut self, h: &[u8; 32]) {
        for (word, bit) in Self::probes(self.mask, h) {
            if let Some(w) = self.bits.get_mut(word) {
                *w |= bit;
            }
        }
    }

    fn may_contain(&self, h: &[u8; 32]) -> bool {
        Self::probes(self.mask, h).all(|(word, bit)| self.bits.get(word).is_none_or(|w| w & bit != 0))
    }

    /// Every key in the site's devices and renewals.
    fn load(reader: &SiteStore) -> Result<KeyFilter, SiteError> {
        let conn = reader.conn();
        let n: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM devices) + (SELECT COUNT(*) FROM renewals)",
            [],
            |r| r.get(0),
        )?;
        let mut filter = KeyFilter::with_capacity(u64::try_from(n).unwrap_or(0).saturating_mul(2));
        let mut stmt =
            conn.prepare("SELECT spki_sha256 FROM devices UNION ALL SELECT spki_sha256 FROM renewals")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            // Anything but a SHA-256 is a key no admission can ask for.
            if let Some(k) = row
                .get_ref(0)?
                .as_blob()
                .ok()
                .and_then(|b| <&[u8; 32]>::try_from(b).ok())
            {
                filter.insert(k);
            }
        }
        Ok(filter)
    }
}

struct Policy {
    grants: HashMap<String, GrantRuntime>,
    /// HQ-generated keys per grant (from the sealed packages) and how many were handed out.
    hq_keys: HashMap<String, (Vec<HqDeviceKey>, u64)>,
    /// Keys admitted whose entries are not committed yet (the database lookup cannot see them);
    /// the writer removes them once they are, without taking the policy lock.
    pending_keys: PendingKeys,
    /// Every key certified or admitted: lets a new key skip the database lookup.
    key_filter: KeyFilter,
    last_time_ms: i64,
    reader: SiteStore,
}

impl Policy {
    fn key_known(&self, spki_sha256: &[u8; 32]) -> Result<bool, SiteError> {
        if !self.key_filter.may_contain(spki_sha256) {
            return Ok(false);
        }
        if lock(&self.pending_keys).contains(spki_sha256) {
            return Ok(true);
        }
        Ok(!self.key_owners(spki_sha256)?.is_empty())
    }

    /// The device serials whose certificates (first or renewed) certify this key.
    fn key_owners(&self, spki_sha256: &[u8; 32]) -> Result<Vec<u64>, SiteError> {
        let mut stmt = self.reader.conn().prepare_cached(
            "SELECT device_serial FROM devices WHERE spki_sha256 = ?1
             UNION SELECT device_serial FROM renewals WHERE spki_sha256 = ?1",
        )?;
        let owners = stmt
            .query_map([spki_sha256.as_slice()], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(|s| s as u64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(owners)
    }

    /// The device a renewal request is for: the certificate this site issued whose subject the
    /// request repeats exactly. Returns its serial, grant and first certificate.
    fn renewal_target(&self, csr: &csr::VerifiedCsr) -> Result<Option<(u64, String)>, SiteError> {
        let Some(serial) = device::serial_in_subject(csr.subject_der()) else {
            return Ok(None);
        };
        let Ok(serial_i) = i64::try_from(serial) else {
            return Ok(None);
        };
        let row: Option<(String, Vec<u8>)> = self
            .reader
            .conn()
            .query_row(
                "SELECT entitlement_id, certificate FROM devices WHERE device_serial = ?1",
                [serial_i],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(entitlement_id, cert)| {
            (device::subject_matches(&cert, csr.subject_der()) && !csr.requests_subject_alt_name())
                .then_some((serial, entitlement_id))
        }))
    }

    /// Decides a request at `time_ms`; on success reserves quota, a serial and a rate slot.
    fn admit(
        &mut self,
        entitlement_id: &str,
        station: &str,
        key_type: csr::KeyType,
        spki_sha256: [u8; 32],
        time_ms: i64,
        hq_key: bool,
    ) -> Result<Result<Reservation, RefusalReason>, SiteError> {
        let known = self.key_known(&spki_sha256)?;
        let Some(g) = self.grants.get_mut(entitlement_id) else {
            return Ok(Err(RefusalReason::UnknownEntitlement));
        };
        let grant = &g.state.grant;
        let refuse = |r| Ok(Err(r));
        if !grant.device_keys.is_empty() && !hq_key {
            return refuse(RefusalReason::HqKeysOnly);
        }
        match g.state.status {
            Status::Active => {}
            Status::Suspended => return refuse(RefusalReason::Suspended),
            Status::Revoked => return refuse(RefusalReason::Revoked),
        }
        if !grant.stations.is_empty() && !grant.stations.iter().any(|s| s == station) {
            return refuse(RefusalReason::StationNotAllowed);
        }
        let secs = time_ms.div_euclid(1000);
        if secs < grant.not_before || secs >= grant.not_after {
            return refuse(RefusalReason::OutsideWindow);
        }
        match device::device_key_type(key_type) {
            Some(t) if grant.device_profile.key_types.contains(&t) => {}
            _ => return refuse(RefusalReason::KeyTypeNotAllowed),
        }
        if known {
            return refuse(RefusalReason::DuplicateKey);
        }
        if g.issued >= grant.quota {
            return refuse(RefusalReason::QuotaExhausted);
        }
        for (period, limit) in &grant.rate_limits {
            let window_ms = period.seconds() * 1000;
            if let Some(times) = g.recent.get(period) {
                if times.len() as u64 >= *limit && times.front().is_some_and(|t| time_ms - t < window_ms) {
                    return refuse(RefusalReason::RateExceeded);
                }
            }
        }
        let Some(device_serial) = g.next_serial else {
            return refuse(RefusalReason::QuotaExhausted);
        };
        let previous_next = g.next_serial;
        g.next_serial = serial_after(&grant.serial_ranges, Some(device_serial));
        g.issued += 1;
        for (period, limit) in &grant.rate_limits {
            let times = g.recent.entry(*period).or_default();
            times.push_back(time_ms);
            while times.len() as u64 > *limit {
                times.pop_front();
            }
        }
        lock(&self.pending_keys).insert(spki_sha256);
        self.key_filter.insert(&spki_sha256);
        self.last_time_ms = time_ms;
        Ok(Ok(Reservation {
            entitlement_id: entitlement_id.to_owned(),
            device_serial,
            previous_next,
            spki_sha256,
        }))
    }

    /// Undoes a reservation whose certificate could not be built.
    fn release(&mut self, r: &Reservation) {
        if let Some(g) = self.grants.get_mut(&r.entitlement_id) {
            g.issued = g.issued.saturating_sub(1);
            g.next_serial = r.previous_next;
            for times in g.recent.values_mut() {
                times.pop_back();
            }
        }
        lock(&self.pending_keys).remove(&r.spki_sha256);
    }
}

/// A log write for the writer thread.
enum Job {
    Device {
        time_ms: i64,
        record: DeviceRecord,
        issued_ms: i64,
        reply: mpsc::SyncSender<Result<u64, String>>,
    },
    Refusal {
        time_ms: i64,
        event: Event,
        reply: mpsc::SyncSender<Result<u64, String>>,
    },
    Renewal {
        time_ms: i64,
        record: DeviceRecord,
        reply: mpsc::SyncSender<Result<u64, String>>,
    },
    /// Answered once every job sent before it is committed (no entry of its own).
    Barrier {
        reply: mpsc::SyncSender<Result<u64, String>>,
    },
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
            hq_keys.insert(id.clone(), (full.device_keys.clone(), used as u64));
        }
        let key_filter = KeyFilter::load(&reader)?;
        let last_time_ms = log::head(reader.conn())?.last_time_ms;
        let failed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_store = SiteStore::open(&path)?;
        let writer_failed = failed.clone();
        let pending_keys = PendingKeys::default();
        let writer_pending = pending_keys.clone();
        let writer = std::thread::Builder::new()
            .name("stamp-audit-writer".into())
            .spawn(move || write_loop(writer_store, rx, writer_failed, writer_pending))
            .map_err(|source| SiteError::Io { path, source })?;
        Ok(Engine {
            policy: Mutex::new(Policy {
                grants,
                hq_keys,
                pending_keys,
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
        grant: &stamp_core::entitlement::Grant,
        device_serial: u64,
        spki_der: &[u8],
        now: OffsetDateTime,
        serial: Serial,
    ) -> Result<Vec<u8>, stamp_core::profile::ProfileError> {
        match &self.prepared {
            Some(p) => p.issue(grant, device_serial, spki_der, now, serial),
            None => device::issue(
                grant,
                device_serial,
                spki_der,
                now,
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
            Some(tx) => tx
                .send(job)
                .map_err(|_| IssueError::Unavailable("the audit log writer stopped".into())),
            None => Err(IssueError::Unavailable("the engine is shutting down".into())),
        }
    }

    fn wait(rx: mpsc::Receiver<Result<u64, String>>) -> Result<u64, IssueError> {
        match rx.recv() {
            Ok(Ok(index)) => Ok(index),
            Ok(Err(e)) => Err(IssueError::Unavailable(e)),
            Err(_) => Err(IssueError::Unavailable("the audit log writer stopped".into())),
        }
    }

    /// Logs a refusal (durably) and returns it as the error.
    fn refuse(
        &self,
        policy: Option<MutexGuard<'_, Policy>>,
        entitlement_id: &str,
        station: &str,
        reason: RefusalReason,
        spki_sha256: Option<[u8; 32]>,
        now_ms: i64,
    ) -> IssueError {
        self.refuse_with(policy, Some(entitlement_id), station, reason, spki_sha256, now_ms)
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
        self.refuse_with(None, entitlement_id, station, reason, None, unix_ms(now))
    }

    fn refuse_with(
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

    /// Issues a device certificate for the key in `csr_der` under `entitlement_id`, for `station`.
    pub fn issue(
        &self,
        entitlement_id: &str,
        csr_der: &[u8],
        station: &str,
        now: OffsetDateTime,
    ) -> Result<DeviceStamp, IssueError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(IssueError::Unavailable(
                "the audit log failed earlier; restart the site".into(),
            ));
        }
        let now_ms = unix_ms(now);
        let csr = match csr::verify(csr_der) {
            Ok(c) => c,
            Err(e) => {
                return Err(self.refuse(None, entitlement_id, station, csr_refusal(e), None, now_ms));
            }
        };
        let spki_sha256 = fingerprint::sha256(csr.spki_der());
        let mut serial = [0u8; 16];
        self.rng
            .fill(&mut serial)
            .map_err(|_| IssueError::Unavailable("random generator failed".into()))?;

        let mut p = lock(&self.policy);
        let time_ms = now_ms.max(p.last_time_ms);
        let reservation = match p.admit(
            entitlement_id,
            station,
            csr.key_type(),
            spki_sha256,
            time_ms,
            false,
        ) {
            Ok(Ok(r)) => r,
            Ok(Err(reason)) => {
                return Err(self.refuse(
                    Some(p),
                    entitlement_id,
                    station,
                    reason,
                    Some(spki_sha256),
                    now_ms,
                ))
            }
            Err(e) => return Err(IssueError::Unavailable(e.to_string())),
        };
        let Some(grant) = p.grants.get(entitlement_id).map(|g| g.state.grant.clone()) else {
            return Err(IssueError::Unavailable("grant vanished".into()));
        };
        let cert = self.device_certificate(
            &grant,
            reservation.device_serial,
            csr.spki_der(),
            now,
            Serial::from_random(serial),
        );
        let cert = match cert {
            Ok(c) => c,
            Err(_) => {
                p.release(&reservation);
                return Err(self.refuse(
                    Some(p),
                    entitlement_id,
                    station,
                    RefusalReason::Internal,
                    None,
                    now_ms,
                ));
            }
        };
        let record = DeviceRecord {
            entitlement_id: entitlement_id.to_owned(),
            device_serial: reservation.device_serial,
            certificate_sha256: ByteBuf::from(fingerprint::sha256(&cert).to_vec()),
            public_key_sha256: ByteBuf::from(spki_sha256.to_vec()),
            certificate: ByteBuf::from(cert.clone()),
            station: station.chars().take(64).collect(),
            hq_key_index: None,
        };
        let (reply, rx) = mpsc::sync_channel(1);
        let sent = self.send(Job::Device {
            time_ms,
            record,
            issued_ms: time_ms,
            reply,
        });
        drop(p);
        sent?;
        let log_index = Self::wait(rx)?;
        Ok(DeviceStamp {
            entitlement_id: entitlement_id.to_owned(),
            product: grant.product.clone(),
            device_serial: reservation.device_serial,
            certificate: cert,
            chain: self.chain(),
            device_data: grant.device_data.clone(),
            firmware: crate::entitlements::firmware_of(&grant),
            log_index,
        })
    }

    /// Hands out the next HQ-generated key of `entitlement_id` with a certificate for it: the same
    /// policy checks as [`Engine::issue`], each key at most once, logged durably before it leaves.
    pub fn hand_out(
        &self,
        entitlement_id: &str,
        station: &str,
        now: OffsetDateTime,
    ) -> Result<(DeviceStamp, HandedOutKey), IssueError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(IssueError::Unavailable(
                "the audit log failed earlier; restart the site".into(),
            ));
        }
        let now_ms = unix_ms(now);
        let mut serial = [0u8; 16];
        self.rng
            .fill(&mut serial)
            .map_err(|_| IssueError::Unavailable("random generator failed".into()))?;
        let mut p = lock(&self.policy);
        let picked = p.hq_keys.get(entitlement_id).and_then(|(keys, used)| {
            keys.get(*used as usize).map(|k| {
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
        let (key, (device_key_type, spki)) = match picked {
            Some((key, Some(public))) => (key, public),
            Some((_, None)) => {
                return Err(self.refuse(
                    Some(p),
                    entitlement_id,
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
                return Err(self.refuse(Some(p), entitlement_id, station, reason, None, now_ms));
            }
        };
        let key_type = match device_key_type {
            stamp_core::entitlement::DeviceKeyType::P384 => csr::KeyType::P384,
            stamp_core::entitlement::DeviceKeyType::Ed25519 => csr::KeyType::Ed25519,
            _ => csr::KeyType::P256,
        };
        let spki_sha256 = fingerprint::sha256(&spki);
        let time_ms = now_ms.max(p.last_time_ms);
        let reservation = match p.admit(entitlement_id, station, key_type, spki_sha256, time_ms, true) {
            Ok(Ok(r)) => r,
            Ok(Err(reason)) => {
                return Err(self.refuse(
                    Some(p),
                    entitlement_id,
                    station,
                    reason,
                    Some(spki_sha256),
                    now_ms,
                ))
            }
            Err(e) => return Err(IssueError::Unavailable(e.to_string())),
        };
        let Some(grant) = p.grants.get(entitlement_id).map(|g| g.state.grant.clone()) else {
            return Err(IssueError::Unavailable("grant vanished".into()));
        };
        let cert = match self.device_certificate(
            &grant,
            reservation.device_serial,
            &spki,
            now,
            Serial::from_random(serial),
        ) {
            Ok(c) => c,
            Err(_) => {
                p.release(&reservation);
                return Err(self.refuse(
                    Some(p),
                    entitlement_id,
                    station,
                    RefusalReason::Internal,
                    None,
                    now_ms,
                ));
            }
        };
        if let Some((_, used)) = p.hq_keys.get_mut(entitlement_id) {
            *used += 1;
        }
        let record = DeviceRecord {
            entitlement_id: entitlement_id.to_owned(),
            device_serial: reservation.device_serial,
            certificate_sha256: ByteBuf::from(fingerprint::sha256(&cert).to_vec()),
            public_key_sha256: ByteBuf::from(spki_sha256.to_vec()),
            certificate: ByteBuf::from(cert.clone()),
            station: station.chars().take(64).collect(),
            hq_key_index: Some(key.index),
        };
        let (reply, rx) = mpsc::sync_channel(1);
        let sent = self.send(Job::Device {
            time_ms,
            record,
            issued_ms: time_ms,
            reply,
        });
        drop(p);
        sent?;
        let log_index = Self::wait(rx)?;
        let stamp = DeviceStamp {
            entitlement_id: entitlement_id.to_owned(),
            product: grant.product.clone(),
            device_serial: reservation.device_serial,
            certificate: cert,
            chain: self.chain(),
            device_data: grant.device_data.clone(),
            firmware: crate::entitlements::firmware_of(&grant),
            log_index,
        };
        Ok((stamp, key))
    }

    /// Issues a new certificate to a device that has one from this site (EST re-enrollment): the
    /// request's subject must equal that certificate's (and ask for no subject alternative name);
    /// the key may be the same or new, but no other device's. The grant's status (not revoked),
    /// station list and key types apply; quota, rate and window do not (the device exists). Logged
    /// durably as `device-renewed` before it is returned.
    pub fn renew(
        &self,
        csr_der: &[u8],
        station: &str,
        now: OffsetDateTime,
    ) -> Result<DeviceStamp, IssueError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(IssueError::Unavailable(
                "the audit log failed earlier; restart the site".into(),
            ));
        }
        let now_ms = unix_ms(now);
        let csr = match csr::verify(csr_der) {
            Ok(c) => c,
            Err(e) => return Err(self.refuse_with(None, None, station, csr_refusal(e), None, now_ms)),
        };
        let spki_sha256 = fingerprint::sha256(csr.spki_der());
        let mut serial = [0u8; 16];
        self.rng
            .fill(&mut serial)
            .map_err(|_| IssueError::Unavailable("random generator failed".into()))?;
        let mut p = lock(&self.policy);
        let time_ms = now_ms.max(p.last_time_ms);
        let (device_serial, entitlement_id) = match p.renewal_target(&csr) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(self.refuse_with(
                    Some(p),
                    None,
                    station,
                    RefusalReason::UnknownDevice,
                    Some(spki_sha256),
                    now_ms,
                ))
            }
            Err(e) => return Err(IssueError::Unavailable(e.to_string())),
        };
        let owners = match p.key_owners(&spki_sha256) {
            Ok(o) => o,
            Err(e) => return Err(IssueError::Unavailable(e.to_string())),
        };
        let decision = match p.grants.get(&entitlement_id) {
            None => Err(RefusalReason::UnknownEntitlement),
            Some(g) => {
                let grant = &g.state.grant;
                if g.state.status == Status::Revoked {
                    Err(RefusalReason::Revoked)
                } else if g.state.device_revoked_at(device_serial).is_some() {
                    Err(RefusalReason::DeviceRevoked)
                } else if !grant.stations.is_empty() && !grant.stations.iter().any(|s| s == station) {
                    Err(RefusalReason::StationNotAllowed)
                } else if !device::device_key_type(csr.key_type())
                    .is_some_and(|t| grant.device_profile.key_types.contains(&t))
                {
                    Err(RefusalReason::KeyTypeNotAllowed)
                } else if lock(&p.pending_keys).contains(&spki_sha256)
                    || owners.iter().any(|o| *o != device_serial)
                {
                    Err(RefusalReason::DuplicateKey)
                } else {
                    Ok(grant.clone())
                }
            }
        };
        let grant = match decision {
            Ok(g) => g,
            Err(reason) => {
                return Err(self.refuse_with(
                    Some(p),
                    Some(&entitlement_id),
                    station,
                    reason,
                    Some(spki_sha256),
                    now_ms,
                ))
            }
        };
        let cert = match device::issue(
            &grant,
            device_serial,
            csr.spki_der(),
            now,
            Serial::from_random(serial),
            &Issuer {
                cert_der: &self.issuing_ca,
                signer: self.issuing.as_ref(),
            },
        ) {
            Ok(c) => c,
            Err(_) => {
                return Err(self.refuse_with(
                    Some(p),
                    Some(&entitlement_id),
                    station,
                    RefusalReason::Internal,
                    None,
                    now_ms,
                ))
            }
        };
        lock(&p.pending_keys).insert(spki_sha256);
        p.key_filter.insert(&spki_sha256);
        p.last_time_ms = time_ms;
        let record = DeviceRecord {
            entitlement_id: entitlement_id.clone(),
            device_serial,
            certificate_sha256: ByteBuf::from(fingerprint::sha256(&cert).to_vec()),
            public_key_sha256: ByteBuf::from(spki_sha256.to_vec()),
            certificate: ByteBuf::from(cert.clone()),
            station: station.chars().take(64).collect(),
            hq_key_index: None,
        };
        let (reply, rx) = mpsc::sync_channel(1);
        let sent = self.send(Job::Renewal {
            time_ms,
            record,
            reply,
        });
        drop(p);
        let log_index = sent.and_then(|()| Self::wait(rx))?;
        Ok(DeviceStamp {
            entitlement_id,
            product: grant.product.clone(),
            device_serial,
            certificate: cert,
            chain: self.chain(),
            device_data: grant.device_data.clone(),
            firmware: crate::entitlements::firmware_of(&grant),
            log_index,
        })
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
                p.hq_keys.insert(id.clone(), (full.device_keys, used as u64));
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
                    .map_err(|e| SiteError::Engine(e.to_string()))?;
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

/// Keys admitted and not yet committed, shared by admission and the writer.
type PendingKeys = Arc<Mutex<HashSet<[u8; 32]>>>;

/// The writer thread: commits queued entries in groups.
fn write_loop(mut store: SiteStore, rx: mpsc::Receiver<Job>, failed: Arc<AtomicBool>, pending: PendingKeys) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let result = if failed.load(Ordering::SeqCst) {
            Err("the audit log failed earlier; restart the site".to_owned())
        } else {
            commit(&mut store, &batch).map_err(|e| {
                failed.store(true, Ordering::SeqCst);
                format!("audit log write failed: {e}")
            })
        };
        if result.is_ok() {
            // Committed: the database lookup sees these keys from now on.
            let mut keys = lock(&pending);
            for job in &batch {
                if let Job::Device { record, .. } | Job::Renewal { record, .. } = job {
                    if let Ok(k) = <[u8; 32]>::try_from(record.public_key_sha256.as_slice()) {
                        keys.remove(&k);
                    }
                }
            }
        }
        for (i, job) in batch.into_iter().enumerate() {
            let reply = match job {
                Job::Device { reply, .. }
                | Job::Refusal { reply, .. }
                | Job::Renewal { reply, .. }
                | Job::Barrier { reply } => reply,
            };
            let _ = reply.send(result.as_ref().map(|indexes| indexes[i]).map_err(Clone::clone));
        }
    }
}

fn commit(store: &mut SiteStore, batch: &[Job]) -> Result<Vec<u64>, SiteError> {
    store.db_mut().transaction(|tx| {
        let mut head = log::head(tx)?;
        let mut indexes = Vec::with_capacity(batch.len());
        // Devices per grant in this batch: each grant's `issued` count is raised once per
        // transaction, by the batch's number, rather than once per device (same committed state).
        let mut issued: BTreeMap<&str, i64> = BTreeMap::new();
        // Statements are prepared once per connection (rusqlite's statement cache), not per row.
        let mut insert_device = tx.prepare_cached(
            "INSERT INTO devices (device_serial, entitlement_id, cert_sha256, spki_sha256, certificate,
                 issued_ms, station, log_index, hq_key_index)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for job in batch {
            match job {
                Job::Device {
                    time_ms,
                    record,
                    issued_ms,
                    ..
                } => {
                    let event = if record.hq_key_index.is_some() {
                        Event::KeyHandedOut(record.clone())
                    } else {
                        Event::DeviceIssued(record.clone())
                    };
                    let e = log::append(tx, &mut head, *time_ms, event)?;
                    insert_device.execute(params![
                        record.device_serial as i64,
                        record.entitlement_id,
                        record.certificate_sha256.as_slice(),
                        record.public_key_sha256.as_slice(),
                        record.certificate.as_slice(),
                        issued_ms,
                        record.station,
                        e.index as i64,
                        record.hq_key_index.map(|i| i as i64),
                    ])?;
                    *issued.entry(record.entitlement_id.as_str()).or_insert(0) += 1;
                    indexes.push(e.index);
                }
                Job::Refusal { time_ms, event, .. } => {
                    indexes.push(log::append(tx, &mut head, *time_ms, event.clone())?.index);
                }
                Job::Renewal { time_ms, record, .. } => {
                    let e = log::append(tx, &mut head, *time_ms, Event::DeviceRenewed(record.clone()))?;
                    tx.execute(
                        "INSERT INTO renewals (log_index, device_serial, entitlement_id, cert_sha256,
                             spki_sha256, certificate, issued_ms, station)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![
                            e.index as i64,
                            record.device_serial as i64,
                            record.entitlement_id,
                            record.certificate_sha256.as_slice(),
                            record.public_key_sha256.as_slice(),
                            record.certificate.as_slice(),
                            time_ms,
                            record.station,
                        ],
                    )?;
                    indexes.push(e.index);
                }
                Job::Barrier { .. } => indexes.push(0),
            }
        }
        let mut count =
            tx.prepare_cached("UPDATE entitlements SET issued = issued + ?2 WHERE entitlement_id = ?1")?;
        for (id, n) in issued {
            count.execute(params![id, n])?;
        }
        log::save(tx, &head)?;
        Ok(indexes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_filter_never_forgets_a_key_and_rarely_claims_a_new_one() {
        let key = |i: u64| fingerprint::sha256(&i.to_be_bytes());
        let mut f = KeyFilter::with_capacity(0);
        assert_eq!(f.bits.len() * 64, 1 << 24);
        let n = 200_000u64;
        for i in 0..n {
            f.insert(&key(i));
        }
        assert!((0..n).all(|i| f.may_contain(&key(i))));
        let false_maybes = (n..n + 200_000).filter(|i| f.may_contain(&key(*i))).count();
        assert!(false_maybes < 200, "{false_maybes} of 200,000 new keys");
        // Far beyond its capacity it still never forgets; it only says "maybe" more often.
        let mut small = KeyFilter::with_capacity(0);
        small.mask = (1 << 12) - 1;
        small.bits.truncate(1 << 6);
        for i in 0..5_000 {
            small.insert(&key(i));
        }
        assert!((0..5_000).all(|i| small.may_contain(&key(i))));
    }

    #[test]
    fn serials_walk_the_ranges_in_order() {
        let rs = [
            SerialRange { first: 50, last: 51 },
            SerialRange { first: 10, last: 11 },
        ];
        assert_eq!(serial_after(&rs, None), Some(10));
        assert_eq!(serial_after(&rs, Some(10)), Some(11));
        assert_eq!(serial_after(&rs, Some(11)), Some(50));
        assert_eq!(serial_after(&rs, Some(51)), None);
    }
}
