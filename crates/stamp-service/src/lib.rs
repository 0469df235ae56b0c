//! stamp's site service: line stations provision devices over mutual TLS, with a JSON API and EST
//! (RFC 7030). The stations' side (client, device simulator) is the `stamp-station` crate.
//!
//! The service is a thin edge around the site's provisioning engine
//! ([`stamp_site::engine::Engine`]): it authenticates stations (TLS client certificates from this
//! site's issuing CA, checked against the site's station records), turns HTTP requests into engine
//! calls on a thread of the connection's own (`lanes`), and maps the engine's stable refusal codes to HTTP statuses. The
//! engine decides, signs and logs durably before anything is returned. docs/service.md describes
//! the API, EST, error codes, configuration and operations.

// Items are `pub` only where the crate exports them (rustls and webpki do the same).
#![warn(unreachable_pub)]

pub mod api;
pub mod config;
mod lanes;
pub mod metrics;
pub mod ops;
pub mod server;
mod state;
pub mod tls;

pub use config::Config;
pub use server::{Running, Server, ServiceError};

/// The current time (the service's only clock).
pub(crate) fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
