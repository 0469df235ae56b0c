//! EST (RFC 7030): cacerts, csrattrs, simpleenroll and simplereenroll.

use axum::extract::{Path, State};

use axum::Extension;

use super::*;
use crate::metrics::IssuedKind;

pub(super) fn est_body(content_type: &'static str, der: &[u8]) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                "base64",
            ),
        ],
        stamp_core::pkcs7::base64_lines(der),
    )
        .into_response()
}

pub(super) async fn est_cacerts(State(state): State<Arc<AppState>>) -> Response {
    est_body("application/pkcs7-mime", &state.cacerts_p7)
}

pub(super) async fn est_csrattrs(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
) -> Response {
    let label = state.config.default_entitlement().map(str::to_owned);
    csrattrs_for(&state, &peer, label).await
}

pub(super) async fn est_csrattrs_label(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    Path(label): Path<String>,
) -> Response {
    csrattrs_for(&state, &peer, Some(label)).await
}

pub(super) async fn csrattrs_for(state: &Arc<AppState>, peer: &Peer, label: Option<String>) -> Response {
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
    match stamp_core::pkcs7::csr_attrs(&g.grant.device_profile.key_types) {
        Ok(der) => est_body("application/csrattrs", &der),
        Err(e) => ApiError::unavailable(&e.to_string()).est(true).into_response(),
    }
}

/// Checks an EST request body's media type (application/pkcs10, parameters allowed).
pub(super) fn check_pkcs10(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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
pub(super) fn est_csr(body: &[u8]) -> Vec<u8> {
    stamp_core::pkcs7::base64_decode(body, stamp_core::csr::MAX_CSR_DER * 2).unwrap_or_else(|| body.to_vec())
}

pub(super) async fn est_enroll(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let label = state.config.default_entitlement().map(str::to_owned);
    enroll(state, peer, label, headers, body, false).await
}

pub(super) async fn est_enroll_label(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    Path(label): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    enroll(state, peer, Some(label), headers, body, false).await
}

pub(super) async fn est_reenroll(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    enroll(state, peer, None, headers, body, true).await
}

pub(super) async fn est_reenroll_label(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    Path(_label): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A renewal's entitlement is that of the certificate renewed; the label is not needed.
    enroll(state, peer, None, headers, body, true).await
}

pub(super) async fn enroll(
    state: Arc<AppState>,
    peer: Arc<Peer>,
    label: Option<String>,
    headers: HeaderMap,
    body: Body,
    renewal: bool,
) -> Response {
    timed(&state, true, async {
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
        let der = stamp_core::pkcs7::certs_only(std::slice::from_ref(&stamp.certificate))
            .map_err(|e| ApiError::unavailable(&e.to_string()))?;
        Ok::<_, ApiError>(with_outcome(
            est_body(PKCS7_CERTS_ONLY, &der),
            stamp.device_serial,
        ))
    })
    .await
}
