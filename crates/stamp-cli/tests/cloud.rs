//! Issue #7 through the real binary: HQ's registry and cloud exports, the genuine-device verifier
//! against genuine, provisional, counterfeit, out-of-range, cloned, log-skipping and revoked
//! devices, tampered and rolled-back registries, and verification certificates checked by openssl.

use std::path::{Path, PathBuf};

use crate::common::*;
use stamp_keys::KeyStore;

pub struct World {
    pub c: Ceremony,
    pub registry: PathBuf,
    /// Reconciled devices' certificate files.
    pub registered: Vec<PathBuf>,
    /// Issued after the reconciled export.
    pub provisional: Vec<PathBuf>,
}

/// Issues `n` devices; returns their certificate files (keys are beside the CSRs).
pub fn issue(c: &Ceremony, name: &str, n: usize) -> Vec<PathBuf> {
    let dir = write_csr_dir(&c.tmp.path().join(name), n, true);
    let out = c.tmp.path().join(format!("{name}-out"));
    stamp(&c.pass)
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.1", "--csr", s(&dir)])
        .args(&["-o", s(&out)])
        .json();
    (0..n).map(|i| out.join(format!("d{i:04}.crt.pem"))).collect()
}

/// A ceremony, a grant of 20, 4 devices issued and reconciled, 2 more issued after, a registry.
pub fn world() -> World {
    let c = ceremony(true);
    let pkg = c.tmp.path().join("e.cose");
    stamp(&c.pass)
        .hq("entitle")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--product", "thermo-2"])
        .args(&["--quota", "20", "-o", s(&pkg)])
        .json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    let registered = issue(&c, "a", 4);
    let b1 = c.tmp.path().join("b1.bundle");
    stamp(&c.pass)
        .site("export-audit")
        .dir(&c.site)
        .args(&["-o", s(&b1)])
        .json();
    let r = stamp(&c.pass).hq("reconcile").dir(&c.hq).arg(&b1).json();
    assert_eq!(r["devices_recorded"], 4, "{r}");
    // The site's clock moves on before the next devices (notBefore has one-second resolution).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let provisional = issue(&c, "b", 2);
    let registry = c.tmp.path().join("registry.cose");
    let e = stamp(&c.pass)
        .hq("export")
        .dir(&c.hq)
        .args(&["--format", "registry", "-o", s(&registry)])
        .json();
    assert_eq!(e["registry"]["devices"], 4, "{e}");
    assert_eq!(e["registry"]["sequence"], 1, "{e}");
    World {
        c,
        registry,
        registered,
        provisional,
    }
}

/// `stamp cloud verify`, pinned to the ceremony's OEM root unless `extra` pins another or opts out.
pub fn verify(w: &World, registry: &Path, chain: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let root = w.c.root_fingerprint();
    let mut args = vec!["--json", "cloud", "verify", "--registry", s(registry)];
    if !extra.contains(&"--root-fingerprint") && !extra.contains(&"--trust-registry-root") {
        args.extend(["--root-fingerprint", root.as_str()]);
    }
    args.extend_from_slice(extra);
    args.push(s(chain));
    let o = stamp(&w.c.pass).args(&args).output();
    (
        o.status.code(),
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            serde_json::json!({"stdout": String::from_utf8_lossy(&o.stdout), "stderr": String::from_utf8_lossy(&o.stderr)})
        }),
    )
}

fn refused(w: &World, chain: &Path, reason: &str) -> serde_json::Value {
    let (code, v) = verify(w, &w.registry, chain, &[]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["genuine"], false, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    v
}

/// What a compromised site can do with its issuing CA key: sign device certificates that bypass
/// its service and its log.
pub struct RogueSite {
    ca_der: Vec<u8>,
    signer: Box<dyn stamp_core::key::Signer>,
    grant: stamp_core::entitlement::Grant,
}

impl RogueSite {
    pub fn open(c: &Ceremony) -> Self {
        let db = rusqlite::Connection::open(c.site.join("stamp-site.db")).unwrap();
        let key_ref: String = db
            .query_row(
                "SELECT key_ref FROM own_keys WHERE profile = 'site-issuing-ca'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let ca_der: Vec<u8> = db
            .query_row(
                "SELECT der FROM certificates WHERE profile = 'site-issuing-ca'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let signer = role_keys(c, &c.site)
            .open_signer(&stamp_keys::KeyRef::parse(&key_ref).unwrap())
            .unwrap();
        let hq = rusqlite::Connection::open(c.hq.join("stamp-hq.db")).unwrap();
        let json: String = hq
            .query_row(
                "SELECT state_json FROM entitlements WHERE entitlement_id = 'plant-7.1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let st: stamp_core::entitlement::GrantState = serde_json::from_str(&json).unwrap();
        RogueSite {
            ca_der,
            signer,
            grant: st.grant,
        }
    }

    /// A device-shaped certificate whose subject serialNumber is `serial_text` verbatim (as the
    /// site's template would write it, but any text), with a fresh key, valid from now.
    pub fn issue_serial_text(&self, dir: &Path, name: &str, serial_text: &str) -> PathBuf {
        struct Rcgen<'a>(&'a dyn stamp_core::key::Signer);
        impl rcgen::PublicKeyData for Rcgen<'_> {
            fn der_bytes(&self) -> &[u8] {
                self.0.public_key()
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                self.0.algorithm().rcgen()
            }
        }
        impl rcgen::SigningKey for Rcgen<'_> {
            fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
                self.0.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
            }
        }
        let g = &self.grant;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::OrganizationName,
            g.device_profile.organization.as_str(),
        );
        dn.push(rcgen::DnType::OrganizationalUnitName, g.product.oem_id.as_str());
        dn.push(rcgen::DnType::CommonName, g.product.product_id.as_str());
        dn.push(
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]),
            rcgen::DnValue::PrintableString(serial_text.try_into().unwrap()),
        );
        let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = dn;
        p.not_before = now;
        p.not_after = now + time::Duration::days(30);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42; 16]));
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = rcgen::KeyIdMethod::Sha256;
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&self.ca_der.clone().into(), Rcgen(self.signer.as_ref()))
                .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = p.signed_by(&key, &issuer).unwrap().der().to_vec();
        let path = dir.join(format!("{name}.crt.pem"));
        std::fs::write(&path, stamp_core::cert::to_pem(&der)).unwrap();
        std::fs::write(dir.join(format!("{name}.key.pem")), key.serialize_pem()).unwrap();
        path
    }

    /// A device certificate for `serial`, with a fresh key, valid from `not_before`.
    pub fn issue(&self, dir: &Path, name: &str, serial: u64, not_before: time::OffsetDateTime) -> PathBuf {
        self.issue_with_key(
            dir,
            name,
            serial,
            not_before,
            &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        )
    }

    /// [`RogueSite::issue`] for the given key.
    pub fn issue_with_key(
        &self,
        dir: &Path,
        name: &str,
        serial: u64,
        not_before: time::OffsetDateTime,
        key: &rcgen::KeyPair,
    ) -> PathBuf {
        let der = stamp_core::device::issue(
            &self.grant,
            serial,
            &rcgen::PublicKeyData::subject_public_key_info(key),
            not_before,
            stamp_core::profile::Serial::from_random([serial as u8 | 1; 16]),
            &stamp_core::profile::Issuer {
                cert_der: &self.ca_der,
                signer: self.signer.as_ref(),
            },
        )
        .unwrap();
        let p = dir.join(format!("{name}.crt.pem"));
        std::fs::write(&p, stamp_core::cert::to_pem(&der)).unwrap();
        std::fs::write(dir.join(format!("{name}.key.pem")), key.serialize_pem()).unwrap();
        p
    }
}

fn serial_of(cert: &Path) -> u64 {
    let pem = std::fs::read_to_string(cert).unwrap();
    let der = stamp_core::cert::from_pem(&pem, "CERTIFICATE").unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    let serial = c
        .subject()
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    serial
}

/// A counterfeiter's own CA and a device certificate under it; `subject_like` copies the site
/// issuing CA's subject so that only the signature tells them apart.
fn counterfeit(dir: &Path, name: &str, subject_like: Option<&Path>) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name = match subject_like {
        Some(p) => {
            let pem = std::fs::read_to_string(p).unwrap();
            let der = stamp_core::cert::from_pem(&pem, "CERTIFICATE").unwrap();
            let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
            let mut dn = rcgen::DistinguishedName::new();
            for a in c.subject().iter_attributes() {
                let oid: Vec<u64> = a.attr_type().iter().unwrap().collect();
                dn.push(rcgen::DnType::CustomDnType(oid), a.as_str().unwrap());
            }
            dn
        }
        None => {
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, "Totally Genuine CA");
            dn
        }
    };
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Acme Sensors");
    p.distinguished_name.push(rcgen::DnType::CommonName, "thermo-2");
    p.distinguished_name
        .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), "3");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = p.signed_by(&key, &issuer).unwrap();
    let path = dir.join(format!("{name}.crt.pem"));
    std::fs::write(&path, leaf.pem() + &ca_cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key.pem")), key.serialize_pem()).unwrap();
    path
}

#[test]
fn verifier_admits_genuine_and_refuses_each_kind_of_fake() {
    let t0 = std::time::Instant::now();
    let w = world();
    let dir = w.c.tmp.path().join("fakes");
    std::fs::create_dir_all(&dir).unwrap();

    // Genuine, reconciled: registered; the registry's root is printed and can be pinned.
    let root_fp = w.c.root_fingerprint();
    let (code, v) = verify(
        &w,
        &w.registry,
        &w.registered[0],
        &["--root-fingerprint", &root_fp],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["genuine"], true);
    assert_eq!(v["standing"], "registered", "{v}");
    assert_eq!(v["site_id"], "plant-7");
    assert_eq!(v["entitlement_id"], "plant-7.1");
    assert_eq!(v["registry"]["root_fingerprint"], root_fp.as_str(), "{v}");
    // The chain file as the site wrote it (device, then chain) works too.
    let chain = dir.join("full.pem");
    let chain_file = w.registered[1]
        .to_string_lossy()
        .replace(".crt.pem", ".chain.pem");
    std::fs::write(
        &chain,
        std::fs::read_to_string(&w.registered[1]).unwrap() + &std::fs::read_to_string(chain_file).unwrap(),
    )
    .unwrap();
    let (code, v) = verify(&w, &w.registry, &chain, &[]);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("registered")),
        "{v}"
    );

    // Issued by the site after its last reconciled export: provisional.
    let (code, v) = verify(&w, &w.registry, &w.provisional[0], &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["standing"], "provisional", "{v}");
    // ... for the registry's provisional period (30 days by default), not forever.
    let day = |d: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::days(d))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (code, v) = verify(&w, &w.registry, &w.provisional[0], &["--at", &day(29)]);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("provisional")),
        "{v}"
    );
    let (code, v) = verify(&w, &w.registry, &w.provisional[0], &["--at", &day(31)]);
    assert_eq!(
        (code, v["reason"].as_str()),
        (Some(1), Some("not-reconciled")),
        "{v}"
    );
    // Registered devices are not affected.
    let (code, v) = verify(&w, &w.registry, &w.registered[0], &["--at", &day(31)]);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("registered")),
        "{v}"
    );

    // Counterfeits: a rogue CA; a rogue CA with the site CA's very name.
    refused(&w, &counterfeit(&dir, "rogue", None), "unknown-issuer");
    let site_ca = w.c.site.join("..").join("hq/sites/plant-7/site-issuing-ca.pem");
    refused(
        &w,
        &counterfeit(&dir, "lookalike", Some(&site_ca)),
        "chain-invalid",
    );

    // A compromised site signing outside its service and log.
    let rogue = RogueSite::open(&w.c);
    let now = time::OffsetDateTime::now_utc();
    let hour_ago = now - time::Duration::hours(1);
    // Over-production with serials outside every range.
    let v = refused(
        &w,
        &rogue.issue(&dir, "over", 9_000_000, now),
        "serial-out-of-range",
    );
    assert_eq!(v["device_serial"], 9_000_000);
    // A clone: a registered device's serial with another key.
    let cloned = serial_of(&w.registered[2]);
    refused(&w, &rogue.issue(&dir, "clone", cloned, now), "clone");
    // In range, unused, above the reconciled serial frontier: provisional whatever notBefore
    // says (the site's clock decides nothing); the next registry decides (see
    // frontier_not_the_site_clock_decides_not_in_log).
    let last = serial_of(&w.provisional[1]);
    for (name, n, nb) in [
        ("slow-clock", last + 4, now - time::Duration::days(10)),
        ("hour-ago", last + 5, hour_ago),
    ] {
        let (code, v) = verify(&w, &w.registry, &rogue.issue(&dir, name, n, nb), &[]);
        assert_eq!(
            (code, v["standing"].as_str()),
            (Some(0), Some("provisional")),
            "{name}: {v}"
        );
    }
    // Post-dated (not valid yet) is refused by path validation.
    refused(
        &w,
        &rogue.issue(&dir, "future", last + 6, now + time::Duration::days(2)),
        "not-yet-valid",
    );
    // In range, after the last reconciled export, unused: provisional (the next registry decides).
    let (code, v) = verify(&w, &w.registry, &rogue.issue(&dir, "fresh", last + 7, now), &[]);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("provisional")),
        "{v}"
    );

    // Not a certificate at all.
    let junk = dir.join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    refused(&w, &junk, "malformed-chain");

    // Revocation: HQ revokes a registered device; the next registry refuses it.
    let revoked_serial = serial_of(&w.registered[3]).to_string();
    let r = stamp(&w.c.pass)
        .hq("revoke-device")
        .dir(&w.c.hq)
        .args(&["--serial", &revoked_serial])
        .args(&["--reason", "returned, key leaked"])
        .json();
    assert_eq!(r["revocations"], 1, "{r}");
    stamp(&w.c.pass)
        .hq("revoke-device")
        .dir(&w.c.hq)
        .args(&["--serial", &revoked_serial, "--reason", "again"])
        .fails_with("already-revoked");
    stamp(&w.c.pass)
        .hq("revoke-device")
        .dir(&w.c.hq)
        .args(&["--serial", "99999999", "--reason", "x"])
        .fails_with("unknown-revocation-target");
    let reg2 = w.c.tmp.path().join("registry2.cose");
    let e = stamp(&w.c.pass)
        .hq("export")
        .dir(&w.c.hq)
        .args(&["--format", "registry", "-o", s(&reg2)])
        .json();
    assert_eq!(e["registry"]["sequence"], 2, "{e}");
    assert_eq!(e["registry"]["revocations"], 1, "{e}");
    let (code, v) = verify(&w, &reg2, &w.registered[3], &[]);
    assert_eq!((code, v["reason"].as_str()), (Some(1), Some("revoked")), "{v}");
    let (code, _) = verify(&w, &reg2, &w.registered[0], &["--min-sequence", "2"]);
    assert_eq!(code, Some(0));
    // Rollback to the older registry is refused when the verifier knows of sequence 2.
    let (code, v) = verify(&w, &w.registry, &w.registered[3], &["--min-sequence", "2"]);
    assert_eq!(code, Some(1));
    assert!(v.to_string().contains("rollback"), "{v}");

    // A revoked site: all its devices.
    stamp(&w.c.pass)
        .hq("revoke-device")
        .dir(&w.c.hq)
        .args(&["--site", "plant-7", "--reason", "site compromised"])
        .json();
    let reg3 = w.c.tmp.path().join("registry3.cose");
    stamp(&w.c.pass)
        .hq("export")
        .dir(&w.c.hq)
        .args(&["--format", "registry", "-o", s(&reg3)])
        .json();
    let (code, v) = verify(&w, &reg3, &w.registered[0], &[]);
    assert_eq!(
        (code, v["reason"].as_str()),
        (Some(1), Some("site-revoked")),
        "{v}"
    );

    // Tampered registries: flipped bytes, truncation, trailing bytes; a wrong pinned root.
    let bytes = std::fs::read(&w.registry).unwrap();
    let n = bytes.len();
    let mut cases = Vec::new();
    for i in [5, n / 3, n / 2, n - 10] {
        let mut m = bytes.clone();
        m[i] ^= 0x01;
        cases.push(m);
    }
    cases.push(bytes[..n - 1].to_vec());
    let mut t = bytes.clone();
    t.push(0);
    cases.push(t);
    for (i, m) in cases.into_iter().enumerate() {
        let p = dir.join(format!("tampered{i}.cose"));
        std::fs::write(&p, m).unwrap();
        let (code, v) = verify(&w, &p, &w.registered[0], &[]);
        assert_eq!(code, Some(1), "tampered {i}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains("refused"),
            "tampered {i}: {v}"
        );
    }
    let (code, v) = verify(
        &w,
        &w.registry,
        &w.registered[0],
        &["--root-fingerprint", &"ab".repeat(32)],
    );
    assert_eq!(code, Some(1));
    assert!(v.to_string().contains("not the pinned root"), "{v}");
    eprintln!("verifier test: {:?}", t0.elapsed());
}

#[test]
fn exports_and_verification_certificates_check_with_independent_tools() {
    let w = world();
    let tmp = w.c.tmp.path();
    // AWS bulk registration: one JSON object per line per registered device, PEMs openssl reads.
    let bulk = tmp.join("bulk.jsonl");
    let r = stamp(&w.c.pass)
        .hq("export")
        .dir(&w.c.hq)
        .args(&["--format", "aws-bulk", "-o", s(&bulk)])
        .json();
    assert_eq!(r["lines"], 4, "{r}");
    let text = std::fs::read_to_string(&bulk).unwrap();
    let root = w.c.root_cert();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let serial = v["SerialNumber"].as_str().unwrap();
        assert_eq!(v["ThingName"], format!("thermo-2-{serial}"));
        let cert = tmp.join("bulk-cert.pem");
        let ca = tmp.join("bulk-ca.pem");
        std::fs::write(&cert, v["CertificatePem"].as_str().unwrap()).unwrap();
        std::fs::write(&ca, v["CACertificatePem"].as_str().unwrap()).unwrap();
        let o = openssl(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&root),
            "-untrusted",
            s(&ca),
            s(&cert),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // JITR and DPS material.
    for (format, key) in [("aws-jitr", "ca_certificates"), ("azure-dps", "certificates")] {
        let out = tmp.join(format!("{format}.json"));
        stamp(&w.c.pass)
            .hq("export")
            .dir(&w.c.hq)
            .args(&["--format", format, "-o", s(&out)])
            .json();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(v["format"], format!("stamp-{format}"));
        let cas = v[key].as_array().unwrap();
        assert_eq!(cas.len(), 1, "{v}");
        let ca = tmp.join("ca.pem");
        std::fs::write(&ca, cas[0]["certificate_pem"].as_str().unwrap()).unwrap();
        let o = openssl(&["verify", "-CAfile", s(&root), s(&ca)]);
        assert!(
            o.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if format == "azure-dps" {
            assert_eq!(
                v["enrollment_groups"][0]["attestation"]["x509"]["caReferences"]["primary"],
                cas[0]["name"]
            );
        }
    }
    // Verification certificates: the site proves its issuing CA, HQ proves the root.
    let code = "9f3c2a41d7e8b6a5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1";
    let site_ver = tmp.join("site-ver.pem");
    let r = stamp(&w.c.pass)
        .site("cloud-verification-cert")
        .dir(&w.c.site)
        .args(&["--code", code, "-o", s(&site_ver)])
        .json();
    assert_eq!(r["code"], code);
    let site_ca = w.c.hq.join("sites/plant-7/site-issuing-ca.pem");
    let o = openssl(&[
        "verify",
        "-CAfile",
        s(&root),
        "-untrusted",
        s(&site_ca),
        s(&site_ver),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Issued by the site CA itself (partial chain: the CA alone as trust anchor, as AWS checks).
    let o = openssl(&["verify", "-partial_chain", "-CAfile", s(&site_ca), s(&site_ver)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = openssl(&["x509", "-in", s(&site_ver), "-noout", "-subject"]);
    let subject = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        subject.contains(&format!("CN = {code}")) || subject.contains(&format!("CN={code}")),
        "{subject}"
    );
    let root_ver = tmp.join("root-ver.pem");
    stamp(&w.c.pass)
        .hq("cloud-verification-cert")
        .dir(&w.c.hq)
        .args(&["--ca", "root", "--code", "ABC123", "-o", s(&root_ver)])
        .json();
    let o = openssl(&["verify", "-CAfile", s(&root), s(&root_ver)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stamp(&w.c.pass)
        .hq("cloud-verification-cert")
        .dir(&w.c.hq)
        .args(&["--ca", "plant-7", "--code", "X", "-o", s(&root_ver)])
        .fails("stamp site cloud-verification-cert");
    stamp(&w.c.pass)
        .site("cloud-verification-cert")
        .dir(&w.c.site)
        .args(&[
            "--code",
            "bad code!",
            "-o",
            s(&w.c.tmp.path().join("bad-ver.pem")),
        ])
        .fails_with("verification-cert");
    // The verification certificate is no device: the verifier refuses it.
    let (code, v) = verify(&w, &w.registry, &site_ver, &[]);
    assert_eq!(code, Some(1), "{v}");
}

/// Kills the gateway when the test ends, passing or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn gateway_admits_genuine_refuses_counterfeit_and_flags_concurrent_use() {
    use std::io::BufRead;
    let w = world();
    let tmp = w.c.tmp.path();
    let ca = tmp.join("gateway.pem");
    let log = tmp.join("gateway.log");
    let mut child = stamp_bare()
        .arg("--json")
        .cloud("gateway")
        .args(&[
            "--registry",
            s(&w.registry),
            "--listen",
            "127.0.0.1:0",
            "--reload-secs",
            "1",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .args(&["--root-fingerprint", &w.c.root_fingerprint()])
        .args(&["--write-server-cert", s(&ca)])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let gw = Running(child);
    let mut first = String::new();
    std::io::BufReader::new(stdout).read_line(&mut first).unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    let addr = v["listening"].as_str().unwrap().to_owned();
    let v_ops = v["ops"].as_str().unwrap().to_owned();
    let port = addr.rsplit_once(':').unwrap().1;
    let server = format!("localhost:{port}");

    let connect = |dir: &Path, name: &str, key: &Path, extra: &[&str]| {
        let o = stamp(&w.c.pass)
            .arg("--json")
            .device("connect")
            .args(&["--stamp", s(dir), "--name", name, "--key-file", s(key)])
            .args(&["--gateway", &server, "--ca-file", s(&ca)])
            .args(extra)
            .output();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
        (o.status.code(), v)
    };
    let a_out = tmp.join("a-out");
    let a_keys = tmp.join("a.keys");
    // A genuine device, with the files `stamp site issue` wrote.
    let (code, v) = connect(&a_out, "d0000", &a_keys.join("d0000.key.pem"), &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["admitted"], true);
    assert_eq!(v["standing"], "registered", "{v}");
    assert!(v.get("flags").is_none(), "{v}");
    // A provisional one.
    let (code, v) = connect(
        &tmp.join("b-out"),
        "d0001",
        &tmp.join("b.keys/d0001.key.pem"),
        &[],
    );
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("provisional")),
        "{v}"
    );
    // A counterfeit under a rogue CA.
    let fakes = tmp.join("fakes");
    std::fs::create_dir_all(&fakes).unwrap();
    counterfeit(&fakes, "rogue", None);
    let (code, v) = connect(&fakes, "rogue", &fakes.join("rogue.key.pem"), &[]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["admitted"], false);
    assert_eq!(v["reason"], "unknown-issuer", "{v}");
    // The operations listener: health and metrics over plain HTTP, no client certificate.
    let ops_addr = v_ops.as_str();
    assert_eq!(
        crate::ops::http_get(ops_addr, "/healthz"),
        (200, "ok\n".to_owned())
    );
    let (status, metrics) = crate::ops::http_get(ops_addr, "/metrics");
    assert_eq!(status, 200);
    crate::ops::check_scrape(&metrics, "docs/cloud.md", "stamp_gateway_");
    let sample = |series: &str| crate::ops::sample(&metrics, series);
    assert_eq!(
        sample("stamp_gateway_admitted_total{standing=\"registered\"}"),
        1.0
    );
    assert_eq!(
        sample("stamp_gateway_admitted_total{standing=\"provisional\"}"),
        1.0
    );
    assert_eq!(
        sample("stamp_gateway_refused_total{reason=\"unknown-issuer\"}"),
        1.0
    );
    assert_eq!(sample("stamp_gateway_connections_open"), 0.0);
    // A clone made with the site CA key: refused with its reason.
    let rogue = RogueSite::open(&w.c);
    rogue.issue(
        &fakes,
        "clone",
        serial_of(&w.registered[1]),
        time::OffsetDateTime::now_utc(),
    );
    let (code, v) = connect(&fakes, "clone", &fakes.join("clone.key.pem"), &[]);
    assert_eq!((code, v["reason"].as_str()), (Some(1), Some("clone")), "{v}");
    // The same device twice at once: the second connection is flagged.
    let holder = stamp(&w.c.pass)
        .arg("--json")
        .device("connect")
        .args(&["--stamp", s(&a_out), "--name", "d0002"])
        .args(&[
            "--key-file",
            s(&a_keys.join("d0002.key.pem")),
            "--gateway",
            &server,
        ])
        .args(&["--ca-file", s(&ca), "--hold", "4"])
        .command()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, v) = connect(&a_out, "d0002", &a_keys.join("d0002.key.pem"), &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["flags"][0], "concurrent-use", "{v}");
    let held = holder.wait_with_output().unwrap();
    assert!(held.status.success());
    let first: serde_json::Value = serde_json::from_slice(&held.stdout).unwrap();
    assert!(first.get("flags").is_none(), "{first}");

    // The registry file changes while the gateway runs. A forged one is refused and the
    // registry in use stays; a newer one from HQ takes effect (a revocation) without a restart;
    // the older one written back is a rollback and changes nothing.
    let original = std::fs::read(&w.registry).unwrap();
    let mut forged = original.clone();
    let n = forged.len();
    forged[n / 2] ^= 0x01;
    std::fs::write(&w.registry, &forged).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (code, v) = connect(&a_out, "d0000", &a_keys.join("d0000.key.pem"), &[]);
    assert_eq!(code, Some(0), "{v}");
    let serial = serial_of(&a_out.join("d0000.crt.pem")).to_string();
    stamp(&w.c.pass)
        .hq("revoke-device")
        .dir(&w.c.hq)
        .args(&["--serial", &serial, "--reason", "stolen"])
        .json();
    // The new registry replaces the one the gateway reads (--force: an output is never
    // replaced without it).
    stamp(&w.c.pass)
        .hq("export")
        .dir(&w.c.hq)
        .args(&["--format", "registry", "-o", s(&w.registry), "--force"])
        .json();
    let mut refused = None;
    for _ in 0..50 {
        let (code, v) = connect(&a_out, "d0000", &a_keys.join("d0000.key.pem"), &[]);
        if code != Some(0) {
            refused = Some(v);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let v = refused.expect("the newer registry never took effect");
    assert_eq!(v["reason"], "revoked", "{v}");
    std::fs::write(&w.registry, &original).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (code, v) = connect(&a_out, "d0000", &a_keys.join("d0000.key.pem"), &[]);
    assert_eq!((code, v["reason"].as_str()), (Some(1), Some("revoked")), "{v}");
    let (_, metrics) = crate::ops::http_get(ops_addr, "/metrics");
    crate::ops::check_scrape(&metrics, "docs/cloud.md", "stamp_gateway_");
    let sample = |series: &str| crate::ops::sample(&metrics, series);
    assert_eq!(sample("stamp_gateway_refused_total{reason=\"clone\"}"), 1.0);
    assert_eq!(sample("stamp_gateway_refused_total{reason=\"revoked\"}"), 2.0);
    assert_eq!(sample("stamp_gateway_concurrent_use_total"), 1.0);
    assert_eq!(
        sample("stamp_gateway_registry_reloads_total{result=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        sample("stamp_gateway_registry_reloads_total{result=\"refused\"}"),
        2.0
    );
    assert!(sample("stamp_gateway_registry_sequence") >= 2.0);
    // SIGTERM with an admitted device connected: the gateway stops accepting, lets the open
    // connection end (within its grace period), exits 0 and says so on a line of its log.
    let holder = stamp(&w.c.pass)
        .arg("--json")
        .device("connect")
        .args(&["--stamp", s(&a_out), "--name", "d0002"])
        .args(&[
            "--key-file",
            s(&a_keys.join("d0002.key.pem")),
            "--gateway",
            &server,
        ])
        .args(&["--ca-file", s(&ca), "--hold", "3"])
        .command()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the gateway has admitted it (its metrics show the connection open).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while crate::ops::sample(
        &crate::ops::http_get(ops_addr, "/metrics").1,
        "stamp_gateway_connections_open",
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the holding device never connected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut gw = gw;
    let pid = gw.0.id().to_string();
    let signalled = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (code, v) = connect(&a_out, "d0002", &a_keys.join("d0002.key.pem"), &[]);
    assert_ne!(code, Some(0), "no new connection after SIGTERM: {v}");
    assert_eq!(
        gw.0.wait().unwrap().code(),
        Some(0),
        "SIGTERM stops the gateway with status 0"
    );
    assert!(
        signalled.elapsed() >= std::time::Duration::from_millis(500),
        "the gateway waited for the open connection"
    );
    let held = holder.wait_with_output().unwrap();
    assert!(
        held.status.success(),
        "the connection open at SIGTERM ended normally"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    // Text lines in a file: no terminal colours.
    assert!(!log.contains('\u{1b}'), "no ANSI codes in a log file: {log}");
    for m in [
        "cloud gateway listening",
        "stop signal received",
        "cloud gateway stopped",
    ] {
        assert!(log.contains(m), "the log says {m:?}: {log}");
    }
    assert!(log.contains("registry reloaded"), "{log}");
    assert_eq!(
        log.matches("was refused; the registry in use stays").count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("possible counterfeit") && log.contains("unknown-issuer"),
        "{log}"
    );
    assert!(log.contains("more than one connection"), "{log}");
}

fn openssl_ok(args: &[&str]) -> String {
    let o = openssl(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "openssl {args:?} failed: {text}");
    text
}

fn openssl_refuses(args: &[&str], needle: &str) {
    let o = openssl(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "openssl {args:?} accepted: {text}");
    assert!(
        text.contains(needle),
        "openssl {args:?}: expected {needle:?} in {text}"
    );
}

#[test]
fn crls_revoke_devices_at_the_site_and_sites_at_the_root_for_openssl() {
    let w = world();
    let c = &w.c;
    let t = c.tmp.path();
    let root = c.root_cert();
    let site_ca = PathBuf::from(c.enroll["site_issuing_ca_cert"].as_str().unwrap());
    let (lost, kept) = (&w.registered[0], &w.registered[1]);
    let verify_with = |crls: &[&Path], cert: &Path, all: bool| {
        let mut args = vec![
            "verify",
            if all { "-crl_check_all" } else { "-crl_check" },
            "-CAfile",
            s(&root),
            "-untrusted",
            s(&site_ca),
        ];
        for crl in crls {
            args.extend_from_slice(&["-CRLfile", s(crl)]);
        }
        args.push(s(cert));
        openssl(&args)
    };

    // Nothing revoked yet: an empty, valid CRL from each issuer, and both devices pass.
    let site_crl = t.join("site-1.crl");
    let r = stamp(&c.pass)
        .site("crl")
        .dir(&c.site)
        .args(&["-o", s(&site_crl)])
        .json();
    assert_eq!(
        (r["number"].as_u64(), r["revoked"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    let root_crl = t.join("root-1.crl");
    let r = stamp(&c.pass)
        .hq("crl")
        .dir(&c.hq)
        .args(&["-o", s(&root_crl)])
        .json();
    assert_eq!(
        (r["number"].as_u64(), r["revoked"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    openssl_ok(&[
        "crl",
        "-in",
        s(&site_crl),
        "-CAfile",
        s(&site_ca),
        "-verify",
        "-noout",
    ]);
    openssl_ok(&[
        "crl",
        "-in",
        s(&root_crl),
        "-CAfile",
        s(&root),
        "-verify",
        "-noout",
    ]);
    for cert in [lost, kept] {
        let o = verify_with(&[&site_crl, &root_crl], cert, true);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    // Bad requests change nothing: a certificate HQ never reconciled cannot be carried to the
    // site; a site revocation has no site update; CRL lifetimes are bounded.
    let before = (snapshot(&c.hq), snapshot(&c.site));
    let update = t.join("update.cose");
    stamp(&c.pass)
        .hq("revoke-device")
        .dir(&c.hq)
        .args(&["--cert-sha256", &"ab".repeat(32), "--reason", "x"])
        .args(&["--site-update", s(&update)])
        .fails_with("no-site-update");
    let o = stamp(&c.pass)
        .hq("revoke-device")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--reason", "x"])
        .args(&["--site-update", s(&update)])
        .output();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be used with"),
        "{o:?}"
    );
    stamp(&c.pass)
        .hq("crl")
        .dir(&c.hq)
        .args(&["--days", "0", "-o", s(&t.join("x.crl"))])
        .fails("1 to 366 days");
    stamp(&c.pass)
        .site("crl")
        .dir(&c.site)
        .args(&["--days", "400", "-o", s(&t.join("x.crl"))])
        .fails("1 to 366 days");
    assert_eq!((snapshot(&c.hq), snapshot(&c.site)), before);
    assert!(!update.exists() && !t.join("x.crl").exists());

    // HQ revokes one device; the update carries it to the site, whose next CRL lists it.
    let serial = serial_of(lost).to_string();
    let r = stamp(&c.pass)
        .hq("revoke-device")
        .dir(&c.hq)
        .args(&["--serial", &serial, "--reason", "stolen"])
        .args(&["--site-update", s(&update)])
        .json();
    assert!(r["site_update"]["sequence"].as_u64().is_some(), "{r}");
    stamp(&c.pass).site("import").dir(&c.site).arg(&update).json();
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    assert_eq!(
        st["entitlements"][0]["revoked_devices"],
        serde_json::json!([serial_of(lost)]),
        "{st}"
    );
    let site_crl = t.join("site-2.crl");
    let r = stamp(&c.pass)
        .site("crl")
        .dir(&c.site)
        .arg("--der")
        .args(&["-o", s(&site_crl)])
        .json();
    assert_eq!(
        (r["number"].as_u64(), r["revoked"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    let text = openssl_ok(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        s(&site_crl),
        "-CAfile",
        s(&site_ca),
        "-verify",
        "-noout",
        "-text",
    ]);
    assert!(text.contains("verify OK"), "{text}");
    let number = text
        .lines()
        .skip_while(|l| !l.contains("X509v3 CRL Number"))
        .nth(1);
    assert_eq!(number.map(str::trim), Some("2"), "{text}");
    let site_crl_pem = t.join("site-2.pem");
    openssl_ok(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        s(&site_crl),
        "-out",
        s(&site_crl_pem),
    ]);
    let o = verify_with(&[&site_crl_pem], lost, false);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("certificate revoked")
            || String::from_utf8_lossy(&o.stderr).contains("certificate revoked")
    );
    let o = verify_with(&[&site_crl_pem], kept, false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    openssl_refuses(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            s(&root),
            "-untrusted",
            s(&site_ca),
            "-CRLfile",
            s(&site_crl_pem),
            s(lost),
        ],
        "certificate revoked",
    );

    // The whole entitlement: every certificate of the grant (4 reconciled, 2 provisional).
    let update2 = t.join("update2.cose");
    stamp(&c.pass)
        .hq("revoke-device")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1", "--reason", "recall"])
        .args(&["--site-update", s(&update2)])
        .json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&update2).json();
    let site_crl = t.join("site-3.crl");
    let r = stamp(&c.pass)
        .site("crl")
        .dir(&c.site)
        .args(&["-o", s(&site_crl)])
        .json();
    assert_eq!(
        (r["number"].as_u64(), r["revoked"].as_u64()),
        (Some(3), Some(6)),
        "{r}"
    );
    for cert in w.registered.iter().chain(&w.provisional) {
        openssl_refuses(
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                s(&root),
                "-untrusted",
                s(&site_ca),
                "-CRLfile",
                s(&site_crl),
                s(cert),
            ],
            "certificate revoked",
        );
    }
    // A revoked grant issues nothing more.
    let refused = stamp(&c.pass)
        .arg("--json")
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.1"])
        .args(&["--csr", s(&write_csr_dir(&t.join("late"), 1, true))])
        .args(&["-o", s(&t.join("late-out"))])
        .output();
    let late: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(
        (late["issued"].as_u64(), late["refused"]["revoked"].as_u64()),
        (Some(0), Some(1)),
        "{late}"
    );

    // The site: the root's next CRL lists the certificates it issued to the site (identity
    // signing, identity key agreement, issuing CA), so the CA and every device under it fail.
    stamp(&c.pass)
        .hq("revoke-device")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--reason", "compromised"])
        .json();
    let root_crl = t.join("root-2.crl");
    let r = stamp(&c.pass)
        .hq("crl")
        .dir(&c.hq)
        .args(&["--days", "1", "-o", s(&root_crl)])
        .json();
    assert_eq!(
        (r["number"].as_u64(), r["revoked"].as_u64()),
        (Some(2), Some(3)),
        "{r}"
    );
    openssl_ok(&[
        "crl",
        "-in",
        s(&root_crl),
        "-CAfile",
        s(&root),
        "-verify",
        "-noout",
    ]);
    openssl_refuses(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            s(&root),
            "-CRLfile",
            s(&root_crl),
            s(&site_ca),
        ],
        "certificate revoked",
    );
    // An empty site CRL would pass the device itself; the root CRL refuses its CA.
    let empty_site_crl = t.join("site-1.crl");
    let o = verify_with(&[&empty_site_crl, &root_crl], kept, true);
    assert!(!o.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("certificate revoked"), "{text}");
    // A CRL checked against the wrong issuer fails.
    openssl_refuses(
        &[
            "crl",
            "-in",
            s(&root_crl),
            "-CAfile",
            s(&site_ca),
            "-verify",
            "-noout",
        ],
        "CRL issuer",
    );
}

/// A P-256 key in memory, for certificates the tests forge.
fn forge_key(name: &str) -> stamp_keys::soft::SoftSigner {
    stamp_keys::soft::SoftSigner::ephemeral(name, stamp_core::key::SignatureAlgorithm::EcdsaP256Sha256)
        .unwrap()
}

/// A role's key store (HQ or site directory), opened with the ceremony's passphrase.
fn role_keys(c: &Ceremony, dir: &Path) -> stamp_keys::Keys {
    stamp_keys::open_store(
        dir,
        stamp_keys::KeyConfig {
            new_keys: stamp_keys::StoreTarget::File,
            passphrase: stamp_keys::PassphraseSource::Obtain {
                file: Some(c.pass.clone()),
                creating: false,
            },
            pkcs11: Default::default(),
        },
    )
}

/// HQ's OEM root key and certificate, as someone holding them could use them.
fn hq_root(c: &Ceremony) -> (Vec<u8>, Box<dyn stamp_core::key::Signer>) {
    let db = rusqlite::Connection::open(c.hq.join("stamp-hq.db")).unwrap();
    let (key_ref, der): (String, Vec<u8>) = db
        .query_row(
            "SELECT key_ref, cert_der FROM own_keys WHERE profile = 'oem-root'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let signer = role_keys(c, &c.hq)
        .open_signer(&stamp_keys::KeyRef::parse(&key_ref).unwrap())
        .unwrap();
    (der, signer)
}

/// Issue #7's bad input not covered above: a station certificate (the site's CA, another role),
/// a device's own certificate and key used as a CA, an expired device certificate, and a site
/// issuing CA signed by the OEM root that HQ never enrolled.
#[test]
fn verifier_refuses_the_wrong_kind_of_certificate() {
    use stamp_core::key::Signer;
    use stamp_core::profile::{self, Holder, Profile, Serial, Validity};
    let w = world();
    let c = &w.c;
    let dir = c.tmp.path().join("wrong-kind");
    std::fs::create_dir_all(&dir).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let write = |name: &str, ders: &[&[u8]]| {
        let p = dir.join(format!("{name}.pem"));
        let pem: String = ders.iter().map(|d| stamp_core::cert::to_pem(d)).collect();
        std::fs::write(&p, pem).unwrap();
        p
    };
    let rogue = RogueSite::open(c);

    // A station certificate of the site: its CA is genuine, its extended key usage is a station's.
    let st = stamp(&c.pass)
        .site("add-station")
        .dir(&c.site)
        .args(&["--name", "line-1", "-o", s(&dir.join("st"))])
        .json();
    let station = PathBuf::from(st["certificate"].as_str().unwrap_or_else(|| panic!("{st}")));
    let v = refused(&w, &station, "profile-mismatch");
    assert!(v["detail"].as_str().unwrap().contains("serialNumber"), "{v}");

    // A genuine device's certificate and key used as a CA for another "device" (a thief with
    // one device's key minting more): the leaf's issuer is no site CA.
    let genuine_pem = std::fs::read_to_string(&w.registered[0]).unwrap();
    let genuine = stamp_core::cert::from_pem(&genuine_pem, "CERTIFICATE").unwrap();
    let device_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(c.tmp.path().join("a.keys/d0000.key.pem")).unwrap(),
    )
    .unwrap();
    let as_ca = rcgen::Issuer::from_ca_cert_der(&genuine.clone().into(), &device_key).unwrap();
    let minted_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Acme Sensors");
    p.distinguished_name.push(rcgen::DnType::CommonName, "thermo-2");
    p.distinguished_name
        .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), "11");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let minted = p.signed_by(&minted_key, &as_ca).unwrap();
    let minted = write("minted", &[minted.der(), &genuine]);
    refused(&w, &minted, "unknown-issuer");

    // Expired: a device certificate of the site whose validity ended.
    let old = now - time::Duration::days(i64::from(rogue.grant.device_profile.validity_days) + 2);
    let expired = rogue.issue(&dir, "expired", serial_of(&w.registered[2]) + 100, old);
    refused(&w, &expired, "expired");

    // A site issuing CA made with the OEM root's key but never enrolled at HQ.
    let (root_der, root_signer) = hq_root(c);
    let ca_key = forge_key("unenrolled-ca");
    let ca_der = profile::issue(
        Profile::SiteIssuingCa,
        "Acme Sensors",
        &Holder::Site(stamp_core::SiteId::new("plant-9").unwrap()),
        &stamp_core::cert::subject_key(ca_key.algorithm().rcgen(), ca_key.public_key()),
        Validity::starting(now - time::Duration::minutes(5), time::Duration::days(365)),
        Serial::from_random([3; 16]),
        &profile::Issuer {
            cert_der: &root_der,
            signer: root_signer.as_ref(),
        },
    )
    .unwrap();
    let dev_key = forge_key("unenrolled-device");
    let dev = stamp_core::device::issue(
        &rogue.grant,
        serial_of(&w.registered[3]),
        &dev_key.spki_der(),
        now - time::Duration::minutes(1),
        Serial::from_random([4; 16]),
        &profile::Issuer {
            cert_der: &ca_der,
            signer: &ca_key,
        },
    )
    .unwrap();
    let unenrolled = write("unenrolled", &[&dev, &ca_der]);
    let v = refused(&w, &unenrolled, "unknown-issuer");
    assert!(v["detail"].as_str().unwrap().contains("plant-9"), "{v}");
}

/// `stamp hq export --format registry` to `out`; returns the report.
fn export_registry(w: &World, out: &Path) -> serde_json::Value {
    stamp(&w.c.pass)
        .hq("export")
        .dir(&w.c.hq)
        .args(&["--format", "registry", "-o", s(out)])
        .json()["registry"]
        .clone()
}

/// Exports the site's audit log and reconciles it at HQ; returns the report.
fn reconcile(w: &World, name: &str) -> serde_json::Value {
    let b = w.c.tmp.path().join(format!("{name}.bundle"));
    stamp(&w.c.pass)
        .site("export-audit")
        .dir(&w.c.site)
        .args(&["-o", s(&b)])
        .json();
    stamp(&w.c.pass).hq("reconcile").dir(&w.c.hq).arg(&b).json()
}

/// Class 2 of issue 13: coverage comes from the reconciled serial frontier, not the site's clock.
/// A site owner mints a counterfeit with the site's CA key outside the engine, makes the engine
/// skip its serial (so the log never holds it) and dates it after the last reconciled export:
/// once HQ reconciles a later serial, the counterfeit is `not-in-log`, whatever its notBefore.
#[test]
fn frontier_not_the_site_clock_decides_not_in_log() {
    let w = world();
    let dir = w.c.tmp.path().join("frontier");
    std::fs::create_dir_all(&dir).unwrap();
    let rogue = RogueSite::open(&w.c);
    // The highest serial issued: `site issue` issues a batch on several threads, so the order of
    // the files is not the order of the serials.
    let last = w.provisional.iter().map(|p| serial_of(p)).max().unwrap();
    let skipped = last + 1;
    let now = time::OffsetDateTime::now_utc();
    // Dated now (after the reconciled export) and ten days back (a slow clock).
    let fake_now = rogue.issue(&dir, "fake-now", skipped, now);
    let fake_slow = rogue.issue(&dir, "fake-slow", skipped, now - time::Duration::days(10));
    // Above the frontier HQ knows (the 4 reconciled devices), it is provisional for now.
    for f in [&fake_now, &fake_slow] {
        let (code, v) = verify(&w, &w.registry, f, &[]);
        assert_eq!(
            (code, v["standing"].as_str()),
            (Some(0), Some("provisional")),
            "{v}"
        );
    }
    // The site owner makes the engine skip the serial: a row in the site's device table the log
    // never got.
    let db = rusqlite::Connection::open(w.c.site.join("stamp-site.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute(
        "INSERT INTO devices (device_serial, entitlement_id, cert_sha256, spki_sha256, certificate, issued_ms, station, log_index)
         VALUES (?1, 'plant-7.1', x'00', x'01', x'00', 0, 'rogue', 0)",
        [skipped as i64],
    )
    .unwrap();
    drop(db);
    // The site goes on issuing honestly; HQ reconciles; the frontier passes the skipped serial.
    let after = issue(&w.c, "c", 1);
    assert_eq!(serial_of(&after[0]), skipped + 1, "the engine skipped {skipped}");
    let r = reconcile(&w, "b2");
    assert_eq!(r["devices_recorded"], 3, "{r}");
    let reg2 = w.c.tmp.path().join("registry-frontier.cose");
    let e = export_registry(&w, &reg2);
    assert_eq!(e["devices"], 7, "{e}");
    for f in [&fake_now, &fake_slow] {
        let (code, v) = verify(&w, &reg2, f, &[]);
        assert_eq!((code, v["reason"].as_str()), (Some(1), Some("not-in-log")), "{v}");
        assert_eq!(v["device_serial"], skipped, "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("at or below {}", skipped + 1)),
            "{v}"
        );
    }
    // The honest devices: registered; a fresh serial above the frontier: provisional.
    for d in w.registered.iter().chain(&w.provisional).chain(&after) {
        let (code, v) = verify(&w, &reg2, d, &[]);
        assert_eq!(
            (code, v["standing"].as_str()),
            (Some(0), Some("registered")),
            "{v}"
        );
    }
    let fresh = rogue.issue(&dir, "fresh", skipped + 3, now);
    let (code, v) = verify(&w, &reg2, &fresh, &[]);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("provisional")),
        "{v}"
    );
}

/// Class 3 of issue 13: provisional admission only under an active entitlement.
#[test]
fn a_suspended_entitlement_admits_no_provisional_device() {
    let w = world();
    let pkg = w.c.tmp.path().join("suspend.cose");
    stamp(&w.c.pass)
        .hq("amend")
        .dir(&w.c.hq)
        .args(&["--entitlement", "plant-7.1"])
        .arg("--suspend")
        .args(&["-o", s(&pkg)])
        .json();
    let reg2 = w.c.tmp.path().join("registry-suspended.cose");
    export_registry(&w, &reg2);
    let (code, v) = verify(&w, &reg2, &w.provisional[0], &[]);
    assert_eq!(
        (code, v["reason"].as_str()),
        (Some(1), Some("entitlement-suspended")),
        "{v}"
    );
    // What HQ reconciled stays genuine.
    let (code, v) = verify(&w, &reg2, &w.registered[0], &[]);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("registered")),
        "{v}"
    );
}

/// Class 6 of issue 13: a subject serialNumber that is not canonical decimal is no serial.
#[test]
fn verifier_refuses_non_canonical_serials() {
    let w = world();
    let dir = w.c.tmp.path().join("canonical");
    std::fs::create_dir_all(&dir).unwrap();
    let rogue = RogueSite::open(&w.c);
    let n = serial_of(&w.provisional[1]) + 3;
    // The control: the same certificate with the serial written canonically is provisional.
    let good = rogue.issue_serial_text(&dir, "good", &n.to_string());
    let (code, v) = verify(&w, &w.registry, &good, &[]);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("provisional")),
        "{v}"
    );
    let registered = serial_of(&w.registered[0]);
    for (i, text) in [
        format!("+{n}"),
        format!("0{n}"),
        format!(" {n}"),
        format!("{n} "),
        String::new(),
        "18446744073709551616".to_owned(),
        format!("+{registered}"),
    ]
    .iter()
    .enumerate()
    {
        let f = rogue.issue_serial_text(&dir, &format!("bad{i}"), text);
        let (code, v) = verify(&w, &w.registry, &f, &[]);
        assert_eq!(
            (code, v["reason"].as_str()),
            (Some(1), Some("profile-mismatch")),
            "{text:?}: {v}"
        );
        assert!(v["detail"].as_str().unwrap().contains("canonical decimal"), "{v}");
    }
}

/// Class 7 of issue 13: the verifier and the gateway pin the OEM root by default.
#[test]
fn verifier_and_gateway_refuse_to_run_without_a_pinned_root() {
    let w = world();
    let o = stamp(&w.c.pass)
        .cloud("verify")
        .args(&["--registry", s(&w.registry), s(&w.registered[0])])
        .output();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no OEM root pinned") && err.contains("--root-fingerprint"),
        "{err}"
    );
    // The explicit opt-out runs, loudly.
    let o = stamp(&w.c.pass)
        .arg("--json")
        .cloud("verify")
        .arg("--trust-registry-root")
        .args(&["--registry", s(&w.registry), s(&w.registered[0])])
        .output();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("WARNING: --trust-registry-root"));
    // Both at once make no sense.
    let root = w.c.root_fingerprint();
    let o = stamp(&w.c.pass)
        .cloud("verify")
        .arg("--trust-registry-root")
        .args(&["--root-fingerprint", &root])
        .args(&["--registry", s(&w.registry), s(&w.registered[0])])
        .output();
    assert!(!o.status.success());
    // The gateway refuses to start unpinned.
    let o = stamp(&w.c.pass)
        .cloud("gateway")
        .args(&["--registry", s(&w.registry), "--listen", "127.0.0.1:0"])
        .output();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no OEM root pinned"));
}

/// A gateway process, its address and the certificate devices trust.
struct Gw {
    _running: Running,
    server: String,
    ca: PathBuf,
}

/// Starts `stamp cloud gateway` on `registry` with the state file `state`; `Err` with its
/// standard error if it exits instead of listening.
fn start_gateway(w: &World, registry: &Path, state: &Path, name: &str) -> Result<Gw, String> {
    use std::io::BufRead;
    let tmp = w.c.tmp.path();
    let ca = tmp.join(format!("{name}.pem"));
    let log = tmp.join(format!("{name}.log"));
    let mut child = stamp_bare()
        .arg("--json")
        .cloud("gateway")
        .args(&[
            "--registry",
            s(registry),
            "--listen",
            "127.0.0.1:0",
            "--reload-secs",
            "1",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .args(&["--root-fingerprint", &w.c.root_fingerprint()])
        .args(&["--state", s(state), "--write-server-cert", s(&ca)])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut first = String::new();
    std::io::BufReader::new(stdout).read_line(&mut first).unwrap();
    let listening = serde_json::from_str::<serde_json::Value>(&first)
        .ok()
        .and_then(|v| v["listening"].as_str().map(str::to_owned));
    let Some(listening) = listening else {
        drop(running);
        return Err(first + &std::fs::read_to_string(&log).unwrap());
    };
    let port = listening.rsplit_once(':').unwrap().1.to_owned();
    Ok(Gw {
        _running: running,
        server: format!("localhost:{port}"),
        ca,
    })
}

/// `stamp device connect` with the stamp `name` in `dir` (its key `key`).
fn connect(w: &World, gw: &Gw, cert: &Path, key: &Path) -> (Option<i32>, serde_json::Value) {
    let dir = cert.parent().unwrap();
    let name = cert
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".crt.pem");
    let o = stamp(&w.c.pass)
        .arg("--json")
        .device("connect")
        .args(&["--stamp", s(dir), "--name", name, "--key-file", s(key)])
        .args(&["--gateway", &gw.server, "--ca-file", s(&gw.ca)])
        .output();
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code(), v)
}

/// Classes 3 and 7 of issue 13 at the gateway: one public key per provisional serial, kept in the
/// state file across restarts (twenty certificates sharing one unused serial: the first key holds
/// it, every other is refused as `clone` and logged); the binding goes once HQ registers the
/// serial; a restart on an older registry file is a rollback.
#[test]
fn gateway_holds_one_key_per_provisional_serial_and_refuses_rollback() {
    let w = world();
    let tmp = w.c.tmp.path();
    let dir = tmp.join("clones");
    std::fs::create_dir_all(&dir).unwrap();
    let state = tmp.join("gw-state.db");
    let rogue = RogueSite::open(&w.c);
    let unused = serial_of(&w.provisional[1]) + 3;
    let now = time::OffsetDateTime::now_utc();
    let fakes: Vec<PathBuf> = (0..20)
        .map(|i| rogue.issue(&dir, &format!("f{i:02}"), unused, now))
        .collect();
    let key_of = |c: &Path| PathBuf::from(c.to_string_lossy().replace(".crt.pem", ".key.pem"));
    // The registry alone calls each of them provisional.
    let (code, v) = verify(&w, &w.registry, &fakes[7], &[]);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("provisional")),
        "{v}"
    );

    let gw = start_gateway(&w, &w.registry, &state, "gw1").unwrap();
    let (code, v) = connect(&w, &gw, &fakes[0], &key_of(&fakes[0]));
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("provisional")),
        "{v}"
    );
    // The first key again: still admitted.
    let (code, _) = connect(&w, &gw, &fakes[0], &key_of(&fakes[0]));
    assert_eq!(code, Some(0));
    for f in &fakes[1..] {
        let (code, v) = connect(&w, &gw, f, &key_of(f));
        assert_eq!((code, v["reason"].as_str()), (Some(1), Some("clone")), "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("held by another public key"),
            "{v}"
        );
    }
    // The honest provisional device (its own serial) is admitted beside them.
    let honest = &w.provisional[0];
    let honest_key = tmp.join("b.keys/d0000.key.pem");
    let (code, v) = connect(&w, &gw, honest, &honest_key);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("provisional")),
        "{v}"
    );
    drop(gw);

    // Restarted on the same state file: the binding holds.
    let gw = start_gateway(&w, &w.registry, &state, "gw2").unwrap();
    let (code, v) = connect(&w, &gw, &fakes[5], &key_of(&fakes[5]));
    assert_eq!((code, v["reason"].as_str()), (Some(1), Some("clone")), "{v}");
    let (code, _) = connect(&w, &gw, &fakes[0], &key_of(&fakes[0]));
    assert_eq!(code, Some(0));
    drop(gw);
    let log = std::fs::read_to_string(tmp.join("gw1.log")).unwrap();
    assert_eq!(log.matches("clone of a provisional serial").count(), 19, "{log}");

    // HQ reconciles the honest device: registered; its binding goes with the newer registry.
    let r = reconcile(&w, "b2");
    assert_eq!(r["devices_recorded"], 2, "{r}");
    let reg2 = tmp.join("registry2.cose");
    assert_eq!(export_registry(&w, &reg2)["sequence"], 2);
    let gw = start_gateway(&w, &reg2, &state, "gw3").unwrap();
    let (code, v) = connect(&w, &gw, honest, &honest_key);
    assert_eq!(
        (code, v["standing"].as_str()),
        (Some(0), Some("registered")),
        "{v}"
    );
    drop(gw);
    let db = rusqlite::Connection::open(&state).unwrap();
    let bound: Vec<i64> = db
        .prepare("SELECT device_serial FROM provisional_bindings ORDER BY device_serial")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        bound,
        vec![unused as i64],
        "only the unregistered serial stays bound"
    );
    drop(db);

    // A restart on the older registry file is a rollback: the gateway refuses to start.
    let err = start_gateway(&w, &w.registry, &state, "gw4")
        .err()
        .expect("started on an older registry");
    assert!(
        err.contains("rollback") && err.contains("sequence 1") && err.contains("2"),
        "{err}"
    );
}
