//! `stamp cloud verify`

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use stamp_core::registry::{self, Verdict, VerifiedRegistry};

use crate::output::{emit, AlreadyReported};
use crate::Globals;

/// Largest certificate chain file read (bytes).
const MAX_CHAIN_FILE: usize = 64 * 1024;

/// Decide whether a device is genuine, offline, from a stamp registry: the registry's signature
/// is checked under the pinned OEM root (--root-fingerprint, required unless
/// --trust-registry-root), then the device's chain: issued by an enrolled site's issuing CA under
/// that root for client authentication, valid now, matching its entitlement's device profile, its
/// serial in a range HQ allocated to that site, not revoked, and either reconciled by HQ
/// ("registered") or, under an active entitlement, above the serial frontier HQ reconciled and
/// contradicted by nothing ("provisional"). Exit status 0: genuine; 1: refused (the reason code
/// says why; see docs/cloud.md).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The registry (`stamp hq export --format registry`).
    #[arg(long, value_name = "FILE")]
    pub registry: PathBuf,
    /// The OEM root's SHA-256 (hex, colons allowed; `stamp hq init` and `stamp hq export
    /// --format registry` print it): a registry under any other root is refused. Required unless
    /// --trust-registry-root.
    #[arg(long, value_name = "SHA256")]
    pub root_fingerprint: Option<String>,
    /// Trust whatever OEM root the registry file carries, unpinned (a rogue OEM's registry,
    /// signed under its own root, would pass): for experiments only; prints a warning.
    #[arg(long, conflicts_with = "root_fingerprint")]
    pub trust_registry_root: bool,
    /// Refuse a registry older than this sequence (the newest one this verifier has seen).
    #[arg(long, value_name = "N", default_value = "0")]
    pub min_sequence: u64,
    /// Decide as of this time instead of now (RFC 3339, or a date): what a verifier would
    /// have said then, or will say, with this registry.
    #[arg(long, value_name = "TIME", value_parser = crate::commands::args::parse_time)]
    at: Option<time::OffsetDateTime>,
    /// The device's certificate chain, PEM, device certificate first (or DER, the certificate alone).
    #[arg(value_name = "CERT_CHAIN")]
    chain: PathBuf,
}

/// The root pin a verifier runs with: the fingerprint given, or none with the explicit opt-out
/// (warned about on standard error); without either, an error that says what to do.
pub fn root_pin(fingerprint: Option<&str>, trust_registry_root: bool) -> anyhow::Result<Option<&str>> {
    match (fingerprint, trust_registry_root) {
        (Some(fp), _) => Ok(Some(fp)),
        (None, true) => {
            eprintln!(
                "WARNING: --trust-registry-root: the OEM root is NOT pinned; any registry signed under any \
                 root is trusted, so a rogue OEM's devices would be admitted. Pin the root with \
                 --root-fingerprint in production."
            );
            Ok(None)
        }
        (None, false) => Err(crate::output::CliError::usage(
            "no OEM root pinned: give --root-fingerprint SHA256 (the OEM root fingerprint `stamp hq init` \
             and `stamp hq export --format registry` print, read out of band); a registry under any \
             other root is then refused. (--trust-registry-root runs unpinned, for experiments only.)",
        )),
    }
}

/// Reads and verifies a registry file.
pub fn load_registry(path: &Path, pin: Option<&str>, min_sequence: u64) -> anyhow::Result<VerifiedRegistry> {
    let pin = match pin {
        Some(p) => Some(stamp_core::fingerprint::parse_sha256(p).ok_or_else(|| {
            crate::output::CliError::usage(
                "--root-fingerprint must be a SHA-256 (64 hex digits, colons allowed)",
            )
        })?),
        None => None,
    };
    let bytes = crate::commands::read_bounded(path, registry::MAX_REGISTRY_LEN)?;
    registry::verify(&bytes, pin.as_ref(), min_sequence, crate::commands::now())
        .with_context(|| format!("registry {} refused", path.display()))
}

/// Certificates from PEM text (every CERTIFICATE block) or one DER certificate.
pub fn read_chain(bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes.to_vec()]);
    }
    let blocks = pem::parse_many(bytes).context("the chain is neither PEM nor DER")?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        bail!("no CERTIFICATE in the chain file");
    }
    Ok(certs)
}

#[derive(serde::Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    verdict: &'a Verdict,
    registry: RegistryInfo,
}

/// What a verifier says about the registry it used.
#[derive(serde::Serialize)]
pub struct RegistryInfo {
    /// Sequence.
    pub sequence: u64,
    /// Issue time (Unix seconds).
    pub issued_at: i64,
    /// OEM root SHA-256, colon hex.
    pub root_fingerprint: String,
    /// Registered devices.
    pub devices: usize,
}

impl RegistryInfo {
    /// Summarises a registry.
    pub fn of(r: &VerifiedRegistry) -> Self {
        RegistryInfo {
            sequence: r.sequence(),
            issued_at: r.issued_at(),
            root_fingerprint: stamp_core::fingerprint::colon_hex(r.root_sha256()),
            devices: r.device_count(),
        }
    }
}

/// Runs `stamp cloud verify`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let pin = root_pin(a.root_fingerprint.as_deref(), a.trust_registry_root)?;
    let reg = load_registry(&a.registry, pin, a.min_sequence)?;
    let chain = read_chain(&crate::commands::read_bounded(&a.chain, MAX_CHAIN_FILE)?)?;
    let verdict = reg.check_device(&chain, a.at.unwrap_or_else(crate::commands::now));
    let out = Output {
        verdict: &verdict,
        registry: RegistryInfo::of(&reg),
    };
    emit(g.json, &out, || {
        outln!(
            "Registry {} under OEM root {}",
            out.registry.sequence,
            out.registry.root_fingerprint
        )?;
        match verdict.reason {
            None => outln!(
                "GENUINE ({}): serial {} of {} at site {}: {}",
                verdict.standing.name(),
                verdict.device_serial.unwrap_or_default(),
                verdict.entitlement_id.as_deref().unwrap_or("?"),
                verdict.site_id.as_deref().unwrap_or("?"),
                verdict.detail
            )?,
            Some(r) => outln!("REFUSED [{}]: {}", r.code(), verdict.detail)?,
        }
        Ok(())
    })?;
    match verdict.reason {
        None => Ok(()),
        Some(r) => Err(AlreadyReported(format!("device refused: {}", r.code())).into()),
    }
}
