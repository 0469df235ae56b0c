//! The service's TLS configuration (rustls with the aws-lc-rs provider) and the peer it verified.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use stamp_core::oid::RoleEku;
use stamp_core::profile::Profile;
use stamp_core::SiteId;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the certificates or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The service's TLS configuration: its certificate chain and key, and mandatory client
/// certificates that chain to `issuing_ca` (this site's issuing CA, the only trust anchor:
/// certificates of other sites' stations chain to the same OEM root but not to this CA).
pub fn server_config(
    chain: &[Vec<u8>],
    key_pkcs8: &[u8],
    issuing_ca: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(issuing_ca.to_vec()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let certs = chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Who is at the other end of a connection, from the client certificate the TLS layer verified
/// (it chains to this site's issuing CA).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The station name, if the certificate is a station certificate of this site.
    pub station: Option<String>,
    /// A name for logs and refusals: the station name, or the certificate's CN (bounded).
    pub label: String,
    /// SHA-256 of the client certificate.
    pub cert_sha256: [u8; 32],
    /// The client's address.
    pub addr: std::net::SocketAddr,
}

impl Peer {
    /// Reads the verified client certificate: a station certificate has the station profile
    /// (clientAuth and id-stamp-kp-station, exactly), `OU=site <this site>` and a valid station
    /// name as CN. A device certificate (same issuing CA, clientAuth only) is not a station.
    pub fn from_certificate(der: Option<&[u8]>, site: &SiteId, addr: std::net::SocketAddr) -> Peer {
        let mut peer = Peer {
            station: None,
            label: "(no certificate)".into(),
            cert_sha256: [0; 32],
            addr,
        };
        let Some(der) = der else { return peer };
        peer.cert_sha256 = stamp_core::fingerprint::sha256(der);
        let Ok(cert) = stamp_core::cert::parse(der) else {
            peer.label = "(unreadable certificate)".into();
            return peer;
        };
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or("");
        peer.label = cn
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect::<String>();
        if peer.label.is_empty() {
            peer.label = "(no name)".into();
        }
        let ou_ok = cert
            .subject()
            .iter_organizational_unit()
            .next()
            .and_then(|a| a.as_str().ok())
            .is_some_and(|ou| ou == format!("site {site}"));
        let role_ok = cert.extended_key_usage().ok().flatten().is_some_and(|e| {
            let want = RoleEku::Station.der_value();
            e.value.other.iter().any(|o| o.as_bytes() == want.as_slice())
        });
        if role_ok
            && ou_ok
            && Profile::Station.check(&cert).is_ok()
            && stamp_core::profile::check_station_name(cn).is_ok()
        {
            peer.station = Some(cn.to_owned());
        }
        peer
    }
}
