//! The service's routes: the JSON API, EST (RFC 7030), health and metrics.
//!
//! Every handler that provisions first authorizes the station (profile, recorded, not revoked;
//! refusals are logged), then runs the engine on the connection's engine thread. The engine
//! decides, signs and makes the event durable in the audit log before anything is returned.

mod error;
mod est;
mod health;
mod json;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use serde::Serialize;
use stamp_core::audit::RefusalReason;
use stamp_site::engine::{DeviceStamp, Engine, IssueError};
use stamp_site::stations::StationStanding;

pub use error::{refusal, ApiError, Outcome};
pub(crate) use health::render_metrics;
pub use json::PROOF_HEADER;

use crate::state::AppState;
use crate::tls::Peer;
use est::*;
use health::*;
use json::*;

/// Content type of EST certificate responses.
pub const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";
/// Response header carrying an error's stable code.
pub const ERROR_HEADER: &str = "stamp-error";

/// The router (state attached).
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/provision", post(provision))
        .route("/api/v1/hand-out", post(hand_out))
        .route("/api/v1/renew", post(renew_json))
        .route("/.well-known/est/cacerts", get(est_cacerts))
        .route("/.well-known/est/{label}/cacerts", get(est_cacerts))
        .route("/.well-known/est/csrattrs", get(est_csrattrs))
        .route("/.well-known/est/{label}/csrattrs", get(est_csrattrs_label))
        .route("/.well-known/est/simpleenroll", post(est_enroll))
        .route("/.well-known/est/{label}/simpleenroll", post(est_enroll_label))
        .route("/.well-known/est/simplereenroll", post(est_reenroll))
        .route(
            "/.well-known/est/{label}/simplereenroll",
            post(est_reenroll_label),
        )
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such endpoint")
}

/// Runs `f` with the engine on the connection's engine thread (`crate::lanes`; the blocking pool
/// when it has none), holding an in-flight permit. The work finishes even if the client goes away
/// (the future is dropped): an issuance is then logged, not returned.
async fn with_engine<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&Engine) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = state
        .in_flight
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("shutting down"))?;
    let guard = state.tracker.guard();
    let engine = state.engine.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    crate::lanes::run(Box::new(move || {
        let r = f(&engine);
        drop(permit);
        drop(guard);
        let _ = tx.send(r);
    }));
    rx.await.map_err(|_| ApiError::unavailable("worker failed"))
}

/// Checks the peer is an active station of this site; a refusal is logged.
async fn authorize(
    state: &Arc<AppState>,
    peer: &Peer,
    entitlement: Option<&str>,
) -> Result<String, ApiError> {
    let standing = match &peer.station {
        None => None,
        Some(name) => Some(
            state
                .store()
                .station_standing(name, &peer.cert_sha256)
                .map_err(|e| ApiError::unavailable(&e.to_string()))?,
        ),
    };
    let reason = match standing {
        Some(StationStanding::Active) => return Ok(peer.station.clone().unwrap_or_default()),
        Some(StationStanding::Revoked) => RefusalReason::StationRevoked,
        Some(StationStanding::Unknown) | None => RefusalReason::NotAStation,
    };
    let label = peer.label.clone();
    let ent = entitlement.map(str::to_owned);
    let e = with_engine(state, move |engine| {
        engine.record_refusal(ent.as_deref(), &label, reason, crate::now())
    })
    .await?;
    Err(issue_error(state, e))
}

fn issue_error(state: &AppState, e: IssueError) -> ApiError {
    match e {
        IssueError::Refused(r) => {
            state.metrics.refused(r.code());
            ApiError::refused(r)
        }
        other => {
            state.metrics.error("unavailable");
            // The whole cause chain goes to the log; the station gets the top-level reason.
            let mut chain = other.to_string();
            let mut cause = std::error::Error::source(&other);
            while let Some(c) = cause {
                chain.push_str(": ");
                chain.push_str(&c.to_string());
                cause = c.source();
            }
            tracing::error!(error = %chain, code = other.code(), "issuance unavailable");
            ApiError::unavailable(&other.to_string())
        }
    }
}

/// Reads a request body of at most the configured size. A body a little over the limit (up to 16
/// times it) is read and discarded so the client gets its 413 cleanly; a larger one is cut off.
async fn read_body(state: &AppState, headers: &HeaderMap, mut body: Body) -> Result<Vec<u8>, ApiError> {
    let max = state.config.max_body_bytes;
    let discard_limit = max.saturating_mul(16);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        state.metrics.error("body-too-large");
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("request bodies are limited to {max} bytes"),
        )
    };
    if declared.is_some_and(|n| n > discard_limit as u64) {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            state.metrics.error("bad-request");
            return Err(ApiError::bad_request("the request body could not be read"));
        };
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total > discard_limit {
                return Err(too_large());
            }
            if total <= max {
                buf.extend_from_slice(&data);
            }
        }
    }
    if total > max {
        return Err(too_large());
    }
    Ok(buf)
}

fn parse_json<T: serde::de::DeserializeOwned>(state: &AppState, bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        state.metrics.error("bad-request");
        ApiError::bad_request(format!(
            "malformed JSON request: {}",
            e.to_string().chars().take(200).collect::<String>()
        ))
    })
}

/// A CSR given as PEM (`CERTIFICATE REQUEST`) or base64 DER. Anything else is passed on as it is,
/// so the engine refuses it as `malformed-csr` (and logs it).
fn csr_bytes(text: &str) -> Vec<u8> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        return match pem::parse(t) {
            Ok(p) if matches!(p.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") => {
                p.into_contents()
            }
            _ => Vec::new(),
        };
    }
    stamp_core::pkcs7::base64_decode(t.as_bytes(), stamp_core::csr::MAX_CSR_DER * 2).unwrap_or_default()
}

fn pem_cert(der: &[u8]) -> String {
    stamp_core::cert::to_pem(der)
}

/// A provisioning answer, serialized straight from the engine's stamp (no intermediate JSON
/// value); the chain's PEM comes from the service's cache.
#[derive(Serialize)]
struct StampReply<'a> {
    device_serial: u64,
    entitlement_id: &'a str,
    product: &'a stamp_core::entitlement::Product,
    certificate: String,
    chain: Vec<Cow<'a, str>>,
    device_data: &'a BTreeMap<String, String>,
    log_index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secrets: Option<BTreeMap<&'a String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hq_key_index: Option<u64>,
}

fn stamp_reply<'a>(state: &'a AppState, stamp: &'a DeviceStamp) -> StampReply<'a> {
    StampReply {
        device_serial: stamp.device_serial,
        entitlement_id: &stamp.entitlement_id,
        product: &stamp.product,
        certificate: pem_cert(&stamp.certificate),
        chain: stamp
            .chain
            .iter()
            .map(|c| {
                state
                    .chain_pem
                    .iter()
                    .find(|(der, _)| der == c)
                    .map_or_else(|| Cow::Owned(pem_cert(c)), |(_, pem)| Cow::Borrowed(pem.as_str()))
            })
            .collect(),
        device_data: &stamp.device_data,
        log_index: stamp.log_index,
        private_key: None,
        secrets: None,
        hq_key_index: None,
    }
}

fn with_outcome(mut r: Response, device_serial: u64) -> Response {
    r.extensions_mut().insert(Outcome { device_serial });
    r
}

/// Every grant's status, or an answer saying the site database could not be read.
fn statuses(state: &AppState) -> Result<Vec<stamp_site::entitlements::GrantStatus>, ApiError> {
    state.statuses().map_err(|e| {
        tracing::error!(error = %e, "site database read failed");
        ApiError::unavailable("the site database could not be read")
    })
}

fn bounded_id(id: &str) -> String {
    id.chars().take(65).collect()
}

/// Runs a handler's work, records how long it took in the latency histogram, and answers its
/// error (in EST's plain text form when `est`).
async fn timed(
    state: &AppState,
    est: bool,
    work: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    let started = Instant::now();
    let r = work.await;
    state.metrics.observe(started.elapsed());
    r.unwrap_or_else(|e| e.est(est).into_response())
}
