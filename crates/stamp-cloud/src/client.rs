//! The device side: connect to a gateway with the device's stamp (certificate, chain, key).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::{CloudError, Reply};

/// Longest reply line read.
const MAX_REPLY: u64 = 64 * 1024;

/// A device's credentials, PEM.
pub struct DeviceCredentials<'a> {
    /// The device certificate, then its chain (any number of CERTIFICATE blocks).
    pub chain_pem: &'a [u8],
    /// The device's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key_pem: &'a [u8],
}

/// Connects to `server` (`HOST:PORT`) trusting the server certificates in `ca_pem`, presents the
/// device's credentials, reads the gateway's reply; if admitted, holds the connection `hold` long
/// (sending a line every second) before closing it.
pub fn connect(
    server: &str,
    ca_pem: &[u8],
    creds: &DeviceCredentials<'_>,
    hold: Duration,
) -> Result<Reply, CloudError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| CloudError::Pem(format!("CA file: {e}")))?;
        roots.add(c)?;
    }
    let chain = CertificateDer::pem_slice_iter(creds.chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CloudError::Pem(format!("device certificate: {e}")))?;
    if chain.is_empty() {
        return Err(CloudError::Pem("no device certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem)
        .map_err(|e| CloudError::Pem(format!("device key: {e}")))?;
    let config = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| CloudError::Pem(format!("bad server name {host}")))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = TcpStream::connect(server)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut line = String::new();
    BufReader::new(&mut tls).take(MAX_REPLY).read_line(&mut line)?;
    let reply: Reply = serde_json::from_str(line.trim_end()).map_err(|_| CloudError::BadReply)?;
    if reply.admitted {
        let until = std::time::Instant::now() + hold;
        while std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(250).min(until - std::time::Instant::now()));
            tls.write_all(b"ping\n")?;
            let mut ok = [0u8; 3];
            tls.read_exact(&mut ok)?;
        }
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }
    Ok(reply)
}
