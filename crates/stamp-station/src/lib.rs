//! stamp's line station side: what a programming station runs to get devices their stamps from
//! the site service. A mutual-TLS client with the station's identity (`client`), and the device
//! simulator that enrolls many devices over EST or the JSON API and checks each stamp
//! (`simulate`). The service itself is `stamp-service`; this crate does not depend on it.

// Items are `pub` only where the crate exports them (rustls and webpki do the same).
#![warn(unreachable_pub)]

pub mod client;
pub mod simulate;

mod tls;

pub use tls::{client_config, TlsError};
