//! The operations listener: `GET /healthz` and `GET /metrics` over plain HTTP, without a client
//! certificate, for a load balancer's health probe and a Prometheus scraper. It serves nothing
//! else, so it is bound to a loopback address by default (`ops_listen`); both long-running
//! commands (`stamp site serve`, `stamp cloud gateway`) use it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Most connections the operations listener holds at once; more are closed at once.
pub const MAX_OPS_CONNECTIONS: usize = 64;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the operations listener reports about a service.
pub trait Probe: Send + Sync + 'static {
    /// `Err(why)` when the service cannot do its work (then `/healthz` answers 503 with why).
    fn health(&self) -> Result<(), String>;
    /// The service's metrics in the Prometheus text exposition format (version 0.0.4).
    fn metrics(&self) -> String;
}

/// The content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/healthz` and `/metrics` from `probe` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, probe: Arc<dyn Probe>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_OPS_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let probe = probe.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let probe = probe.clone();
                async move { Ok::<_, Infallible>(answer(&req, probe.as_ref())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

fn answer(req: &Request<Incoming>, probe: &dyn Probe) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => match probe.health() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        },
        "/metrics" => reply(StatusCode::OK, METRICS_CONTENT_TYPE, probe.metrics()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: this listener serves /healthz and /metrics\n".into(),
        ),
    }
}
