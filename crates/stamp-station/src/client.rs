//! A station's client for the site service: mutual TLS with the station's identity, HTTP/1.1
//! keep-alive connections. Used by the device simulator (and by tests).

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Method;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use zeroize::Zeroizing;

/// File names in a station directory (`stamp site add-station -o DIR`).
pub const STATION_KEY: &str = "station.key";
/// The station certificate.
pub const STATION_CERT: &str = "station.crt";
/// The OEM root the station trusts for the service.
pub const STATION_CA: &str = "ca.pem";

/// The header in which the site service names a refusal's or failure's stable code (the same
/// as `stamp_service::api::ERROR_HEADER`, which the service tests check through this client).
pub const ERROR_HEADER: &str = "stamp-error";

/// Largest response body read.
pub const MAX_RESPONSE: usize = 1024 * 1024;

/// Client failures (not refusals: those are replies with an error status).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A station file is missing or malformed.
    #[error("station file {path}: {why}")]
    StationFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The server URL is not `https://HOST[:PORT]`.
    #[error("invalid server URL {0:?}: use https://HOST:PORT")]
    BadUrl(String),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Connecting, the TLS handshake or HTTP failed.
    #[error("{0}")]
    Transport(String),
}

/// A station's TLS identity and the root it trusts.
pub struct StationIdentity {
    /// Certificate chain (DER), the station certificate first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 private key (DER); wiped on drop.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// The OEM root (DER).
    pub root: Vec<u8>,
}

fn read_pem_blocks(path: &Path, label: &str) -> Result<Vec<Vec<u8>>, ClientError> {
    let err = |why: String| ClientError::StationFile {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > 256 * 1024 {
        return Err(err("larger than 256 KiB".into()));
    }
    let text = Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
    let blocks = pem::parse_many(text.as_slice()).map_err(|e| err(e.to_string()))?;
    let out: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == label)
        .map(pem::Pem::into_contents)
        .collect();
    if out.is_empty() {
        return Err(err(format!("no PEM {label} block")));
    }
    Ok(out)
}

impl StationIdentity {
    /// Reads `station.key`, `station.crt` and `ca.pem` from a station directory.
    pub fn load(dir: &Path) -> Result<Self, ClientError> {
        let key_path = dir.join(STATION_KEY);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(&key_path) {
                if m.permissions().mode() & 0o077 != 0 {
                    return Err(ClientError::StationFile {
                        path: key_path,
                        why: "readable by group or others; chmod 600 it".into(),
                    });
                }
            }
        }
        let mut keys = read_pem_blocks(&key_path, "PRIVATE KEY")?;
        let key_pkcs8 = Zeroizing::new(keys.remove(0));
        Ok(StationIdentity {
            chain: read_pem_blocks(&dir.join(STATION_CERT), "CERTIFICATE")?,
            key_pkcs8,
            root: read_pem_blocks(&dir.join(STATION_CA), "CERTIFICATE")?.remove(0),
        })
    }
}

/// Where the service is and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl Endpoint {
    /// An endpoint for `url` (`https://HOST[:PORT]`), trusting `root` for the server and
    /// presenting `identity` (chain, PKCS#8 key) when given.
    pub fn new(url: &str, root: &[u8], identity: Option<(&[Vec<u8>], &[u8])>) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.chars().take(200).collect());
        let uri: hyper::Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") || !uri.path().trim_end_matches('/').is_empty() {
            return Err(bad());
        }
        let host = uri
            .host()
            .ok_or_else(bad)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
        let cfg = crate::tls::client_config(root, identity)?;
        Ok(Endpoint {
            host,
            port: uri.port_u16().unwrap_or(443),
            server_name,
            connector: tokio_rustls::TlsConnector::from(cfg),
        })
    }

    /// An endpoint for a station directory's identity.
    pub fn for_station(url: &str, station: &StationIdentity) -> Result<Self, ClientError> {
        Endpoint::new(url, &station.root, Some((&station.chain, &station.key_pkcs8)))
    }

    /// Opens a connection (TCP, TLS handshake, HTTP/1.1).
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let t = |e: String| ClientError::Transport(e);
        let tls = self.connect_tls().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| t(format!("HTTP handshake failed: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            authority: format!("{}:{}", self.host, self.port),
        })
    }

    /// Opens a TLS connection with the station's identity and no HTTP on it yet (for clients
    /// that write HTTP themselves, as the service's limit tests do).
    pub async fn connect_tls(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let t = |e: String| ClientError::Transport(e);
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| t(format!("cannot connect to {}:{}: {e}", self.host, self.port)))?;
        let _ = tcp.set_nodelay(true);
        // `localhost` always names the loopback interface (RFC 6761 6.3) and is not a name a
        // certificate can carry (RFC 5280 dNSName syntax): the service's certificate names the
        // loopback addresses instead, so check it for the one this connection reached.
        let server_name = match tcp.peer_addr() {
            Ok(peer) if is_localhost(&self.host) && peer.ip().is_loopback() => {
                ServerName::IpAddress(peer.ip().into())
            }
            _ => self.server_name.clone(),
        };
        self.connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| t(format!("TLS handshake failed: {e}")))
    }
}

/// Whether `host` is the name `localhost` (any case, with or without the final dot).
fn is_localhost(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.")
}

/// An open connection to the service.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

/// A reply from the service.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Content-Type.
    pub content_type: String,
    /// The `stamp-error` code of a refusal or failure.
    pub error: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Transport(format!("reply is not JSON: {e}")))
    }
}

impl Connection {
    /// Sends one request and reads the reply.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let t = |e: String| ClientError::Transport(e);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| t(e.to_string()))?;
        self.sender
            .ready()
            .await
            .map_err(|e| t(format!("connection closed: {e}")))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| t(format!("request failed: {e}")))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let error = header(ERROR_HEADER);
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| t(format!("reading the reply failed: {e}")))?
            .to_bytes();
        Ok(Reply {
            status,
            content_type,
            error,
            body,
        })
    }

    /// `POST` a JSON value.
    pub async fn post_json(&mut self, path: &str, v: &serde_json::Value) -> Result<Reply, ClientError> {
        let body = serde_json::to_vec(v).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.send(Method::POST, path, Some("application/json"), body)
            .await
    }

    /// `GET` a path.
    pub async fn get(&mut self, path: &str) -> Result<Reply, ClientError> {
        self.send(Method::GET, path, None, Vec::new()).await
    }
}
