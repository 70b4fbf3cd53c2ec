//! The HTTP surface: WHIP (`/whip/{room}`) and WHEP (`/whep/{room}`) signalling (RFC 9725 and
//! the WHEP draft), `DELETE` on the returned `Location`, a room info endpoint, CORS and
//! `/healthz`, recording and broadcast control (`outputs`) and HLS files. Handlers validate input,
//! then talk to rooms through the registry; nothing here
//! touches media.

mod error;
mod layout;
mod outputs;
mod web;
mod ws;

pub use error::ApiError;

use crate::ids::{RoomId, SessionId};
use crate::room::{JoinOptions, Role, RoomRegistry};
use crate::sdp::parse_offer;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::cors::{Any, CorsLayer};

/// Largest accepted SDP offer.
pub const MAX_SDP_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub rooms: RoomRegistry,
}

pub fn router(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::IF_MATCH,
        ])
        .expose_headers([header::LOCATION, header::LINK, header::ETAG]);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/whip/{room}", post(whip))
        .route("/whip/{room}/{session}", axum::routing::delete(end_session))
        .route("/whep/{room}", post(whep))
        .route("/whep/{room}/{session}", axum::routing::delete(end_session))
        .route("/api/rooms/{room}", get(room_info))
        .route(
            "/api/rooms/{room}/layout",
            get(layout::get_layout).put(layout::put_layout),
        )
        .route(
            "/api/rooms/{room}/recordings",
            get(outputs::list_recordings).post(outputs::start_recording),
        )
        .route(
            "/api/rooms/{room}/recordings/{id}",
            get(outputs::get_recording).delete(outputs::stop_recording),
        )
        .route(
            "/api/rooms/{room}/recordings/{id}/pause",
            post(outputs::pause_recording),
        )
        .route(
            "/api/rooms/{room}/recordings/{id}/resume",
            post(outputs::resume_recording),
        )
        .route(
            "/api/rooms/{room}/streams",
            get(outputs::list_streams).post(outputs::start_stream),
        )
        .route(
            "/api/rooms/{room}/streams/{id}",
            get(outputs::get_stream).delete(outputs::stop_stream),
        )
        .route("/hls/{room}/{file}", get(outputs::hls_file))
        .route("/ws", get(ws::upgrade))
        .route("/", get(web::index))
        .route("/app.js", get(web::app_js))
        .route("/style.css", get(web::style))
        .route("/watch/{room}", get(web::watch))
        .route("/watch.js", get(web::watch_js))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(cors)
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "rooms": state.rooms.room_count() }))
}

fn room_id(s: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn read_offer(headers: &HeaderMap, body: Body) -> Result<String, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return Err(ApiError::UnsupportedMediaType("application/sdp"));
    }
    let too_large = ApiError::TooLarge {
        limit: MAX_SDP_BYTES,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_SDP_BYTES) {
        return Err(too_large);
    }
    let bytes = axum::body::to_bytes(body, MAX_SDP_BYTES)
        .await
        .map_err(|_| too_large)?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::BadRequest("the SDP offer is not UTF-8".into()))
}

/// `?max_tier=N`: the best rung of the encoder ladder this receiver may get (0 is the
/// canvas); it starts there and its link decides below it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinQuery {
    max_tier: Option<usize>,
}

async fn whip(
    State(state): State<AppState>,
    Path(room): Path<String>,
    query: Result<Query<JoinQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    join(state, room, query, headers, body, Role::Whip).await
}

async fn whep(
    State(state): State<AppState>,
    Path(room): Path<String>,
    query: Result<Query<JoinQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    join(state, room, query, headers, body, Role::Whep).await
}

async fn join(
    state: AppState,
    room: String,
    query: Result<Query<JoinQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
    role: Role,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let Query(query) =
        query.map_err(|e| ApiError::BadRequest(format!("bad query: {}", e.body_text())))?;
    let rungs = state.rooms.config().video.ladder().len();
    let max_tier = query.max_tier.unwrap_or(0);
    if max_tier >= rungs {
        return Err(ApiError::BadRequest(format!(
            "max_tier {max_tier}: the ladder has tiers 0..={}",
            rungs - 1
        )));
    }
    let offer = read_offer(&headers, body).await?;
    let summary = parse_offer(&offer)?;
    if role == Role::Whep && !summary.receives_audio() && !summary.receives_video() {
        return Err(ApiError::BadRequest(
            "a WHEP offer must receive audio or video (recvonly or sendrecv)".into(),
        ));
    }
    let answer = state
        .rooms
        .join(
            &room,
            role,
            offer,
            summary,
            JoinOptions {
                max_tier,
                ..JoinOptions::guest()
            },
        )
        .await?;
    let prefix = match role {
        Role::Whip => "whip",
        Role::Whep => "whep",
    };
    let location = format!("/{prefix}/{room}/{}", answer.session);
    let mut response = (StatusCode::CREATED, answer.sdp).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    for server in &state.rooms.config().rtc.ice_servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if !server.username.is_empty() {
                link.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    server.username, server.credential
                ));
            }
            if let Ok(v) = HeaderValue::from_str(&link) {
                h.append(header::LINK, v);
            }
        }
    }
    Ok(response)
}

async fn end_session(
    State(state): State<AppState>,
    Path((room, session)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let unknown = || ApiError::NotFound(format!("no session {session} in room {room}"));
    let id = SessionId::parse(&session).ok_or_else(unknown)?;
    state.rooms.leave(&room, id).await?;
    Ok(StatusCode::OK.into_response())
}

async fn room_info(
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let id = room_id(&room)?;
    let not_found = || ApiError::NotFound(format!("no room {id}"));
    let handle = state.rooms.get(&id).ok_or_else(not_found)?;
    let info = handle.info().await.map_err(|_| not_found())?;
    Ok(Json(info).into_response())
}
