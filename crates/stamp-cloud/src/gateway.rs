//! The TLS gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use stamp_core::registry::{Reason, Standing, Verdict, VerifiedRegistry, MAX_DEVICE_CHAIN};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::metrics::GatewayMetrics;
use crate::state::{Binding, GatewayState, StateError};
use crate::{CloudError, Reply};

/// Most connections handled at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time allowed for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line an admitted device may send.
pub const MAX_LINE: usize = 4096;

/// Accepts any client certificate chain of at most [`MAX_DEVICE_CHAIN`] certificates, but
/// checks the handshake signature with the presented key: the registry decides after the
/// handshake, so that a refused device learns why.
#[derive(Debug)]
struct DeviceCertVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() >= MAX_DEVICE_CHAIN {
            return Err(rustls::Error::General("client certificate chain too long".into()));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The gateway's server identity.
pub struct ServerIdentity {
    /// Certificate chain, DER, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// A fresh self-signed identity for `names` (DNS names or IP addresses); devices trust its
    /// certificate (PEM, returned too) as their CA file.
    pub fn self_signed(names: Vec<String>) -> Result<(Self, String), CloudError> {
        let ck = rcgen::generate_simple_self_signed(names)?;
        let pem = ck.cert.pem();
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        Ok((
            ServerIdentity {
                chain: vec![ck.cert.der().clone()],
                key,
            },
            pem,
        ))
    }

    /// From PEM files' contents: certificates (leaf first) and one private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CloudError> {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CloudError::Pem(format!("server certificate: {e}")))?;
        if chain.is_empty() {
            return Err(CloudError::Pem(
                "no certificate in the server certificate file".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| CloudError::Pem(format!("server key: {e}")))?;
        Ok(ServerIdentity { chain, key })
    }
}

/// The gateway: a verified registry (replaceable by a newer one while it runs), its state file
/// (the highest registry sequence accepted, one public key per provisional serial) and the
/// device serials connected now.
pub struct Gateway {
    registry: RwLock<Arc<VerifiedRegistry>>,
    state: Mutex<GatewayState>,
    connected: Mutex<HashMap<u64, usize>>,
    metrics: GatewayMetrics,
}

/// Why [`Gateway::replace_registry`] kept the registry it had.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplaceError {
    /// Not newer than the registry in use (a replay or a rollback).
    #[error("registry sequence {offered} is not newer than sequence {current} in use")]
    NotNewer {
        /// The offered registry's sequence.
        offered: u64,
        /// The sequence in use.
        current: u64,
    },
    /// Signed under another OEM root.
    #[error("the registry is under another OEM root than the one in use")]
    OtherRoot,
    /// The state file refused it or failed.
    #[error("{0}")]
    State(String),
}

/// Removes a connection from the connected set when dropped.
struct Presence<'a> {
    gw: &'a Gateway,
    id: u64,
}

impl Drop for Presence<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.gw.connected.lock() {
            if let Some(n) = m.get_mut(&self.id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.id);
                }
            }
        }
    }
}

impl Gateway {
    /// A gateway judging devices with `registry`, remembering in `state`. Refuses a registry
    /// older than one the state already accepted (a restart on an older file is a rollback) or
    /// under another OEM root than the state's.
    pub fn new(registry: VerifiedRegistry, mut state: GatewayState) -> Result<Self, StateError> {
        let dropped = state.accept_registry(&registry, time::OffsetDateTime::now_utc().unix_timestamp())?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                "provisional bindings dropped: the registry registers their serials"
            );
        }
        Ok(Gateway {
            registry: RwLock::new(Arc::new(registry)),
            state: Mutex::new(state),
            connected: Mutex::new(HashMap::new()),
            metrics: GatewayMetrics::default(),
        })
    }

    /// The gateway's counters.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// The metrics in Prometheus text format, with the registry in use.
    pub fn render_metrics(&self) -> String {
        let r = self.registry();
        self.metrics.render(r.sequence(), r.device_count())
    }

    /// The registry devices are judged with now.
    pub fn registry(&self) -> Arc<VerifiedRegistry> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Judges later connections with `newer`, a verified registry under the same OEM root with
    /// a higher sequence (so revocations and newly reconciled devices take effect without a
    /// restart); otherwise keeps the one in use. Connections already admitted stay.
    pub fn replace_registry(&self, newer: VerifiedRegistry) -> Result<(), ReplaceError> {
        let mut current = self
            .registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if newer.root_sha256() != current.root_sha256() {
            return Err(ReplaceError::OtherRoot);
        }
        if newer.sequence() <= current.sequence() {
            return Err(ReplaceError::NotNewer {
                offered: newer.sequence(),
                current: current.sequence(),
            });
        }
        let dropped = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .accept_registry(&newer, time::OffsetDateTime::now_utc().unix_timestamp())
            .map_err(|e| ReplaceError::State(e.to_string()))?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                "provisional bindings dropped: the registry registers their serials"
            );
        }
        *current = Arc::new(newer);
        self.metrics.registry_reload(true);
        Ok(())
    }

    /// Holds a provisional serial for the verdict's key, or refuses the device as a clone of
    /// the key that holds it; `None` if admitted.
    fn bind_provisional(&self, v: &Verdict) -> Option<(String, String)> {
        let (Some(serial), Some(pk), Some(cert)) = (
            v.device_serial,
            v.public_key_sha256.as_deref().and_then(hash32),
            v.certificate_sha256.as_deref().and_then(hash32),
        ) else {
            return Some((
                "gateway-error".into(),
                "a provisional verdict without serial or key".into(),
            ));
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let bound = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .bind(
                serial,
                &pk,
                &cert,
                v.site_id.as_deref().unwrap_or(""),
                v.entitlement_id.as_deref().unwrap_or(""),
                now,
            );
        match bound {
            Ok(Binding::New) => {
                tracing::info!(
                    serial,
                    public_key = hex::encode(pk),
                    "provisional serial bound to its first key"
                );
                None
            }
            Ok(Binding::Same) => None,
            Ok(Binding::Held {
                public_key_sha256,
                first_seen,
            }) => {
                let held = hex::encode(public_key_sha256);
                let first_seen = time::OffsetDateTime::from_unix_timestamp(first_seen)
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                    .unwrap_or_else(|| first_seen.to_string());
                tracing::warn!(
                    serial,
                    site = ?v.site_id,
                    certificate = v.certificate_sha256.as_deref().unwrap_or(""),
                    public_key = hex::encode(pk),
                    held_by = %held,
                    "refused device: clone of a provisional serial another key holds"
                );
                Some((
                    Reason::Clone.code().into(),
                    format!(
                        "provisional serial {serial} is held by another public key (SPKI SHA-256 {held}, first seen at \
                         {first_seen}): one key per serial until HQ registers it"
                    ),
                ))
            }
            Err(e) => {
                tracing::error!(serial, error = %e, "gateway state failed: provisional device refused");
                Some(("gateway-error".into(), format!("the gateway's state failed: {e}")))
            }
        }
    }

    /// Judges a device chain: the registry's verdict, and the concurrent-use flag.
    fn admit(&self, chain: &[Vec<u8>]) -> (Reply, Option<Presence<'_>>) {
        let (reply, presence) = self.judge(chain);
        if reply.admitted {
            self.metrics.admitted(&reply.standing);
            if !reply.flags.is_empty() {
                self.metrics.concurrent_use();
            }
        } else {
            self.metrics.refused(reply.reason.as_deref().unwrap_or("unknown"));
        }
        (reply, presence)
    }

    /// The verdict behind [`Gateway::admit`].
    fn judge(&self, chain: &[Vec<u8>]) -> (Reply, Option<Presence<'_>>) {
        let v = self
            .registry()
            .check_device(chain, time::OffsetDateTime::now_utc());
        let mut reply = Reply {
            admitted: v.genuine,
            standing: v.standing.name().to_owned(),
            reason: v.reason.map(|r| r.code().to_owned()),
            detail: v.detail.clone(),
            device_serial: v.device_serial,
            site_id: v.site_id.clone(),
            flags: Vec::new(),
        };
        if v.standing == Standing::Provisional {
            if let Some((reason, detail)) = self.bind_provisional(&v) {
                reply.admitted = false;
                reply.standing = "refused".into();
                reply.reason = Some(reason);
                reply.detail = detail;
                return (reply, None);
            }
        }
        if !v.genuine {
            tracing::warn!(
                reason = reply.reason.as_deref().unwrap_or(""),
                serial = ?v.device_serial,
                site = ?v.site_id,
                certificate = v.certificate_sha256.as_deref().unwrap_or(""),
                detail = %v.detail,
                "refused device: possible counterfeit"
            );
            return (reply, None);
        }
        // A genuine verdict always has a serial; the concurrent-use check is keyed by it.
        let id = v.device_serial.unwrap_or_default();
        let others = match self.connected.lock() {
            Ok(mut m) => {
                let n = m.entry(id).or_insert(0);
                *n += 1;
                *n - 1
            }
            Err(_) => 0,
        };
        if others > 0 {
            reply.flags.push("concurrent-use".into());
            tracing::warn!(
                serial = ?v.device_serial,
                site = ?v.site_id,
                certificate = v.certificate_sha256.as_deref().unwrap_or(""),
                connections = others + 1,
                "device serial in use on more than one connection at once: possible clone"
            );
        } else {
            tracing::info!(serial = ?v.device_serial, site = ?v.site_id, standing = %reply.standing, "admitted device");
        }
        (reply, Some(Presence { gw: self, id }))
    }
}

fn hash32(h: &str) -> Option<[u8; 32]> {
    hex::decode(h).ok()?.try_into().ok()
}

/// TLS server configuration requiring a client certificate.
pub fn tls_config(identity: ServerIdentity) -> Result<rustls::ServerConfig, CloudError> {
    let provider = crate::provider();
    let verifier = Arc::new(DeviceCertVerifier {
        provider: provider.clone(),
    });
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?)
}

/// Serves devices on `listener` until `shutdown` completes; then stops accepting and gives the
/// connections still open up to `grace` to end by themselves before returning (the caller's
/// runtime drops whatever is left).
pub async fn serve_until(
    listener: TcpListener,
    config: rustls::ServerConfig,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> Result<(), CloudError> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let acceptor = acceptor.clone();
        let gw = gateway.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(tcp, acceptor, &gw).await {
                tracing::info!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Every connection holds a slot: all slots free means every connection has ended.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, slots.acquire_many(all)).await;
    Ok(())
}

/// A gateway serving on its own thread and tokio runtime, in this process, until stopped.
pub struct Running {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), CloudError>>>,
}

impl Running {
    /// Binds `listen` (port 0: any free port) and serves devices there on a new thread.
    pub fn start(
        listen: std::net::SocketAddr,
        config: rustls::ServerConfig,
        gateway: Arc<Gateway>,
    ) -> Result<Running, CloudError> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("stamp-gateway".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let stopped = async {
                        let _ = rx.await;
                    };
                    serve_until(listener, config, gateway, stopped, STOP_GRACE).await
                })
            })?;
        Ok(Running {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops accepting, waits up to [`STOP_GRACE`] for open connections to end, closes the rest
    /// and returns once the gateway's thread has finished.
    pub fn stop(mut self) -> Result<(), CloudError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), CloudError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(CloudError::Io(std::io::Error::other(
                "the gateway thread panicked",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// How long [`Running::stop`] waits for open connections to end.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

async fn handle(tcp: tokio::net::TcpStream, acceptor: TlsAcceptor, gw: &Gateway) -> Result<(), CloudError> {
    let peer = tcp.peer_addr().ok();
    // The verdict line follows the handshake's last flight (TLS 1.3 session tickets) at once;
    // with Nagle's algorithm it would wait for the device's delayed ACK (40 ms on Linux).
    tcp.set_nodelay(true)?;
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            gw.metrics.handshake_failed();
            tracing::warn!(?peer, error = %e, "TLS handshake failed");
            return Ok(());
        }
        Err(_) => {
            gw.metrics.handshake_failed();
            tracing::warn!(?peer, "TLS handshake timed out");
            return Ok(());
        }
    };
    gw.metrics.connection_opened();
    let result = serve_device(tls, gw).await;
    gw.metrics.connection_closed();
    result
}

/// After the handshake: the verdict line, then, if admitted, an `ok` for each line.
async fn serve_device(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    gw: &Gateway,
) -> Result<(), CloudError> {
    let chain: Vec<Vec<u8>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default();
    let (reply, presence) = gw.admit(&chain);
    let mut line = serde_json::to_vec(&reply).map_err(|_| CloudError::BadReply)?;
    line.push(b'\n');
    tls.write_all(&line).await?;
    tls.flush().await?;
    if presence.is_none() {
        tls.shutdown().await?;
        return Ok(());
    }
    // Admitted: answer each line until the device closes the connection.
    let mut reader = BufReader::new(tls);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 || !buf.ends_with(b"\n") {
            break;
        }
        reader.get_mut().write_all(b"ok\n").await?;
        reader.get_mut().flush().await?;
    }
    drop(presence);
    Ok(())
}
