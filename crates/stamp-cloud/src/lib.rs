//! stamp's cloud edge: a TLS gateway that requires a device client certificate and admits only
//! the devices a verified stamp registry calls genuine, and the device side that connects to it.
//!
//! The decision itself is [`stamp_core::registry::VerifiedRegistry::check_device`] (no I/O); this
//! crate adds sockets, TLS and logging around it.
//!
//! Protocol: after the TLS handshake the gateway writes one JSON line, a [`Reply`]. A refused
//! device's connection is then closed; an admitted device's stays open until the device closes it
//! (each line the device sends is answered with `ok`).

// Items are `pub` only where the crate exports them (rustls and webpki do the same).
#![warn(unreachable_pub)]

pub mod client;
pub mod gateway;
pub mod metrics;
pub mod state;

use std::sync::Arc;

/// What the gateway tells a device after the handshake (one JSON line).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    /// Admitted (genuine: registered or provisional).
    pub admitted: bool,
    /// `registered`, `provisional` or `refused`.
    pub standing: String,
    /// The refusal's reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details.
    pub detail: String,
    /// The device serial, when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_serial: Option<u64>,
    /// The issuing site, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    /// Warnings: `concurrent-use` when the same device serial is connected elsewhere (on this
    /// gateway) at the same time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// Errors of the cloud edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudError {
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A socket failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// A PEM file could not be read.
    #[error("{0}")]
    Pem(String),
    /// The server certificate could not be generated.
    #[error("cannot generate the gateway's certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The gateway's reply was not understood.
    #[error("the gateway's reply is not a stamp gateway reply")]
    BadReply,
}

/// The aws-lc-rs crypto provider every TLS configuration here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
