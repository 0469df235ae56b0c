//! Writes the seed corpora, `fuzz/corpus/<target>/`, from real artifacts made with the fixture's
//! keys: `cargo run -p stamp-fuzz --bin make-seeds [DIR]` (default: the repository's
//! `fuzz/corpus`). Every seed is made by the same stamp-core functions stamp itself uses, so the
//! signed ones verify in the targets. Sealing draws fresh randomness, so envelopes differ from
//! run to run; everything else is the same every time.

#![allow(clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};

use serde_bytes::ByteBuf;
use stamp_core::audit::{self, BundleChunk, BundleHeader, DeviceRecord, Entry, Event, RefusalReason};
use stamp_core::ceremony::{self, SiteCredentials, SiteRequest};
use stamp_core::checkpoint::{self, Checkpoint};
use stamp_core::entitlement::{self, Action, Amend, DeviceRevocation, Entitlement, SerialRange, Status};
use stamp_core::firmware::{esp32, mcuboot, Version};
use stamp_core::registry::{self, RegisteredDevice, Registry, RegistryEntitlement, RegistrySite};
use stamp_core::{cert, csr, fingerprint};
use stamp_fuzz::{fixture, seal_to_hq, seal_to_site, seed_grant, ENTITLEMENT_CONTENT_TYPE, TARGETS};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    assert!(
        TARGETS.iter().any(|(t, _)| *t == target),
        "unknown target {target}"
    );
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus directory");
    std::fs::write(d.join(name), bytes).expect("seed file");
}

fn entitlements() -> (Entitlement, Entitlement) {
    let fx = fixture::get();
    let grant = Entitlement {
        version: entitlement::VERSION,
        site_id: fx.site.clone(),
        sequence: 1,
        issued_at: fixture::NOW.unix_timestamp() - 3600,
        action: Action::Grant(seed_grant()),
    };
    let amend = Entitlement {
        version: entitlement::VERSION,
        site_id: fx.site.clone(),
        sequence: 2,
        issued_at: fixture::NOW.unix_timestamp() - 60,
        action: Action::Amend(Amend {
            entitlement_id: seed_grant().entitlement_id,
            add_quota: 10,
            add_serial_ranges: vec![SerialRange {
                first: 2000,
                last: 2009,
            }],
            not_before: None,
            not_after: Some(fixture::NOW.unix_timestamp() + 86_400 * 60),
            status: Some(Status::Active),
            revoke: Some(DeviceRevocation {
                revoked_at: fixture::NOW.unix_timestamp() - 30,
                device_serials: vec![1000, 1001],
                all: false,
            }),
        }),
    };
    grant.validate().expect("seed grant is valid");
    amend.validate().expect("seed amendment is valid");
    (grant, amend)
}

fn device_record(serial: u64) -> DeviceRecord {
    let fx = fixture::get();
    DeviceRecord {
        entitlement_id: seed_grant().entitlement_id,
        device_serial: serial,
        certificate: ByteBuf::from(fx.site_issuing_der.clone()),
        certificate_sha256: ByteBuf::from(fingerprint::sha256(&fx.site_issuing_der).to_vec()),
        public_key_sha256: ByteBuf::from(vec![0x5a; 32]),
        station: "line-1".to_owned(),
        hq_key_index: None,
        possession_proof: None,
    }
}

fn entries() -> Vec<Entry> {
    let t = fixture::NOW.unix_timestamp() * 1000;
    vec![
        Entry {
            index: 0,
            time_ms: t,
            event: Event::EntitlementApplied {
                entitlement_id: seed_grant().entitlement_id,
                sequence: 1,
                action: "grant".to_owned(),
                package_sha256: ByteBuf::from(vec![1; 32]),
            },
        },
        Entry {
            index: 1,
            time_ms: t + 1,
            event: Event::StationAdded {
                station: "line-1".to_owned(),
                certificate_sha256: ByteBuf::from(vec![2; 32]),
            },
        },
        Entry {
            index: 2,
            time_ms: t + 2,
            event: Event::DeviceIssued(device_record(1000)),
        },
        Entry {
            index: 3,
            time_ms: t + 3,
            event: Event::RequestRefused {
                entitlement_id: Some(seed_grant().entitlement_id),
                station: "line-1".to_owned(),
                reason: RefusalReason::KeyTypeNotAllowed,
                public_key_sha256: Some(ByteBuf::from(vec![3; 32])),
            },
        },
        Entry {
            index: 4,
            time_ms: t + 4,
            event: Event::DeviceRenewed(DeviceRecord {
                possession_proof: Some(ByteBuf::from(vec![4; 64])),
                ..device_record(1000)
            }),
        },
    ]
}

fn bundle(dir: &Path) {
    let fx = fixture::get();
    let entries = entries();
    let leaves: Vec<Vec<u8>> = entries.iter().map(Entry::to_cbor).collect();
    let cp = Checkpoint {
        origin: fixture::CHECKPOINT_KEY.to_owned(),
        size: leaves.len() as u64,
        root: [7; 32],
        extensions: Vec::new(),
    };
    let header = BundleHeader {
        version: audit::VERSION,
        site_id: fx.site.clone(),
        bundle_id: ByteBuf::from(vec![9; 16]),
        created_at_ms: fixture::NOW.unix_timestamp() * 1000,
        previous: None,
        checkpoint: checkpoint::sign(&cp, fixture::CHECKPOINT_KEY, &fx.site_identity).expect("checkpoint"),
        consistency_proof: Vec::new(),
        first_index: 0,
        entry_count: leaves.len() as u64,
        chunk_count: 1,
    };
    let chunk = BundleChunk {
        bundle_id: header.bundle_id.clone(),
        chunk: 0,
        first_index: 0,
        entries: leaves.into_iter().map(ByteBuf::from).collect(),
    };
    let (h, c) = (header.to_cbor(), chunk.to_cbor());
    let mut sealed = Vec::new();
    for (ct, plain) in [(audit::HEADER_CONTENT_TYPE, &h), (audit::CHUNK_CONTENT_TYPE, &c)] {
        let env = seal_to_hq(ct, plain).expect("sealed frame");
        audit::write_frame(&mut sealed, &env).expect("frame");
    }
    write(dir, "audit_bundle", "sealed", &sealed);
    let mut plain = Vec::new();
    audit::write_frame(&mut plain, &h).expect("frame");
    audit::write_frame(&mut plain, &c).expect("frame");
    write(dir, "audit_bundle", "plaintext", &plain);
}

fn registry_file() -> Registry {
    let fx = fixture::get();
    let g = seed_grant();
    Registry {
        format: registry::FORMAT.to_owned(),
        version: registry::VERSION,
        sequence: 3,
        issued_at: fixture::NOW.unix_timestamp() - 10,
        org: fixture::ORG.to_owned(),
        root: ByteBuf::from(fx.root_der.clone()),
        sites: vec![RegistrySite {
            site_id: fixture::SITE.to_owned(),
            issuing_ca: ByteBuf::from(fx.site_issuing_der.clone()),
            log_size: 5,
        }],
        entitlements: vec![RegistryEntitlement {
            entitlement_id: g.entitlement_id,
            site_id: fixture::SITE.to_owned(),
            product: g.product,
            device_profile: g.device_profile,
            serial_ranges: g.serial_ranges,
            status: Status::Active,
            serial_frontier: Some(1001),
        }],
        devices: vec![
            RegisteredDevice(1000, ByteBuf::from(vec![0x5a; 32])),
            RegisteredDevice(1001, ByteBuf::from(vec![0x5b; 32])),
        ],
        superseded: Vec::new(),
        revocations: vec![registry::Revocation {
            device_serial: Some(1001),
            reason: "key-compromise".to_owned(),
            revoked_at: fixture::NOW.unix_timestamp() - 5,
            ..Default::default()
        }],
        provisional_days: 7,
    }
}

fn http(method: &str, path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: site.fuzz\r\n").into_bytes();
    if !body.is_empty() {
        r.extend_from_slice(
            format!(
                "content-type: {content_type}\r\ncontent-length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// Requests a station sends to the site service: the JSON API, EST, health.
fn service(dir: &Path) {
    use base64::Engine as _;
    let fx = fixture::get();
    let der = csr::create(&fx.site_issuing, "device 1").expect("csr");
    let pem = ceremony::pem("CERTIFICATE REQUEST", &der);
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let provision = http(
        "POST",
        "/api/v1/provision",
        "application/json",
        &json(serde_json::json!({ "csr": pem })),
    );
    write(dir, "service", "provision", &provision);
    write(
        dir,
        "service",
        "renew",
        &http(
            "POST",
            "/api/v1/renew",
            "application/json",
            &json(serde_json::json!({ "csr": pem, "proof": "AAAA" })),
        ),
    );
    write(
        dir,
        "service",
        "hand-out",
        &http("POST", "/api/v1/hand-out", "application/json", b"{}"),
    );
    write(
        dir,
        "service",
        "est-enroll",
        &http(
            "POST",
            "/.well-known/est/plant-7.1/simpleenroll",
            "application/pkcs10",
            b64.as_bytes(),
        ),
    );
    write(
        dir,
        "service",
        "est-reenroll",
        &http(
            "POST",
            "/.well-known/est/simplereenroll",
            "application/pkcs10",
            b64.as_bytes(),
        ),
    );
    let mut gets = Vec::new();
    for path in [
        "/healthz",
        "/api/v1/status",
        "/.well-known/est/cacerts",
        "/.well-known/est/plant-7.1/csrattrs",
        "/metrics",
    ] {
        gets.extend_from_slice(&http("GET", path, "", b""));
    }
    write(dir, "service", "gets", &gets);
}

fn main() {
    let dir = std::env::args().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus"),
        PathBuf::from,
    );
    let fx = fixture::get();

    let (grant, amend) = entitlements();
    write(&dir, "entitlement", "grant", &grant.to_cbor());
    write(&dir, "entitlement", "amend", &amend.to_cbor());
    for (name, e) in [("grant", &grant), ("amend", &amend)] {
        let sealed = seal_to_site(ENTITLEMENT_CONTENT_TYPE, &e.to_cbor()).expect("sealed entitlement");
        write(&dir, "envelope", name, &sealed);
    }

    let cp = Checkpoint {
        origin: fixture::CHECKPOINT_KEY.to_owned(),
        size: 5,
        root: [7; 32],
        extensions: vec!["fuzz extension".to_owned()],
    };
    let note = checkpoint::sign(&cp, fixture::CHECKPOINT_KEY, &fx.site_identity).expect("checkpoint");
    write(&dir, "checkpoint", "signed", note.as_bytes());
    write(
        &dir,
        "checkpoint",
        "body",
        cp.to_note_body().expect("body").as_bytes(),
    );

    write(
        &dir,
        "csr",
        "p256",
        &csr::create(&fx.site_issuing, "device 1").expect("csr"),
    );
    write(
        &dir,
        "csr",
        "ed25519",
        &csr::create(&fx.site_identity, "device 2").expect("csr"),
    );

    let request = SiteRequest::build(
        &fx.site,
        &fx.site_identity,
        &fx.site_key_agreement,
        &fx.site_issuing,
    )
    .expect("request");
    let verified = request.verify().expect("request verifies");
    write(&dir, "site_request", "request.json", &request.to_json());
    let pem = cert::to_pem;
    let creds = SiteCredentials {
        format: ceremony::CREDENTIALS_FORMAT.to_owned(),
        version: 1,
        site_id: fx.site.clone(),
        request_fingerprint: verified.short_fingerprint(),
        oem_root: pem(&fx.root_der),
        hq_authority_signing: pem(&fx.hq_signing_der),
        hq_authority_key_agreement: pem(&fx.hq_key_agreement_der),
        site_identity_signing: pem(&fx.site_identity_der),
        site_identity_key_agreement: pem(&fx.site_key_agreement_der),
        site_issuing_ca: pem(&fx.site_issuing_der),
    };
    write(&dir, "site_credentials", "credentials.json", &creds.to_json());

    bundle(&dir);
    for e in entries() {
        write(&dir, "audit_entry", &format!("entry-{}", e.index), &e.to_cbor());
    }

    let reg = registry::sign(&registry_file(), &fx.hq_signing, &fx.hq_signing_der).expect("registry");
    write(&dir, "registry", "signed", &reg);
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&registry_file(), &mut payload).expect("payload");
    write(&dir, "registry", "payload", &payload);

    let firmware: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
    let opts = mcuboot::Options {
        version: Version {
            major: 1,
            minor: 2,
            revision: 3,
            build: 4,
        },
        security_counter: Some(7),
        ..Default::default()
    };
    let img = mcuboot::sign(&firmware, &opts, &fx.hq_signing).expect("mcuboot image");
    write(&dir, "mcuboot", "ed25519", &img.bytes);
    let img =
        mcuboot::sign(&firmware, &mcuboot::Options::default(), &fx.site_issuing).expect("mcuboot image");
    write(&dir, "mcuboot", "p256", &img.bytes);
    let img = esp32::sign(&firmware, &fx.site_issuing).expect("esp32 image");
    write(&dir, "esp32", "p256", &img.bytes);

    for (name, uri) in [
        ("key", "pkcs11:token=stamp-hq;object=oem-root"),
        (
            "full",
            "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=a1b2;token=site;object=site-issuing-ca;type=private",
        ),
        ("token", "pkcs11:token=stamp-site"),
        ("file", "file:keys/oem-root.key"),
    ] {
        write(&dir, "pkcs11_uri", name, uri.as_bytes());
    }
    service(&dir);
    println!("seeds written to {}", dir.display());
}
