//! Shared pieces of stamp's benchmarks (the `stamp-bench` binary and the criterion benches):
//! in-memory keys, files of pre-generated CSRs, and a fixture issuing CA with a grant.
//!
//! Nothing here is used by stamp itself; keys live in memory because a benchmark's keys are
//! throw-away.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use aws_lc_rs::agreement;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use stamp_core::entitlement::{DeviceKeyType, DeviceProfile, Grant, Product, SerialRange};
use stamp_core::key::{
    KeyAgreement, KeyAgreementAlgorithm, KeyError, SharedSecret, SignatureAlgorithm, Signer,
};
use stamp_core::profile::{self, Holder, Profile, Serial, Validity};
use time::OffsetDateTime;

/// A P-256 ECDSA key in memory.
pub struct MemSigner {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    rng: SystemRandom,
}

impl MemSigner {
    /// A new random P-256 key.
    pub fn generate_p256() -> anyhow::Result<Self> {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| anyhow::anyhow!("P-256 key generation failed"))?;
        let public = key.public_key().as_ref().to_vec();
        Ok(MemSigner {
            key,
            public,
            rng: SystemRandom::new(),
        })
    }
}

impl std::fmt::Debug for MemSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MemSigner({}, {})",
            Signer::key_ref(self),
            Signer::algorithm(self).name()
        )
    }
}

impl Signer for MemSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.key
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| KeyError::Sign {
                backend: "memory",
                key: "bench".into(),
            })
    }
    fn key_ref(&self) -> &str {
        "memory:bench"
    }
}

/// A P-256 ECDH key in memory.
pub struct MemKeyAgreement {
    key: agreement::PrivateKey,
    public: Vec<u8>,
}

impl MemKeyAgreement {
    /// A new random P-256 key-agreement key.
    pub fn generate_p256() -> anyhow::Result<Self> {
        let key = agreement::PrivateKey::generate(&agreement::ECDH_P256)
            .map_err(|_| anyhow::anyhow!("P-256 key generation failed"))?;
        let public = key
            .compute_public_key()
            .map_err(|_| anyhow::anyhow!("P-256 public key"))?
            .as_ref()
            .to_vec();
        Ok(MemKeyAgreement { key, public })
    }
}

impl std::fmt::Debug for MemKeyAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MemKeyAgreement({}, {})",
            KeyAgreement::key_ref(self),
            KeyAgreement::algorithm(self).name()
        )
    }
}

impl KeyAgreement for MemKeyAgreement {
    fn algorithm(&self) -> KeyAgreementAlgorithm {
        KeyAgreementAlgorithm::EcdhP256
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn agree(&self, peer_public_key: &[u8]) -> Result<SharedSecret, KeyError> {
        let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer_public_key);
        agreement::agree(&self.key, peer, KeyError::BadPeerKey("ecdh-p256"), |s| {
            Ok(zeroize_vec(s))
        })
    }
    fn key_ref(&self) -> &str {
        "memory:bench-ka"
    }
}

fn zeroize_vec(s: &[u8]) -> SharedSecret {
    SharedSecret::new(s.to_vec())
}

/// A device's PKCS#10 request for a new random P-256 key (what a device sends the site).
pub fn new_device_csr(n: u64) -> anyhow::Result<Vec<u8>> {
    let key = MemSigner::generate_p256()?;
    stamp_core::csr::create(&key, &format!("device-{n}")).context("building a CSR")
}

/// Writes CSRs to a CSR file: each one as a 2-byte big-endian length and the DER.
pub struct CsrWriter {
    out: BufWriter<File>,
}

impl CsrWriter {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(CsrWriter {
            out: BufWriter::new(f),
        })
    }

    /// Appends one DER CSR.
    pub fn push(&mut self, der: &[u8]) -> anyhow::Result<()> {
        let len = u16::try_from(der.len()).context("CSR larger than 64 KiB")?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(der)?;
        Ok(())
    }

    /// Flushes the file.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

/// Reads a CSR file written by [`CsrWriter`], one CSR at a time.
pub struct CsrReader {
    input: BufReader<File>,
}

impl CsrReader {
    /// Opens `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(CsrReader {
            input: BufReader::with_capacity(1 << 20, f),
        })
    }

    /// The next CSR, or `None` at the end of the file.
    pub fn next_csr(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let mut len = [0u8; 2];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut der = vec![0u8; usize::from(u16::from_be_bytes(len))];
        self.input.read_exact(&mut der).context("CSR file truncated")?;
        Ok(Some(der))
    }

    /// Every CSR of the file (at most `max`).
    pub fn read_all(path: &Path, max: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut r = CsrReader::open(path)?;
        let mut all = Vec::new();
        while all.len() < max {
            match r.next_csr()? {
                Some(c) => all.push(c),
                None => break,
            }
        }
        if all.is_empty() {
            bail!("no CSRs in {}", path.display());
        }
        Ok(all)
    }
}

/// An OEM root and a site issuing CA under it (P-256 keys in memory), and a grant for P-256
/// device keys: what [`stamp_core::device::issue`] needs, without a site directory.
pub struct Fixture {
    /// The issuing CA's key.
    pub ca: Arc<MemSigner>,
    /// The issuing CA's certificate (DER), made from stamp's site issuing CA profile.
    pub ca_cert: Vec<u8>,
    /// The grant devices are issued under.
    pub grant: Grant,
}

impl Fixture {
    /// Makes the CAs and the grant, valid from `now`.
    pub fn new(now: OffsetDateTime) -> anyhow::Result<Self> {
        let root = MemSigner::generate_p256()?;
        let root_cert = profile::self_signed_root(
            &root,
            "Bench Sensors",
            Validity::starting(now, Profile::OemRoot.default_lifetime()),
            Serial::from_random([1; 16]),
        )?;
        let ca = MemSigner::generate_p256()?;
        let ca_cert = profile::issue(
            Profile::SiteIssuingCa,
            "Bench Sensors",
            &Holder::Site("bench-site".parse()?),
            &stamp_core::cert::subject_key(SignatureAlgorithm::EcdsaP256Sha256.rcgen(), ca.public_key()),
            Validity::starting(now, Profile::SiteIssuingCa.default_lifetime()),
            Serial::from_random([2; 16]),
            &profile::Issuer {
                cert_der: &root_cert,
                signer: &root,
            },
        )?;
        let start = now.unix_timestamp();
        let grant = Grant {
            entitlement_id: "bench-site.1".into(),
            product: Product {
                oem_id: "bench-sensors".into(),
                product_id: "thermo-2".into(),
                name: "Thermostat 2".into(),
            },
            quota: u64::MAX / 2,
            rate_limits: BTreeMap::new(),
            not_before: start - 60,
            not_after: start + 365 * 86_400,
            serial_ranges: vec![SerialRange {
                first: 1_000_000,
                last: 1_000_000_000_000,
            }],
            device_profile: DeviceProfile {
                validity_days: 3650,
                key_types: vec![DeviceKeyType::P256],
                organization: "Bench Sensors".into(),
            },
            stations: vec![],
            device_data: BTreeMap::new(),
            device_keys: vec![],
            firmware: vec![],
            renewal_limit: Default::default(),
        };
        Ok(Fixture {
            ca: Arc::new(ca),
            ca_cert,
            grant,
        })
    }

    /// The issuer to pass to [`stamp_core::device::issue`].
    pub fn issuer(&self) -> profile::Issuer<'_> {
        profile::Issuer {
            cert_der: &self.ca_cert,
            signer: self.ca.as_ref(),
        }
    }

    /// The issuer prepared once, as the site engine holds it.
    pub fn device_issuer(&self) -> anyhow::Result<stamp_core::device::DeviceIssuer> {
        Ok(stamp_core::device::DeviceIssuer::new(
            &self.ca_cert,
            self.ca.clone(),
        )?)
    }
}

/// Peak resident set size of this process so far (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    ProcStat::of("self").map(|s| s.peak_rss_kib)
}

/// CPU time this process has used so far (user + system, every thread, live or ended), in
/// seconds.
pub fn process_cpu_seconds() -> f64 {
    ProcStat::of("self").map_or(0.0, |s| s.cpu_seconds)
}

/// A process's CPU time and memory, from `/proc`.
#[derive(Clone, Debug)]
pub struct ProcStat {
    /// User + system time of every thread, live or ended, in seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Threads now.
    pub threads: u64,
}

impl ProcStat {
    /// Another process's figures (`None` if it is gone or not readable).
    pub fn read(pid: u32) -> Option<ProcStat> {
        ProcStat::of(&pid.to_string())
    }

    fn of(pid: &str) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: count from after it.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name;
        // Linux reports them in units of USER_HZ = 100 per second.
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Some(ProcStat {
            cpu_seconds: (ticks(11) + ticks(12)) as f64 / 100.0,
            peak_rss_kib: field("VmHWM:"),
            rss_kib: field("VmRSS:"),
            threads: field("Threads:"),
        })
    }
}

/// The `q`-quantile (0..=1) of sorted microsecond latencies, in milliseconds.
pub fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted_us[i.min(sorted_us.len() - 1)]) / 1000.0
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), as text.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
