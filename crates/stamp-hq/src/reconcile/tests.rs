//! Unit tests of reconciliation's pieces.

use serde_bytes::ByteBuf;
use stamp_core::audit::TreeHead;

use super::run::span;
use super::*;

#[test]
fn spans_read_in_their_largest_whole_unit() {
    assert_eq!(span(time::Duration::ZERO), "0 seconds");
    assert_eq!(span(time::Duration::seconds(90)), "90 seconds");
    assert_eq!(span(time::Duration::minutes(5)), "5 minutes");
    assert_eq!(span(time::Duration::hours(36)), "36 hours");
    assert_eq!(span(DEFAULT_PACKAGE_GRACE), "7 days");
    assert_eq!(ReconcileOptions::default().package_grace, time::Duration::days(7));
}

fn header(previous: Option<u64>, first: u64, count: u64, chunks: u64) -> BundleHeader {
    BundleHeader {
        version: audit::VERSION,
        site_id: SiteId::new("s").unwrap(),
        bundle_id: ByteBuf::from(vec![0; 16]),
        created_at_ms: 0,
        previous: previous.map(|size| TreeHead {
            size,
            root: ByteBuf::from(vec![0; 32]),
        }),
        checkpoint: String::new(),
        consistency_proof: vec![],
        first_index: first,
        entry_count: count,
        chunk_count: chunks,
    }
}

#[test]
fn header_numbers_must_agree() {
    assert!(check_counts(&header(None, 0, 10, 1), 10).is_ok());
    assert!(check_counts(&header(Some(10), 10, 5, 2), 15).is_ok());
    for (h, size) in [
        (header(None, 1, 9, 1), 10),                 // first index without previous
        (header(Some(10), 9, 6, 1), 15),             // first index is not previous size
        (header(None, 0, 9, 1), 10),                 // count does not reach the size
        (header(Some(10), 10, 0, 1), 10),            // no entries
        (header(None, 0, 10, 0), 10),                // no chunks
        (header(None, 0, 10, 11), 10),               // more chunks than entries
        (header(None, 0, 5000, 1), 5000),            // more than 4096 entries in one chunk
        (header(Some(u64::MAX), u64::MAX, 1, 1), 0), // overflow
    ] {
        assert!(
            matches!(check_counts(&h, size), Err(Rejection::HeaderInconsistent(_))),
            "{h:?} size {size}"
        );
    }
    let mut proof_without_previous = header(None, 0, 10, 1);
    proof_without_previous
        .consistency_proof
        .push(ByteBuf::from(vec![0; 32]));
    assert!(check_counts(&proof_without_previous, 10).is_err());
}

#[test]
fn untrusted_text_is_shortened_and_escaped() {
    assert_eq!(short("plant-7.1"), "plant-7.1");
    assert_eq!(short("a\nb\u{1b}"), "a\\nb\\u{1b}");
    let long = "x".repeat(1000);
    assert_eq!(short(&long).chars().count(), 65);
}

#[test]
fn rejection_codes_are_distinct_enough_to_script_against() {
    let codes = [
        Rejection::Empty.code(),
        Rejection::UnknownSigner.code(),
        Rejection::TrailingFrames.code(),
        Rejection::NoExportEntry.code(),
        Rejection::RootMismatch { size: 1 }.code(),
        Rejection::Older { size: 1, last: 2 }.code(),
    ];
    let unique: std::collections::BTreeSet<_> = codes.iter().collect();
    assert_eq!(unique.len(), codes.len());
}
