//! What the CLI tests share: the builder for the real `stamp` binary and the ceremony, second-site
//! and entitlement set-ups (all from stamp-testkit), and the audit-bundle builder.
#![allow(dead_code, unused_imports)]

pub mod audit_builder;

pub use stamp_testkit::cli::*;
pub use stamp_testkit::{csr_der, csr_der_for, csr_der_with, secret_file, write_csr_dir, write_csrs};
