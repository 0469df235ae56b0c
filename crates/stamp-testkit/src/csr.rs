//! Certificate signing requests for fresh device keys, made with rcgen.

use std::path::{Path, PathBuf};

/// A DER CSR (empty subject) for a fresh key of `alg`.
pub fn csr_der(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    rcgen::CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

/// A DER CSR with subject CN=device for a fresh key of `alg`, after `tweak` adjusts its
/// parameters (requested SANs, extensions).
pub fn csr_der_with(
    alg: &'static rcgen::SignatureAlgorithm,
    tweak: impl FnOnce(&mut rcgen::CertificateParams),
) -> Vec<u8> {
    csr_der_for(&rcgen::KeyPair::generate_for(alg).unwrap(), tweak)
}

/// A DER CSR with subject CN=device for `key`, after `tweak` adjusts its parameters.
pub fn csr_der_for(key: &rcgen::KeyPair, tweak: impl FnOnce(&mut rcgen::CertificateParams)) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device");
    tweak(&mut params);
    params.serialize_request(key).unwrap().der().to_vec()
}

/// Writes `n` P-256 CSRs `d0000.der`, `d0001.der`, ... into `dir` (created); with `keep_keys`,
/// each private key as `d0000.key.pem`, ... in `dir` with extension `keys` beside it. Returns `dir`.
pub fn write_csr_dir(dir: &Path, n: usize, keep_keys: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        std::fs::write(dir.join(format!("d{i:04}.der")), csr.der()).unwrap();
        if keep_keys {
            let keys = dir.with_extension("keys");
            std::fs::create_dir_all(&keys).unwrap();
            std::fs::write(keys.join(format!("d{i:04}.key.pem")), key.serialize_pem()).unwrap();
        }
    }
    dir.to_owned()
}

/// Writes the given DER CSRs into `dir` (created) as `dev00000.der`, `dev00001.der`, ...
pub fn write_csrs(dir: &Path, csrs: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, c) in csrs.iter().enumerate() {
        std::fs::write(dir.join(format!("dev{i:05}.der")), c).unwrap();
    }
}
