//! Error answers: a stable code in the `stamp-error` header and the body, the HTTP status of each
//! refusal reason.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use stamp_core::audit::RefusalReason;

use super::ERROR_HEADER;

/// A failed request: HTTP status, stable code, message for the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    est: bool,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
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
