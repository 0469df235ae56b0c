//! The demo's attacker on the line: with one station's credentials, ask the site service to renew
//! a genuine device to a key of the attacker's own, without the device. A renewal for a new key
//! needs the device's proof of possession by its current key, so the site refuses it
//! (`possession-not-proven`) and logs the refusal; the device keeps its one live certificate.

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use stamp_station::client::{Endpoint, StationIdentity};

/// What the site answered the clone attempt.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct RenewalClone {
    /// The device serial the attacker tried to take over.
    pub device_serial: u64,
    /// HTTP status of the refusal.
    pub status: u16,
    /// The refusal code.
    pub reason: String,
}

/// Tries it against the service at `url` with the station in `station_dir`, for the device whose
/// certificate (PEM) is `device_cert`.
pub(super) fn attempt(
    url: &str,
    station_dir: &Path,
    device_cert: &Path,
    device_serial: u64,
) -> anyhow::Result<RenewalClone> {
    let pem =
        std::fs::read_to_string(device_cert).with_context(|| format!("reading {}", device_cert.display()))?;
    let der = stamp_core::cert::from_pem(&pem, "CERTIFICATE").context("the device certificate is not PEM")?;
    // The genuine device's subject, attribute by attribute: what a renewal names.
    let cert = stamp_core::cert::parse(&der)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for attr in cert.subject().iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .context("an attribute type too long to copy")?
            .collect();
        let value = attr
            .as_str()
            .context("a subject attribute that is not a string")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CustomDnType(oid), value);
    }
    let attacker_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = params.serialize_request(&attacker_key)?.der().to_vec();
    let station = StationIdentity::load(station_dir)?;
    let reply = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut conn = Endpoint::for_station(url, &station)?.connect().await?;
            let body = serde_json::json!({ "csr": base64::engine::general_purpose::STANDARD.encode(&csr) });
            conn.post_json("/api/v1/renew", &body).await
        })?;
    Ok(RenewalClone {
        device_serial,
        status: reply.status,
        reason: reply.error.unwrap_or_default(),
    })
}
