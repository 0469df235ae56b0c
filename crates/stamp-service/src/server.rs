//! The service's life: start (engine, fresh server certificate, listener), a TLS accept loop that
//! attaches each connection's verified client certificate to its requests, and a graceful stop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Request;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use stamp_core::profile::Profile;
use stamp_site::engine::Engine;
use stamp_site::{Site, SiteError, SiteStore};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::api::{self, ApiError, Outcome, ERROR_HEADER};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::{AppState, TrackGuard, Tracker};
use crate::tls::{self, Peer};

mod memory;

/// Why the service could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The site could not be opened, or its engine started.
    #[error(transparent)]
    Site(#[from] SiteError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The operations listener's address (`ops_listen`) could not be bound.
    #[error("cannot listen on {addr} (ops_listen: the health and metrics listener)")]
    OpsBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate could not be encoded.
    #[error(transparent)]
    Pkcs7(#[from] stamp_core::pkcs7::Pkcs7Error),
    /// The service's thread ended abnormally.
    #[error("the site service thread crashed")]
    Crashed,
    /// The site has no credentials installed.
    #[error("the site has no credentials installed; run `stamp site install` first")]
    NotInstalled,
}

/// A prepared service: engine running, server certificate issued, listener bound.
pub struct Server {
    state: Arc<AppState>,
    tls: Arc<rustls::ServerConfig>,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    /// The operations listener (`/healthz`, `/metrics` without a client certificate), if on.
    ops: Option<(std::net::TcpListener, SocketAddr)>,
    /// The service's certificate (DER), issued at start.
    certificate: Vec<u8>,
}

impl Server {
    /// Prepares the service for `site`: starts the provisioning engine, issues a fresh server
    /// certificate for the configured names, and binds the listen address. The site stays open
    /// to reload entitlements imported while the service runs.
    pub fn new(site: Site, config: Config) -> Result<Server, ServiceError> {
        config.check()?;
        let store = site.store();
        let issuing_ca = store
            .certificate(Profile::SiteIssuingCa)
            .map_err(SiteError::from)?
            .ok_or(ServiceError::NotInstalled)?;
        let root = store
            .certificate(Profile::OemRoot)
            .map_err(SiteError::from)?
            .ok_or(ServiceError::NotInstalled)?;
        let site_id = store.site_id().map_err(SiteError::from)?;
        let creds = site.issue_service_certificate(&config.service_names()?, crate::now())?;
        let tls = tls::server_config(&creds.chain, &creds.key_pkcs8, &issuing_ca)?;
        let engine = Arc::new(Engine::start(&site)?);
        let reader = SiteStore::open(store.path()).map_err(SiteError::from)?;
        let (listener, addr) = bind(config.listen).map_err(|source| ServiceError::Bind {
            addr: config.listen,
            source,
        })?;
        let ops = config
            .ops_listen()?
            .map(|addr| bind(addr).map_err(|source| ServiceError::OpsBind { addr, source }))
            .transpose()?;
        let cacerts_p7 = stamp_core::pkcs7::certs_only(&[issuing_ca.clone(), root.clone()])?;
        let chain_pem = [issuing_ca, root]
            .into_iter()
            .map(|der| {
                let pem = stamp_core::cert::to_pem(&der);
                (der, pem)
            })
            .collect();
        let state = Arc::new(AppState {
            engine,
            site: Mutex::new(site),
            store: Mutex::new(reader),
            site_id,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            lanes: crate::lanes::Lanes::new(config.max_in_flight),
            config,
            metrics: Metrics::default(),
            cacerts_p7,
            chain_pem,
            tracker: Arc::new(Tracker::default()),
        });
        Ok(Server {
            state,
            tls,
            listener,
            addr,
            ops,
            certificate: creds.chain.first().cloned().unwrap_or_default(),
        })
    }

    /// The operations listener's bound address, if it is on.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(_, a)| *a)
    }

    /// The service's TLS certificate (DER), issued for a fresh key when the server was made.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// The bound address (the real port when the configuration said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes; then stops accepting, lets in-flight requests finish
    /// (up to the configured grace period) and shuts the engine down, which commits every queued
    /// audit entry. Must run inside a Tokio runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
        let Server {
            state,
            tls,
            listener,
            addr,
            ops,
            certificate: _,
        } = self;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|source| ServiceError::Bind { addr, source })?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let router = api::router(state.clone());
        let connections = Arc::new(Semaphore::new(state.config.max_connections));
        let handshakes = Arc::new(Handshakes::new(state.config.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        tracing::info!(%addr, site = %state.site_id, "site service listening");
        let reloader = tokio::spawn(reload_loop(state.clone(), stop_rx.clone()));
        if let Some((ops, ops_addr)) = ops {
            let ops = tokio::net::TcpListener::from_std(ops).map_err(|source| ServiceError::OpsBind {
                addr: ops_addr,
                source,
            })?;
            tracing::info!(%ops_addr, "operations listener (/healthz, /metrics) listening");
            tokio::spawn(crate::ops::serve(ops, state.clone(), stop_rx.clone()));
        }
        tokio::pin!(shutdown);
        let mut at_cap = false;
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let (tcp, peer_addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                state.metrics.error("too-many-connections");
                // Once per episode, not per connection: a flood must not flood the log too.
                if !at_cap {
                    tracing::warn!(
                        %peer_addr,
                        "connection limit reached; closing new connections until one ends \
                         (counted in stamp_site_request_errors_total{{code=\"too-many-connections\"}})"
                    );
                    at_cap = true;
                }
                drop(tcp);
                continue;
            };
            at_cap = false;
            let Some(handshake) = handshakes.take(peer_addr.ip()) else {
                state.metrics.error("too-many-handshakes");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                state: state.clone(),
                acceptor: acceptor.clone(),
                router: router.clone(),
                stop: stop_rx.clone(),
                guard: state.tracker.guard(),
                handshake,
            };
            tokio::spawn(async move {
                conn.serve(tcp, peer_addr).await;
                drop(permit);
            });
        }
        drop(listener);
        tracing::info!(
            in_flight = state.tracker.running(),
            "stopping: no new connections; letting requests in flight finish"
        );
        let _ = stop_tx.send(true);
        let _ = reloader.await;
        let grace = Duration::from_secs(state.config.shutdown_timeout_secs);
        if tokio::time::timeout(grace, state.tracker.idle()).await.is_err() {
            tracing::warn!(
                still_running = state.tracker.running(),
                "grace period over; stopping anyway (issuances already queued are still logged)"
            );
        }
        let engine = state.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        tracing::info!("site service stopped; every acknowledged issuance is in the audit log");
        Ok(())
    }
}

/// Binds `addr` for the Tokio runtime (non-blocking); the bound address too.
fn bind(addr: SocketAddr) -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Polls the site database for entitlement packages applied while the service runs (`stamp site
/// import`) and reloads the engine when there are new ones.
async fn reload_loop(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let secs = state.config.reload_interval_secs;
    if secs == 0 {
        return;
    }
    let mut seen = state.store().last_sequence().ok();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(secs)) => {}
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
        // Packages `stamp site import` left for the running engine, then any applied otherwise.
        let st = state.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut site = st.site.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let applied = st.engine.apply_inbox(&mut site, crate::now())?;
            if applied > 0 {
                tracing::info!(applied, "entitlement packages applied from the inbox");
            }
            let now = st.store().last_sequence().ok();
            if now == seen {
                return Ok((0, now));
            }
            st.engine.reload(&site).map(|changed| (changed, now))
        })
        .await;
        match result {
            Ok(Ok((changed, now))) => {
                if now != seen {
                    tracing::info!(changed, sequence = now, "entitlements reloaded");
                }
                seen = now;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "reloading entitlements failed; will retry"),
            Err(e) => tracing::error!(error = %e, "reloading entitlements failed; will retry"),
        }
    }
}

struct Connection {
    state: Arc<AppState>,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    stop: watch::Receiver<bool>,
    guard: TrackGuard,
    /// Held until the TLS handshake ends.
    handshake: HandshakeSlot,
}

/// Connections in the TLS handshake, by client address (an entry per address with at least one,
/// so at most `max_connections` entries). Until its handshake ends a peer is not known to be a
/// station: one address may have at most a quarter of `max_connections` in it, so one address's
/// flood of connections that never finish it cannot take every connection slot while stations
/// elsewhere connect.
struct Handshakes {
    per_address: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`Handshakes`], given back when dropped.
struct HandshakeSlot {
    table: Arc<Handshakes>,
    ip: IpAddr,
}

impl Handshakes {
    fn new(max_connections: usize) -> Handshakes {
        Handshakes {
            per_address: (max_connections / 4).max(1),
            open: Mutex::default(),
        }
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<HandshakeSlot> {
        let mut t = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = t.entry(ip).or_insert(0);
        if *n >= self.per_address {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut t = self
            .table
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = t.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

impl Connection {
    async fn serve(self, tcp: tokio::net::TcpStream, addr: SocketAddr) {
        let Connection {
            state,
            acceptor,
            router,
            mut stop,
            guard,
            handshake: handshake_slot,
        } = self;
        let cfg = &state.config;
        let handshake = tokio::time::timeout(
            Duration::from_secs(cfg.handshake_timeout_secs),
            acceptor.accept(tcp),
        )
        .await;
        drop(handshake_slot);
        let tls = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                state.metrics.error("tls-handshake");
                tracing::info!(%addr, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                state.metrics.error("tls-handshake");
                tracing::info!(%addr, "TLS handshake timed out");
                return;
            }
        };
        state.metrics.connection_opened();
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        let peer = Arc::new(Peer::from_certificate(cert.as_deref(), &state.site_id, addr));
        let timeout = Duration::from_secs(cfg.request_timeout_secs);
        let lane = crate::lanes::LaneSlot::new(state.lanes.clone());
        let svc_state = state.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            let peer = peer.clone();
            let state = svc_state.clone();
            let lane = lane.clone();
            async move {
                let started = Instant::now();
                let method = req.method().clone();
                let path: String = req.uri().path().chars().take(128).collect();
                let est = path.starts_with("/.well-known/est/");
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(peer.clone());
                let handled = crate::lanes::LANE.scope(lane, router.oneshot(req));
                let resp = match tokio::time::timeout(timeout, handled).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        state.metrics.error("timeout");
                        ApiError::timeout().est(est).into_response()
                    }
                };
                let code = resp
                    .headers()
                    .get(ERROR_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let serial = resp.extensions().get::<Outcome>().map(|o| o.device_serial);
                tracing::info!(
                    station = %peer.label,
                    client = %peer.addr,
                    %method,
                    path,
                    status = resp.status().as_u16(),
                    error = code,
                    device_serial = serial,
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "request"
                );
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(cfg.header_timeout_secs))
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        let grace = Duration::from_secs(cfg.shutdown_timeout_secs);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "connection ended with an error");
                }
            }
            () = async { let _ = stop.wait_for(|s| *s).await; } => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(grace, conn.as_mut()).await;
            }
        }
        state.metrics.connection_closed();
        drop(guard);
    }
}

/// A service running on its own runtime in the background (for `stamp demo` and tests).
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServiceError>>>,
}

impl Running {
    /// Starts `server` on a new multi-threaded runtime.
    pub fn start(server: Server, worker_threads: usize) -> Result<Running, ServiceError> {
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name("stamp-service")
            .enable_all()
            .build()
            .map_err(|source| ServiceError::Bind { addr, source })?;
        let thread = std::thread::Builder::new()
            .name("stamp-service-main".into())
            .spawn(move || {
                runtime.block_on(server.run(async {
                    let _ = rx.await;
                }))
            })
            .map_err(|source| ServiceError::Bind { addr, source })?;
        Ok(Running {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it gracefully and waits until it has (every queued audit entry committed).
    pub fn stop(mut self) -> Result<(), ServiceError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), ServiceError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(ServiceError::Crashed),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_of_handshakes() {
        let table = Arc::new(Handshakes::new(1024));
        let flood: IpAddr = [192, 0, 2, 1].into();
        let station: IpAddr = [192, 0, 2, 2].into();
        let mut held: Vec<HandshakeSlot> = (0..256).map(|_| table.take(flood).unwrap()).collect();
        assert!(table.take(flood).is_none(), "one over the cap");
        let other = table.take(station).unwrap();
        held.pop();
        let again = table.take(flood).unwrap();
        drop((held, again, other));
        assert!(table.open.lock().unwrap().is_empty(), "every slot given back");
        assert_eq!(Handshakes::new(1).per_address, 1);
    }
}
