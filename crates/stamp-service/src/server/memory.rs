//! Serving one connection over any byte stream, without TLS: the fuzz target (`stamp-fuzz`'s
//! `service`) drives the service's real router, handlers and engine through an in-memory stream,
//! as parsec's `fuzz_service` does. The client is the `Peer` the caller names, as if its TLS
//! handshake had shown that certificate.

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

use super::Server;
use crate::api;
use crate::tls::Peer;

impl Server {
    /// Serves HTTP/1.1 on `io` until the client closes it, every request as from `peer`, through
    /// the same router, handlers, lanes and engine as [`Server::run`]'s TLS connections (without
    /// their timeouts; the caller bounds the time). Must run inside a Tokio runtime.
    pub async fn serve_stream<IO>(&self, io: IO, peer: Peer) -> Result<(), hyper::Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = api::router(self.state.clone());
        let peer = Arc::new(peer);
        let lane = crate::lanes::LaneSlot::new(self.state.lanes.clone());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            let peer = peer.clone();
            let lane = lane.clone();
            async move {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(peer);
                let resp = crate::lanes::LANE.scope(lane, router.oneshot(req)).await;
                Ok::<_, Infallible>(match resp {
                    Ok(r) => r,
                    Err(never) => match never {},
                })
            }
        });
        // Half-close: the client may close its side once it has sent everything and still
        // read the answers.
        hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(io), svc)
            .await
    }
}
