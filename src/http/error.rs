//! HTTP errors: an honest status code and a short JSON body `{"error": "..."}`. Internal
//! details go to the log, not to the client.

use crate::room::RoomError;
use crate::rtc::RtcError;
use crate::sdp::OfferError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Content-Type must be {0}")]
    UnsupportedMediaType(&'static str),
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    /// No token, or a token that does not verify: 401 with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// A good token that does not allow this: 403.
    #[error("{0}")]
    Forbidden(String),
    /// One client over its own limit: 429 with `Retry-After`.
    #[error("{message}")]
    TooMany { message: String, retry_after_s: u32 },
    /// The server or a room at a limit: 503 with `Retry-After`.
    #[error("{message}")]
    Busy { message: String, retry_after_s: u32 },
    #[error("{0}")]
    InsufficientStorage(String),
    /// A server-side failure the client should see (a directory that cannot be written).
    #[error("{0}")]
    Server(String),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        let mut r = (self.status(), Json(body)).into_response();
        let h = r.headers_mut();
        match &self {
            ApiError::Unauthorized(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"mixdown\""),
                );
            }
            ApiError::TooMany { retry_after_s, .. } | ApiError::Busy { retry_after_s, .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            _ => {}
        }
        r
    }
}

impl From<OfferError> for ApiError {
    fn from(e: OfferError) -> Self {
        match e {
            OfferError::NoSupportedCodec => ApiError::NotAcceptable(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::NotOpen(_) => ApiError::NotFound(e.to_string()),
            RoomError::Full { .. }
            | RoomError::TooManyViewers { .. }
            | RoomError::TooManyRooms(_) => ApiError::Busy {
                message: e.to_string(),
                retry_after_s: 30,
            },
            RoomError::Closed(_) => ApiError::Unavailable(e.to_string()),
            RoomError::Draining(s) => ApiError::Busy {
                message: e.to_string(),
                retry_after_s: s,
            },
            RoomError::UnknownSession { .. } => ApiError::NotFound(e.to_string()),
            RoomError::NothingToDo | RoomError::BadLayout(_) => ApiError::BadRequest(e.to_string()),
            RoomError::Rtc(RtcError::Offer(msg)) => {
                ApiError::BadRequest(format!("the offer could not be applied: {msg}"))
            }
            other => {
                tracing::error!("join failed: {other}");
                ApiError::Internal
            }
        }
    }
}

impl From<crate::auth::Denied> for ApiError {
    fn from(d: crate::auth::Denied) -> Self {
        match d {
            crate::auth::Denied::Unauthenticated(m) => ApiError::Unauthorized(m),
            crate::auth::Denied::Forbidden(m) => ApiError::Forbidden(m),
        }
    }
}
