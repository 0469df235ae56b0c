//! The integration tests of the `stamp` binary: one test binary (as ripgrep has), a module per
//! area, sharing `common` (the stamp-testkit builder and set-ups, and the audit-bundle builder).
//! Run one area with `cargo test -p stamp-cli --test main -- reconcile::`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

mod common;

mod audit_flow;
mod bad_input;
mod broken_pipe;
mod ceremony;
mod cloud;
mod entitlements;
mod faults;
mod firmware;
mod issuance;
mod newcomer;
mod ops;
mod pkcs11;
mod pkilint;
mod reconcile;
mod reconcile_scale;
mod service;
mod service_limits;
