//! HTTP errors: an honest status code and a short JSON body `{"error": "..."}`. Internal
//! details go to the log, not to the client.

use crate::room::RoomError;
use crate::rtc::RtcError;
use crate::sdp::OfferError;
use axum::Json;
use axum::http::StatusCode;
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
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), Json(body)).into_response()
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
            RoomError::Full { .. } | RoomError::Closed(_) => ApiError::Unavailable(e.to_string()),
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
