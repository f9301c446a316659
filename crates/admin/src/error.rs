//! `ApiError`: every failure of an admin call, mapped to its status and a
//! JSON body that says what is wrong. Internal details are logged, never sent.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use inferlb_core::StateError;
use serde::Serialize;
use utoipa::ToSchema;

use inferlb_control::writer::ControlError;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `bad_request`.
    pub error: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// On a 409 for a taken id or address: the replica that holds it now
    /// (in a fleet, perhaps added through another instance meanwhile).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub current: Option<serde_json::Value>,
}

/// A failed admin call.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed or a value is invalid.
    BadRequest(String),
    /// 401: the bearer token is missing or wrong.
    Unauthorized,
    /// 404: no such replica.
    NotFound(String),
    /// 409: the id or address is taken.
    Conflict(String),
    /// 409, with the state met: the replica that holds the id or address.
    ConflictWith(String, serde_json::Value),
    /// 421: without a token, only a loopback `Host` is served.
    MisdirectedHost,
    /// 413: the body is over 64 KiB.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 500: the change could not be made durable; nothing changed.
    Persist(String),
    /// 500: something else failed on the server (e.g. encoding metrics).
    Internal(String),
    /// 503: in a fleet, etcd cannot be reached; nothing was changed.
    Unavailable(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required (Authorization: Bearer <token>)".into(),
            ),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
            Self::Conflict(m) | Self::ConflictWith(m, _) => {
                (StatusCode::CONFLICT, "conflict", m.clone())
            }
            Self::MisdirectedHost => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                "without an admin token only requests to localhost or a loopback address are served (DNS rebinding protection); configure a token to reach the API by another name".into(),
            ),
            Self::PayloadTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is over 64 KiB".into())
            }
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json".into(),
            ),
            Self::Persist(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the change could not be saved to the state file; nothing was changed (see the server log)".into(),
            ),
            Self::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m.clone()),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server could not answer this request (see the server log)".into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Persist(detail) | Self::Internal(detail) = &self {
            tracing::error!(error = %detail, "admin call failed");
        }
        let (status, error, message) = self.parts();
        let current = match self {
            Self::ConflictWith(_, current) => Some(current),
            _ => None,
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error,
                message,
                current,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::State(StateError::NotFound { id }) => {
                Self::NotFound(format!("no replica has id {id}"))
            }
            ControlError::State(StateError::PoolNotFound { name }) => {
                Self::NotFound(format!("no pool is named {name}"))
            }
            ControlError::State(e @ StateError::NotAutoscaling { .. }) => {
                Self::NotFound(e.to_string())
            }
            ControlError::State(
                e @ (StateError::IdExists { .. }
                | StateError::AddressExists { .. }
                | StateError::AliasTaken { .. }),
            ) => Self::Conflict(e.to_string()),
            ControlError::Persist(e) => Self::Persist(e.to_string()),
            e @ ControlError::Unavailable(_) => Self::Unavailable(e.to_string()),
            e @ ControlError::Contended(_) => Self::Conflict(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Self::PayloadTooLarge
            }
            JsonRejection::JsonDataError(e) => {
                Self::BadRequest(format!("invalid body: {}", e.body_text()))
            }
            JsonRejection::JsonSyntaxError(e) => {
                Self::BadRequest(format!("malformed JSON: {}", e.body_text()))
            }
            other => Self::BadRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(format!("invalid query: {}", rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_persistence_failure_talks_about_the_state_file() {
        let (_, _, persist) = ApiError::Persist("disk full".into()).parts();
        assert!(persist.contains("state file"));
        let (status, _, other) = ApiError::Internal("cannot encode metrics".into()).parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!other.contains("state file"), "{other}");
    }
}
