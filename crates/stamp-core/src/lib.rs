//! stamp core: the parts of stamp that take bytes, time and randomness as inputs and return values.
//!
//! Nothing here reads files, opens sockets, looks at the clock or draws randomness. Private keys are
//! reached only through the [`key::Signer`] and [`key::KeyAgreement`] traits, implemented by the key
//! layer (`stamp-keys`): a software key store today, a PKCS#11 token later.

// Items are `pub` only where the crate exports them (rustls and webpki do the same).
#![warn(unreachable_pub)]
// Lengths and counts cross integer widths in the parsers and encoders: every narrowing is explicit.
#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss
    )
)]

pub mod admission;
pub mod audit;
pub mod ceremony;
pub mod cert;
pub mod checkpoint;
pub mod cloud_ca;
pub(crate) mod cose;
pub mod crl;
pub mod csr;
pub mod device;
pub mod entitlement;
pub mod envelope;
pub mod fingerprint;
pub mod firmware;
pub mod key;
pub mod matter;
pub mod merkle;
pub mod oid;
pub mod pkcs7;
pub mod profile;
pub mod registry;
pub mod site_id;

pub use site_id::SiteId;

/// Upper bound on the size of any single certificate stamp accepts (DER bytes).
pub const MAX_CERT_DER: usize = 16 * 1024;
