//! Health, metrics and the station's status view.

use axum::extract::State;
use axum::Extension;

use super::*;

pub(super) async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.engine_failed() {
        return ApiError::unavailable("the audit log failed").into_response();
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok\n").into_response()
}

pub(super) async fn metrics(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
) -> Response {
    if let Err(e) = authorize(&state, &peer, None).await {
        return e.into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::ops::METRICS_CONTENT_TYPE)],
        render_metrics(&state),
    )
        .into_response()
}

/// The service's metrics with each entitlement's quota; `stamp_site_up` is 0 when the site
/// database cannot be read or the audit log failed.
pub(crate) fn render_metrics(state: &AppState) -> String {
    let (quota, up) = match statuses(state) {
        Ok(s) => (
            s.into_iter()
                .map(|g| (g.entitlement_id, g.quota, g.remaining))
                .collect(),
            !state.engine_failed(),
        ),
        Err(_) => (Vec::new(), false),
    };
    state.metrics.render(&quota, up)
}

pub(super) async fn status(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
) -> Response {
    let station = match authorize(&state, &peer, None).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match statuses(&state) {
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
