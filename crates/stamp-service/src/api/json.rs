//! The JSON API: provision, hand-out, renew.

use axum::extract::State;
use axum::Extension;
use serde::Deserialize;

use super::*;
use crate::metrics::IssuedKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProvisionRequest {
    entitlement: Option<String>,
    csr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HandOutRequest {
    entitlement: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RenewRequest {
    csr: String,
    /// The device's proof of possession, base64 (a renewal for a new key needs it).
    proof: Option<String>,
}

/// HTTP header of an EST re-enrollment that carries the device's proof of possession (base64).
pub const PROOF_HEADER: &str = "stamp-possession-proof";

/// A proof of possession from its base64 text; text that is not base64 (or too long) becomes an
/// empty proof, which the engine refuses (and logs) as `possession-not-proven`.
pub(super) fn proof_bytes(text: &[u8]) -> Vec<u8> {
    stamp_core::pkcs7::base64_decode(text, stamp_core::device::MAX_RENEWAL_PROOF * 2).unwrap_or_default()
}

pub(super) fn entitlement_or_default(state: &AppState, given: Option<String>) -> String {
    given
        .or_else(|| state.config.default_entitlement().map(str::to_owned))
        .map(|e| bounded_id(&e))
        .unwrap_or_default()
}

pub(super) async fn provision(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    timed(&state, false, async {
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
        Ok::<_, ApiError>(stamp_answer(&state, &stamp, IssuedKind::Device))
    })
    .await
}

pub(super) async fn hand_out(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    timed(&state, false, async {
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
    })
    .await
}

pub(super) async fn renew_json(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    timed(&state, false, async {
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
        Ok::<_, ApiError>(stamp_answer(&state, &stamp, IssuedKind::Renewal))
    })
    .await
}

/// A device's stamp as the JSON answer, counted in the metrics as `kind`.
fn stamp_answer(state: &AppState, stamp: &DeviceStamp, kind: IssuedKind) -> Response {
    state.metrics.issued(kind);
    with_outcome(
        axum::Json(stamp_reply(state, stamp)).into_response(),
        stamp.device_serial,
    )
}
