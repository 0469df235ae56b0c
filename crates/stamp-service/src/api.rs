//! The service's routes: the JSON API, EST (RFC 7030), health and metrics.
//!
//! Every handler that provisions first authorizes the station (profile, recorded, not revoked;
//! refusals are logged), then runs the engine on the connection's engine thread. The engine
//! decides, signs and makes the event durable in the audit log before anything is returned.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use stamp_core::audit::RefusalReason;
use stamp_site::engine::{DeviceStamp, Engine, IssueError};
use stamp_site::stations::StationStanding;

use crate::metrics::IssuedKind;
use crate::server::AppState;
use crate::tls::Peer;

/// Content type of EST certificate responses.
pub const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";
/// Response header carrying an error's stable code.
pub const ERROR_HEADER: &str = "stamp-error";

/// A failed request: HTTP status, stable code, message for the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    est: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            est: false,
        }
    }

    pub(crate) fn est(mut self, est: bool) -> Self {
        self.est = est;
        self
    }

    /// The request took longer than the configured limit.
    pub fn timeout() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; if it was an issuance, it may have been logged without being returned",
        )
    }

    /// A policy refusal (already logged by the engine).
    pub fn refused(reason: RefusalReason) -> Self {
        let (status, message) = refusal(reason);
        ApiError::new(status, reason.code(), message)
    }

    pub(crate) fn unavailable(why: &str) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the site cannot issue now: {why}"),
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// HTTP status and message of each refusal reason (docs/service.md lists them).
pub fn refusal(reason: RefusalReason) -> (StatusCode, &'static str) {
    use RefusalReason::*;
    match reason {
        MalformedCsr => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "the CSR is not a valid DER PKCS#10 request",
        ),
        BadCsrSignature => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "the CSR's signature does not verify with its key",
        ),
        KeyTypeNotAllowed => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "the entitlement does not allow this key type",
        ),
        WeakKey => (StatusCode::UNPROCESSABLE_ENTITY, "the key is weak or malformed"),
        DuplicateKey => (StatusCode::CONFLICT, "this public key was certified before"),
        QuotaExhausted => (StatusCode::FORBIDDEN, "the entitlement's quota is used up"),
        RateExceeded => (
            StatusCode::TOO_MANY_REQUESTS,
            "a rate limit of the entitlement would be exceeded; retry later",
        ),
        OutsideWindow => (
            StatusCode::FORBIDDEN,
            "outside the entitlement's production window",
        ),
        Suspended => (StatusCode::FORBIDDEN, "the entitlement is suspended"),
        Revoked => (StatusCode::FORBIDDEN, "the entitlement is revoked"),
        UnknownEntitlement => (
            StatusCode::NOT_FOUND,
            "no such entitlement at this site (one imported just now is used within seconds)",
        ),
        StationNotAllowed => (StatusCode::FORBIDDEN, "this station may not use the entitlement"),
        NoKeysLeft => (StatusCode::FORBIDDEN, "no HQ-generated key is left to hand out"),
        HqKeysOnly => (
            StatusCode::FORBIDDEN,
            "devices of this entitlement get HQ-generated keys (use hand-out)",
        ),
        StationRevoked => (StatusCode::FORBIDDEN, "this station was revoked"),
        NotAStation => (
            StatusCode::FORBIDDEN,
            "the client certificate is not a station certificate of this site",
        ),
        UnknownDevice => (
            StatusCode::NOT_FOUND,
            "no device certificate of this site has the request's subject",
        ),
        DeviceRevoked => (StatusCode::FORBIDDEN, "HQ revoked this device"),
        PossessionNotProven => (
            StatusCode::FORBIDDEN,
            "a renewal for a new key needs the device's proof of possession, signed with its current key",
        ),
        RenewalLimit => (
            StatusCode::TOO_MANY_REQUESTS,
            "this device was renewed as often as its entitlement allows in the period",
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "the site failed internally"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = if self.est {
            (
                self.status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{}: {}\n", self.code, self.message),
            )
                .into_response()
        } else {
            (
                self.status,
                axum::Json(serde_json::json!({ "error": self.code, "message": self.message })),
            )
                .into_response()
        };
        r.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(self.code));
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// What a response records for the request log.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// The device serial issued.
    pub device_serial: u64,
}

/// The router (state attached).
pub fn router(state: Arc<AppState>) -> Router {
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
            tracing::error!(error = %other, "issuance unavailable");
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
    crate::pkcs7::base64_decode(t.as_bytes(), stamp_core::csr::MAX_CSR_DER * 2).unwrap_or_default()
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

fn bounded_id(id: &str) -> String {
    id.chars().take(65).collect()
}

// ---- health, metrics, status ------------------------------------------------------------------

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.engine_failed() {
        return ApiError::unavailable("the audit log failed").into_response();
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok\n").into_response()
}

async fn metrics(State(state): State<Arc<AppState>>, Extension(peer): Extension<Arc<Peer>>) -> Response {
    if let Err(e) = authorize(&state, &peer, None).await {
        return e.into_response();
    }
    let quota: Vec<(String, u64, u64)> = match state.statuses() {
        Ok(s) => s
            .into_iter()
            .map(|g| (g.entitlement_id, g.quota, g.remaining))
            .collect(),
        Err(e) => return e.into_response(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&quota),
    )
        .into_response()
}

async fn status(State(state): State<Arc<AppState>>, Extension(peer): Extension<Arc<Peer>>) -> Response {
    let station = match authorize(&state, &peer, None).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match state.statuses() {
        Ok(entitlements) => axum::Json(serde_json::json!({
            "site_id": state.site_id.as_str(),
            "station": station,
            "default_entitlement": state.config.default_entitlement(),
            "entitlements": entitlements,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

// ---- JSON API ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionRequest {
    entitlement: Option<String>,
    csr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandOutRequest {
    entitlement: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    csr: String,
    /// The device's proof of possession, base64 (a renewal for a new key needs it).
    proof: Option<String>,
}

/// HTTP header of an EST re-enrollment that carries the device's proof of possession (base64).
pub const PROOF_HEADER: &str = "stamp-possession-proof";

/// A proof of possession from its base64 text; text that is not base64 (or too long) becomes an
/// empty proof, which the engine refuses (and logs) as `possession-not-proven`.
fn proof_bytes(text: &[u8]) -> Vec<u8> {
    crate::pkcs7::base64_decode(text, stamp_core::device::MAX_RENEWAL_PROOF * 2).unwrap_or_default()
}

fn entitlement_or_default(state: &AppState, given: Option<String>) -> String {
    given
        .or_else(|| state.config.default_entitlement().map(str::to_owned))
        .map(|e| bounded_id(&e))
        .unwrap_or_default()
}

async fn provision(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = async {
        let bytes = read_body(&state, &headers, body).await?;
        let req: ProvisionRequest = parse_json(&state, &bytes)?;
        let entitlement = entitlement_or_default(&state, req.entitlement);
        let station = authorize(&state, &peer, Some(&entitlement)).await?;
        let csr = csr_bytes(&req.csr);
        let result = with_engine(&state, move |engine| {
            engine.issue(&entitlement, &csr, &station, crate::now())
        })
        .await?;
        let stamp = result.map_err(|e| issue_error(&state, e))?;
        state.metrics.issued(IssuedKind::Device);
        Ok::<_, ApiError>(with_outcome(
            axum::Json(stamp_reply(&state, &stamp)).into_response(),
            stamp.device_serial,
        ))
    }
    .await;
    state.metrics.observe(started.elapsed());
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn hand_out(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = async {
        let bytes = read_body(&state, &headers, body).await?;
        let req: HandOutRequest = parse_json(&state, &bytes)?;
        let entitlement = entitlement_or_default(&state, req.entitlement);
        let station = authorize(&state, &peer, Some(&entitlement)).await?;
        let result = with_engine(&state, move |engine| {
            engine.hand_out(&entitlement, &station, crate::now())
        })
        .await?;
        let (stamp, key) = result.map_err(|e| issue_error(&state, e))?;
        state.metrics.issued(IssuedKind::HandOut);
        let key_pem = zeroize::Zeroizing::new(stamp_core::ceremony::pem("PRIVATE KEY", &key.pkcs8));
        let mut v = stamp_reply(&state, &stamp);
        v.private_key = Some(key_pem.as_str());
        v.secrets = Some(
            key.secrets
                .iter()
                .map(|(n, s)| (n, hex::encode(s.as_slice())))
                .collect(),
        );
        v.hq_key_index = Some(key.index);
        let v = axum::Json(v).into_response();
        Ok::<_, ApiError>(with_outcome(v, stamp.device_serial))
    }
    .await;
    state.metrics.observe(started.elapsed());
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn renew_json(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = async {
        let bytes = read_body(&state, &headers, body).await?;
        let req: RenewRequest = parse_json(&state, &bytes)?;
        let station = authorize(&state, &peer, None).await?;
        let csr = csr_bytes(&req.csr);
        let proof = req.proof.map(|p| proof_bytes(p.as_bytes()));
        let result = with_engine(&state, move |engine| {
            engine.renew(&csr, proof.as_deref(), &station, crate::now())
        })
        .await?;
        let stamp = result.map_err(|e| issue_error(&state, e))?;
        state.metrics.issued(IssuedKind::Renewal);
        Ok::<_, ApiError>(with_outcome(
            axum::Json(stamp_reply(&state, &stamp)).into_response(),
            stamp.device_serial,
        ))
    }
    .await;
    state.metrics.observe(started.elapsed());
    r.unwrap_or_else(IntoResponse::into_response)
}

// ---- EST (RFC 7030) ---------------------------------------------------------------------------

fn est_body(content_type: &'static str, der: &[u8]) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                "base64",
            ),
        ],
        crate::pkcs7::base64_lines(der),
    )
        .into_response()
}

async fn est_cacerts(State(state): State<Arc<AppState>>) -> Response {
    est_body("application/pkcs7-mime", &state.cacerts_p7)
}

async fn est_csrattrs(State(state): State<Arc<AppState>>, Extension(peer): Extension<Arc<Peer>>) -> Response {
    let label = state.config.default_entitlement().map(str::to_owned);
    csrattrs_for(&state, &peer, label).await
}

async fn est_csrattrs_label(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    Path(label): Path<String>,
) -> Response {
    csrattrs_for(&state, &peer, Some(label)).await
}

async fn csrattrs_for(state: &Arc<AppState>, peer: &Peer, label: Option<String>) -> Response {
    if let Err(e) = authorize(state, peer, label.as_deref()).await {
        return e.est(true).into_response();
    }
    let Some(id) = label else {
        // No entitlement named: no attributes to ask for (RFC 7030 section 4.5.2).
        return StatusCode::NO_CONTENT.into_response();
    };
    let grant = match state.store().grant(&bounded_id(&id)) {
        Ok(g) => g,
        Err(e) => return ApiError::unavailable(&e.to_string()).est(true).into_response(),
    };
    let Some((g, _)) = grant else {
        return ApiError::refused(RefusalReason::UnknownEntitlement)
            .est(true)
            .into_response();
    };
    match crate::pkcs7::csr_attrs(&g.grant.device_profile.key_types) {
        Ok(der) => est_body("application/csrattrs", &der),
        Err(e) => ApiError::unavailable(&e.to_string()).est(true).into_response(),
    }
}

/// Checks an EST request body's media type (application/pkcs10, parameters allowed).
fn check_pkcs10(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/pkcs10"));
    if ok {
        Ok(())
    } else {
        state.metrics.error("unsupported-media-type");
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "EST enrollment takes a base64 PKCS#10 body with Content-Type: application/pkcs10",
        ))
    }
}

/// A base64 PKCS#10 body; a body that is not base64 is passed on as it is (refused and logged as
/// malformed-csr by the engine).
fn est_csr(body: &[u8]) -> Vec<u8> {
    crate::pkcs7::base64_decode(body, stamp_core::csr::MAX_CSR_DER * 2).unwrap_or_else(|| body.to_vec())
}

async fn est_enroll(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let label = state.config.default_entitlement().map(str::to_owned);
    enroll(state, peer, label, headers, body, false).await
}

async fn est_enroll_label(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    Path(label): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    enroll(state, peer, Some(label), headers, body, false).await
}

async fn est_reenroll(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    enroll(state, peer, None, headers, body, true).await
}

async fn est_reenroll_label(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    Path(_label): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A renewal's entitlement is that of the certificate renewed; the label is not needed.
    enroll(state, peer, None, headers, body, true).await
}

async fn enroll(
    state: Arc<AppState>,
    peer: Arc<Peer>,
    label: Option<String>,
    headers: HeaderMap,
    body: Body,
    renewal: bool,
) -> Response {
    let started = Instant::now();
    let r = async {
        check_pkcs10(&state, &headers)?;
        let bytes = read_body(&state, &headers, body).await?;
        let entitlement = label.map(|l| bounded_id(&l)).unwrap_or_default();
        let station = authorize(&state, &peer, (!renewal).then_some(entitlement.as_str())).await?;
        let csr = est_csr(&bytes);
        let proof = headers.get(PROOF_HEADER).map(|v| proof_bytes(v.as_bytes()));
        let result = with_engine(&state, move |engine| {
            if renewal {
                engine.renew(&csr, proof.as_deref(), &station, crate::now())
            } else {
                engine.issue(&entitlement, &csr, &station, crate::now())
            }
        })
        .await?;
        let stamp = result.map_err(|e| issue_error(&state, e))?;
        state.metrics.issued(if renewal {
            IssuedKind::Renewal
        } else {
            IssuedKind::Device
        });
        let der = crate::pkcs7::certs_only(std::slice::from_ref(&stamp.certificate))
            .map_err(|e| ApiError::unavailable(&e.to_string()))?;
        Ok::<_, ApiError>(with_outcome(
            est_body(PKCS7_CERTS_ONLY, &der),
            stamp.device_serial,
        ))
    }
    .await;
    state.metrics.observe(started.elapsed());
    r.unwrap_or_else(|e| e.est(true).into_response())
}
