//! Recording and broadcast endpoints: `/api/rooms/{room}/recordings` and `/streams` (start,
//! list, inspect, pause/resume, stop), and the HLS files under `/hls/{room}/`.

use super::{ApiError, AppState, room_id};
use crate::output::spec::RecordFormat;
use crate::output::{Control, OutputError, OutputInfo, OutputKind, OutputRequest};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// Largest accepted JSON body.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordingBody {
    format: String,
    name: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamBody {
    kind: String,
    url: Option<String>,
}

impl From<OutputError> for ApiError {
    fn from(e: OutputError) -> Self {
        match e {
            OutputError::BadRequest(m) => ApiError::BadRequest(m),
            OutputError::Conflict(m) => ApiError::Conflict(m),
            OutputError::NotFound(m) => ApiError::NotFound(m),
            OutputError::RoomClosed => ApiError::NotFound("the room has closed".into()),
            OutputError::Quota(m) => ApiError::InsufficientStorage(m),
            // The room actor has logged these already.
            OutputError::Storage { ref source, .. } => {
                // ENOSPC: the disk is full.
                if source.raw_os_error() == Some(28) {
                    ApiError::InsufficientStorage(e.to_string())
                } else {
                    ApiError::Server(e.to_string())
                }
            }
            OutputError::Pipeline(_) => ApiError::Server(e.to_string()),
        }
    }
}

async fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" {
        return Err(ApiError::UnsupportedMediaType("application/json"));
    }
    let bytes = axum::body::to_bytes(body, MAX_JSON_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge {
            limit: MAX_JSON_BYTES,
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn created(kind: &str, info: OutputInfo) -> Response {
    let location = format!("/api/rooms/{}/{kind}/{}", info.room, info.id);
    let mut r = (StatusCode::CREATED, Json(info)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

async fn list(state: &AppState, room: &str, kind: OutputKind) -> Result<Response, ApiError> {
    let id = room_id(room)?;
    let mut items: Vec<serde_json::Value> = state
        .rooms
        .outputs()
        .list(&id, kind)
        .into_iter()
        .filter_map(|i| serde_json::to_value(i).ok())
        .collect();
    // In a cluster: recordings that failed with a node that died while serving this room.
    if kind == OutputKind::Recording
        && let Some(cluster) = &state.cluster
    {
        items.extend(cluster.failed_recordings(id.as_str()).await);
    }
    if items.is_empty() && state.rooms.get(&id).is_none() {
        return Err(ApiError::NotFound(format!("no room {id}")));
    }
    Ok(Json(items).into_response())
}

fn one(state: &AppState, room: &str, kind: OutputKind, id: &str) -> Result<Response, ApiError> {
    let room = room_id(room)?;
    state
        .rooms
        .outputs()
        .get(&room, kind, id)
        .map(|i| Json(i).into_response())
        .ok_or_else(|| ApiError::NotFound(format!("no such output {id} in room {room}")))
}

async fn control(
    state: &AppState,
    room: &str,
    kind: OutputKind,
    id: &str,
    make: fn(tokio::sync::oneshot::Sender<Result<OutputInfo, OutputError>>) -> Control,
) -> Result<Response, ApiError> {
    let room = room_id(room)?;
    let info = state.rooms.outputs().control(&room, kind, id, make).await?;
    Ok(Json(info).into_response())
}

pub(super) async fn start_recording(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let body: RecordingBody = read_json(&headers, body).await?;
    let format = RecordFormat::parse(&body.format).map_err(ApiError::BadRequest)?;
    let request = OutputRequest::Recording {
        format,
        name: body.name,
    };
    let info = state.rooms.start_output(&room, request).await?;
    Ok(created("recordings", info))
}

pub(super) async fn list_recordings(
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    list(&state, &room, OutputKind::Recording).await
}

pub(super) async fn get_recording(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    one(&state, &room, OutputKind::Recording, &id)
}

pub(super) async fn pause_recording(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    control(&state, &room, OutputKind::Recording, &id, Control::Pause).await
}

pub(super) async fn resume_recording(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    control(&state, &room, OutputKind::Recording, &id, Control::Resume).await
}

pub(super) async fn stop_recording(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    control(&state, &room, OutputKind::Recording, &id, Control::Stop).await
}

pub(super) async fn start_stream(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let body: StreamBody = read_json(&headers, body).await?;
    let request = match (body.kind.as_str(), body.url) {
        ("hls", None) => OutputRequest::Hls,
        ("hls", Some(_)) => {
            return Err(ApiError::BadRequest(
                "an HLS stream takes no url: it is served at /hls/{room}/index.m3u8".into(),
            ));
        }
        ("rtmp", Some(url)) => {
            // Checked here, before the room is asked: resolving the host must not hold up the
            // room's actor, and a refused destination starts nothing.
            use crate::output::destination::{Policy, RESOLVE_TIMEOUT, RtmpUrl};
            let target = RtmpUrl::parse(&url).map_err(ApiError::BadRequest)?;
            let policy = Policy::new(state.rooms.config().rtmp.allow.clone());
            let resolved: Vec<std::net::SocketAddr> = if policy.needs_addresses(&url) {
                let lookup = tokio::net::lookup_host(target.lookup_target());
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(addrs)) => addrs.collect(),
                    // Only "cannot resolve host" reaches the caller.
                    Ok(Err(e)) => {
                        tracing::debug!(host = %target.host, "RTMP host did not resolve: {e}");
                        Vec::new()
                    }
                    Err(_) => {
                        tracing::debug!(host = %target.host, "RTMP host resolution timed out");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            if let Err(refused) = policy.check(&url, &resolved) {
                tracing::warn!(%room, "{refused}");
                return Err(ApiError::BadRequest(refused));
            }
            OutputRequest::Rtmp { url }
        }
        ("rtmp", None) => {
            return Err(ApiError::BadRequest(
                "an RTMP stream needs \"url\": \"rtmp://host/app/key\"".into(),
            ));
        }
        (other, _) => {
            return Err(ApiError::BadRequest(format!(
                "unknown stream kind {other:?}: use \"hls\" or \"rtmp\""
            )));
        }
    };
    let info = state.rooms.start_output(&room, request).await?;
    Ok(created("streams", info))
}

pub(super) async fn list_streams(
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    list(&state, &room, OutputKind::Stream).await
}

pub(super) async fn get_stream(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    one(&state, &room, OutputKind::Stream, &id)
}

pub(super) async fn stop_stream(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    control(&state, &room, OutputKind::Stream, &id, Control::Stop).await
}

/// Serves a room's HLS playlist and segments from `hls.dir/{room}/`.
pub(super) async fn hls_file(
    State(state): State<AppState>,
    Path((room, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let not_found = || ApiError::NotFound(format!("no HLS file {file} for room {room}"));
    let safe = !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    let content_type = match file.rsplit_once('.') {
        Some((_, "m3u8")) => "application/vnd.apple.mpegurl",
        Some((_, "ts")) => "video/mp2t",
        _ => return Err(not_found()),
    };
    if !safe {
        return Err(not_found());
    }
    let path = state.rooms.config().hls.dir.join(room.as_str()).join(&file);
    let data = tokio::fs::read(&path).await.map_err(|_| not_found())?;
    let cache = if content_type == "video/mp2t" {
        "max-age=60"
    } else {
        "no-cache"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        data,
    )
        .into_response())
}
