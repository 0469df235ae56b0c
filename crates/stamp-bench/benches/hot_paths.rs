//! Criterion micro-benchmarks of stamp's hot paths, so that regressions show:
//!
//! ```sh
//! cargo bench -p stamp-bench                 # all
//! cargo bench -p stamp-bench -- csr          # one group
//! ```
//!
//! CSR parse + verify; device certificate build + sign; log append (entry encode, leaf hash,
//! frontier append); inclusion and consistency proofs (generate and verify, with and without a
//! subtree cache); envelope seal and open.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::hint::black_box;

use aws_lc_rs::rand::SystemRandom;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_bytes::ByteBuf;
use stamp_bench::{new_device_csr, Fixture, MemKeyAgreement};
use stamp_core::audit::{DeviceRecord, Entry, Event};
use stamp_core::envelope::{self, Recipient};
use stamp_core::key::{KeyAgreement, SignatureAlgorithm, Signer};
use stamp_core::merkle::{self, Frontier, Hash, HashSource, Subtree};
use stamp_core::profile::Serial;
use stamp_core::{csr, device, fingerprint};

fn csrs(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(|i| new_device_csr(i).unwrap()).collect()
}

fn bench_csr(c: &mut Criterion) {
    let all = csrs(256);
    let mut g = c.benchmark_group("csr");
    let mut i = 0;
    g.bench_function("parse_verify_p256", |b| {
        b.iter(|| {
            i = (i + 1) % all.len();
            black_box(csr::verify(black_box(&all[i])).unwrap());
        })
    });
    g.finish();
}

fn bench_device_cert(c: &mut Criterion) {
    let now = time::OffsetDateTime::now_utc();
    let fx = Fixture::new(now).unwrap();
    let spki = csr::verify(&new_device_csr(0).unwrap())
        .unwrap()
        .spki_der()
        .to_vec();
    let mut g = c.benchmark_group("device_cert");
    let mut n = 0u64;
    g.bench_function("build_sign_p256", |b| {
        b.iter(|| {
            n += 1;
            let mut serial = [7u8; 16];
            serial[..8].copy_from_slice(&n.to_le_bytes());
            black_box(
                device::issue(
                    &fx.grant,
                    1_000_000 + n,
                    &spki,
                    now,
                    Serial::from_random(serial),
                    &fx.issuer(),
                )
                .unwrap(),
            );
        })
    });
    let prepared = fx.device_issuer().unwrap();
    g.bench_function("build_sign_p256_prepared_issuer", |b| {
        b.iter(|| {
            n += 1;
            let mut serial = [7u8; 16];
            serial[..8].copy_from_slice(&n.to_le_bytes());
            black_box(
                prepared
                    .issue(&fx.grant, 1_000_000 + n, &spki, now, Serial::from_random(serial))
                    .unwrap(),
            );
        })
    });
    g.finish();
}

fn device_entry(index: u64, cert: &[u8]) -> Entry {
    Entry {
        index,
        time_ms: 1_790_000_000_000 + index as i64,
        event: Event::DeviceIssued(DeviceRecord {
            entitlement_id: "plant-7.1".into(),
            device_serial: 1_000_000 + index,
            certificate: ByteBuf::from(cert.to_vec()),
            certificate_sha256: ByteBuf::from(fingerprint::sha256(cert).to_vec()),
            public_key_sha256: ByteBuf::from(vec![0x5a; 32]),
            station: "line-1".into(),
            hq_key_index: None,
            possession_proof: None,
        }),
    }
}

fn bench_log(c: &mut Criterion) {
    let now = time::OffsetDateTime::now_utc();
    let fx = Fixture::new(now).unwrap();
    let spki = csr::verify(&new_device_csr(0).unwrap())
        .unwrap()
        .spki_der()
        .to_vec();
    let cert = device::issue(
        &fx.grant,
        1_000_000,
        &spki,
        now,
        Serial::from_random([9; 16]),
        &fx.issuer(),
    )
    .unwrap();
    let mut g = c.benchmark_group("log");
    let mut frontier = Frontier::new();
    g.bench_function("append_device_entry", |b| {
        b.iter_batched(
            || device_entry(0, &cert),
            |mut entry| {
                entry.index = frontier.size();
                let bytes = entry.to_cbor();
                frontier.append(merkle::leaf_hash(&bytes)).unwrap();
                black_box(bytes);
            },
            BatchSize::SmallInput,
        )
    });
    let bytes = device_entry(0, &cert).to_cbor();
    g.bench_function("decode_device_entry", |b| {
        b.iter(|| black_box(Entry::from_cbor(black_box(&bytes)).unwrap()))
    });
    g.finish();
}

/// Leaf hashes in memory with every perfect subtree cached (what a log that stores the subtrees
/// `Frontier::append_with` reports serves).
struct Cached {
    leaves: Vec<Hash>,
    subtrees: HashMap<Subtree, Hash>,
}

impl HashSource for Cached {
    type Error = merkle::LeafOutOfRange;
    fn leaf_hash(&self, index: u64) -> Result<Hash, Self::Error> {
        self.leaves.leaf_hash(index)
    }
    fn subtree_hash(&self, subtree: Subtree) -> Result<Option<Hash>, Self::Error> {
        Ok(self.subtrees.get(&subtree).copied())
    }
}

fn bench_proofs(c: &mut Criterion) {
    let size: u64 = 1 << 20;
    let mut cached = Cached {
        leaves: Vec::with_capacity(size as usize),
        subtrees: HashMap::new(),
    };
    let mut frontier = Frontier::new();
    for i in 0..size {
        let leaf = merkle::leaf_hash(&i.to_be_bytes());
        cached.leaves.push(leaf);
        frontier
            .append_with(leaf, |s, h| {
                cached.subtrees.insert(s, *h);
            })
            .unwrap();
    }
    let root = frontier.root();
    let old = size / 3;
    let old_root = merkle::tree_root(&cached, old).unwrap();
    let index = size / 2 + 12_345;

    let mut g = c.benchmark_group("proofs_1M_leaves");
    g.bench_function("inclusion_generate_cached", |b| {
        b.iter(|| black_box(merkle::inclusion_proof(&cached, black_box(index), size).unwrap()))
    });
    g.bench_function("consistency_generate_cached", |b| {
        b.iter(|| black_box(merkle::consistency_proof(&cached, black_box(old), size).unwrap()))
    });
    let inclusion = merkle::inclusion_proof(&cached, index, size).unwrap();
    let consistency = merkle::consistency_proof(&cached, old, size).unwrap();
    g.bench_function("inclusion_verify", |b| {
        b.iter(|| {
            merkle::verify_inclusion(&cached.leaves[index as usize], index, size, &inclusion, &root).unwrap()
        })
    });
    g.bench_function("consistency_verify", |b| {
        b.iter(|| merkle::verify_consistency(old, size, &consistency, &old_root, &root).unwrap())
    });
    // Without a subtree cache (what the site's stored log serves today), proving reads O(n)
    // leaves; measured on 64Ki leaves to keep the run short.
    let small: Vec<Hash> = cached.leaves[..1 << 16].to_vec();
    g.sample_size(10);
    g.bench_function("consistency_generate_uncached_64Ki", |b| {
        b.iter(|| black_box(merkle::consistency_proof(&small, black_box(20_000), 1 << 16).unwrap()))
    });
    g.finish();
}

fn bench_envelope(c: &mut Criterion) {
    let now = time::OffsetDateTime::now_utc();
    let fx = Fixture::new(now).unwrap();
    let hq = MemKeyAgreement::generate_p256().unwrap();
    let chain = vec![fx.ca_cert.clone()];
    let rng = SystemRandom::new();
    let recipient = Recipient {
        alg: hq.algorithm(),
        public_key: hq.public_key(),
        key_id: b"hq",
        recipient_id: b"plant-7",
    };
    let mut g = c.benchmark_group("envelope");
    for (name, len) in [("1KiB", 1024usize), ("1MiB", 1 << 20)] {
        let plaintext = vec![0x42u8; len];
        g.throughput(Throughput::Bytes(len as u64));
        if len > 4096 {
            g.sample_size(20);
        }
        g.bench_function(format!("seal_{name}"), |b| {
            b.iter(|| {
                black_box(
                    envelope::seal(
                        "application/vnd.stamp.audit-chunk+cbor",
                        &plaintext,
                        fx.ca.as_ref(),
                        &chain,
                        &recipient,
                        &[],
                        &rng,
                    )
                    .unwrap(),
                )
            })
        });
        let sealed = envelope::seal(
            "application/vnd.stamp.audit-chunk+cbor",
            &plaintext,
            fx.ca.as_ref(),
            &chain,
            &recipient,
            &[],
            &rng,
        )
        .unwrap();
        g.bench_function(format!("open_{name}"), |b| {
            b.iter(|| {
                let v = envelope::parse(&sealed, 8 << 20)
                    .unwrap()
                    .verify(SignatureAlgorithm::EcdsaP256Sha256, fx.ca.public_key(), &[])
                    .unwrap();
                black_box(v.open(&hq, b"plant-7").unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_csr,
    bench_device_cert,
    bench_log,
    bench_proofs,
    bench_envelope
);
criterion_main!(benches);
