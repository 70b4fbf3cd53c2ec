//! The HTTP surface: WHIP (`/whip/{room}`) and WHEP (`/whep/{room}`) signalling (RFC 9725 and
//! the WHEP draft), `DELETE` on the returned `Location`, a room info endpoint, CORS and
//! `/healthz`, recording and broadcast control (`outputs`) and HLS files. Handlers validate input,
//! then talk to rooms through the registry; nothing here
//! touches media.

mod access;
mod datachannel;
mod error;
mod layout;
mod outputs;
mod web;
mod ws;

pub use error::ApiError;

use crate::auth::Action;
use crate::ids::{RoomId, SessionId};
use crate::room::{JoinOptions, Role, RoomRegistry};
use crate::sdp::parse_offer;
use access::{ClientAddr, Need};
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
/// Response header of a WHIP/WHEP answer that refused sections of the offer: a JSON list of
/// `{"mid", "kind", "codecs", "reason"}` (the WebSocket sends a `refused` message instead).
pub const REFUSED_HEADER: &str = "mixdown-refused";

#[derive(Clone)]
pub struct AppState {
    pub rooms: RoomRegistry,
    pub auth: std::sync::Arc<crate::auth::Auth>,
    /// Other nodes sharing rooms through Redis (`[cluster]`), if configured.
    pub cluster: Option<crate::cluster::Cluster>,
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
        .expose_headers([
            header::LOCATION,
            header::LINK,
            header::ETAG,
            header::HeaderName::from_static(REFUSED_HEADER),
        ]);
    let guarded =
        |need: Need| axum::middleware::from_fn_with_state((state.clone(), need), access::guard);
    let rooms = Router::new()
        .route("/api/rooms/{room}", get(room_info))
        .route(
            "/api/rooms/{room}/layout",
            get(layout::get_layout).put(layout::put_layout),
        )
        .route(
            "/api/rooms/{room}/participants/{id}",
            axum::routing::delete(remove_participant),
        )
        .route(
            "/api/rooms/{room}/participants/{id}/stats",
            get(participant_stats),
        )
        .route_layer(guarded(Need::ViewOrAdmin));
    let record = Router::new()
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
        .route_layer(guarded(Need::Record));
    let hls = Router::new()
        .route("/hls/{room}/{file}", get(outputs::hls_file))
        .route_layer(guarded(Need::Subscribe));
    let list = Router::new()
        .route("/api/rooms", get(list_rooms))
        .route_layer(guarded(Need::List));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/whip/{room}", post(whip))
        .route("/whip/{room}/{session}", axum::routing::delete(end_session))
        .route("/whep/{room}", post(whep))
        .route("/whep/{room}/{session}", axum::routing::delete(end_session))
        .merge(rooms)
        .merge(record)
        .merge(hls)
        .merge(list)
        .route("/ws", get(ws::upgrade))
        .route("/", get(web::index))
        .route("/app.js", get(web::app_js))
        .route("/style.css", get(web::style))
        .route("/watch/{room}", get(web::watch))
        .route("/watch.js", get(web::watch_js))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cluster_redirect,
        ))
        .layer(cors)
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "rooms": state.rooms.room_count(),
        "auth": if state.auth.is_open() { "open" } else { "tokens" },
        // How often each limit refused something since start.
        "refused": state.rooms.counters().snapshot(),
        // With `[cluster]`: this node's name and whether Redis answers.
        "cluster": state.cluster.as_ref().map(|c| serde_json::json!({
            "node": c.id(),
            "url": c.url(),
            "redis": if c.redis_up() { "up" } else { "down" },
        })),
    }))
}

/// `GET /readyz`: whether to send this server new joins. 503 with `Retry-After` while it
/// drains for a shutdown (the calls in progress go on); `/healthz` stays the liveness check.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.rooms.is_draining() {
        let retry = state.rooms.retry_after_s();
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": "shutting down" })),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry));
        return r;
    }
    Json(serde_json::json!({ "ready": true })).into_response()
}

/// `GET /metrics`: Prometheus' text format. Like `/healthz` it needs no token: it holds
/// aggregate numbers only, no room names, ids or addresses.
async fn metrics(State(state): State<AppState>) -> Response {
    let mut scrape = crate::metrics::Scrape {
        rooms: state.rooms.room_infos().await,
        ..Default::default()
    };
    scrape.outputs = state.rooms.outputs().all();
    scrape.refused = state.rooms.counters().entries().to_vec();
    let dir = state.rooms.config().recording.dir.clone();
    scrape.recording_bytes =
        tokio::task::spawn_blocking(move || crate::output::storage::usage(&dir))
            .await
            .unwrap_or(0);
    scrape.process = crate::metrics::ProcessStats::read();
    let body = crate::metrics::render(&scrape, &crate::metrics::METRICS);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// `GET /api/rooms` (`roomList`): open rooms' names.
/// The open rooms' names; with a cluster, those of every node, and `cluster` gives each
/// room's node (this node's own rooms alone while Redis cannot be asked).
async fn list_rooms(State(state): State<AppState>) -> Json<serde_json::Value> {
    if let Some(cluster) = &state.cluster
        && let Some(rooms) = cluster.rooms().await
    {
        let mut names: Vec<String> = rooms.iter().map(|r| r.room.clone()).collect();
        for local in state.rooms.room_names() {
            if !names.contains(&local) {
                names.push(local);
            }
        }
        names.sort();
        return Json(serde_json::json!({ "rooms": names, "cluster": rooms }));
    }
    Json(serde_json::json!({ "rooms": state.rooms.room_names() }))
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
    /// Set by a cluster node's redirect: this node was chosen, it claims the room rather
    /// than place it again.
    placed: Option<u8>,
}

/// `307 Temporary Redirect` to the same path and query on another node (`base`), `extra`
/// appended to the query.
fn redirect_to(base: &str, uri: &axum::http::Uri, extra: &str) -> Response {
    let mut query = uri.query().unwrap_or("").to_owned();
    if !extra.is_empty() && !query.split('&').any(|kv| kv == extra) {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(extra);
    }
    let target = if query.is_empty() {
        format!("{base}{}", uri.path())
    } else {
        format!("{base}{}?{query}", uri.path())
    };
    let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(&target) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// With a cluster: requests about a room another live node serves (its REST API, HLS,
/// leaving a WHIP/WHEP session) are redirected there with `307`, which keeps the method and
/// body. Joins are placed in their handler, after their token is checked.
async fn cluster_redirect(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(cluster) = &state.cluster else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let mut parts = path.trim_start_matches('/').split('/');
    let room = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("whip" | "whep"), Some(room), Some(_), None) => room,
        (Some("api"), Some("rooms"), Some(room), _) => room,
        (Some("hls"), Some(room), Some(_), _) => room,
        _ => return next.run(request).await,
    };
    let Ok(room) = RoomId::parse(room) else {
        return next.run(request).await;
    };
    if state.rooms.get(&room).is_some() {
        return next.run(request).await;
    }
    match cluster.owner_elsewhere(room.as_str()).await {
        Some(owner) => redirect_to(&owner.url, request.uri(), ""),
        None => next.run(request).await,
    }
}

async fn whip(
    State(state): State<AppState>,
    Path(room): Path<String>,
    uri: axum::http::Uri,
    query: Result<Query<JoinQuery>, QueryRejection>,
    addr: ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    join(state, room, uri, query, addr, headers, body, Role::Whip).await
}

async fn whep(
    State(state): State<AppState>,
    Path(room): Path<String>,
    uri: axum::http::Uri,
    query: Result<Query<JoinQuery>, QueryRejection>,
    addr: ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    join(state, room, uri, query, addr, headers, body, Role::Whep).await
}

#[allow(clippy::too_many_arguments)]
async fn join(
    state: AppState,
    room: String,
    uri: axum::http::Uri,
    query: Result<Query<JoinQuery>, QueryRejection>,
    addr: ClientAddr,
    headers: HeaderMap,
    body: Body,
    role: Role,
) -> Result<Response, ApiError> {
    let arrived = std::time::Instant::now();
    let room = room_id(&room)?;
    // The token before the body: a refused client costs no offer parsing.
    let grants = access::grants(&state, &headers)?;
    access::allow(&state, &grants, room.as_str(), &[Action::Join])?;
    let Query(query) =
        query.map_err(|e| ApiError::BadRequest(format!("bad query: {}", e.body_text())))?;
    // With a cluster, the room goes where it is served (or is claimed here).
    if let Some(cluster) = &state.cluster {
        let local = state.rooms.get(&room).is_some();
        if let crate::cluster::Placement::Remote { url, node } = cluster
            .place(room.as_str(), query.placed.is_some(), local)
            .await
        {
            tracing::debug!(%room, %node, "cluster: join redirected");
            return Ok(redirect_to(&url, &uri, "placed=1"));
        }
    }
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
    let publishes = role == Role::Whip && (summary.publishes_audio() || summary.publishes_video());
    if publishes {
        access::allow(&state, &grants, room.as_str(), &[Action::Publish])?;
    }
    if summary.receives_audio() || summary.receives_video() {
        access::allow(&state, &grants, room.as_str(), &[Action::Subscribe])?;
    }
    // A publisher opens its room; a viewer only with `roomCreate` (else one anonymous
    // receive-only POST per room name would start a compose and an encode).
    let create = publishes || grants.allow(room.as_str(), Action::Create).is_ok();
    let slot = access::address_slot(&state, &addr)?;
    let mut options = JoinOptions {
        max_tier,
        hidden: grants.video.hidden && !publishes,
        slot,
        ..JoinOptions::guest()
    };
    if let Some(name) = [&grants.name, &grants.identity]
        .into_iter()
        .find(|n| !n.is_empty())
    {
        options.name = name.chars().take(crate::signal::MAX_NAME_CHARS).collect();
    }
    // An offer with a data channel section: the room's messages go on the `mixdown` channel.
    let channel = summary
        .data_channel
        .is_some()
        .then(datachannel::DataChannel::new);
    let channel = channel.map(|c| {
        options.events = Some(c.events);
        options.data = Some(crate::room::DataSlot::new(c.pipe));
        c.ends
    });
    let refused = summary.refused.clone();
    let answer = state
        .rooms
        .join(&room, role, offer, summary, options, create)
        .await?;
    if let Some(ends) = channel {
        tokio::spawn(datachannel::serve(
            state.clone(),
            room.clone(),
            answer.session,
            grants.clone(),
            ends,
        ));
    }
    crate::metrics::METRICS
        .join_seconds
        .observe(arrived.elapsed().as_secs_f64());
    let prefix = match role {
        Role::Whip => "whip",
        Role::Whep => "whep",
    };
    // The resource URL is a capability: the session's public id and a secret only its
    // holder has (RFC 9725 ch. 4.3); the public id alone deletes nothing.
    let public = answer.session.to_string();
    let secret = state.auth.capability(room.as_str(), &public);
    let mut location = format!("/{prefix}/{room}/{public}{secret}");
    // In a cluster the resource lives on this node, whichever node the client asked first.
    if let Some(cluster) = &state.cluster {
        location = format!("{}{location}", cluster.url());
    }
    let mut response = (StatusCode::CREATED, answer.sdp).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    // What the answer refused (each section's mid, kind and reason), for clients that
    // cannot tell from the SDP why a section carries nothing.
    if !refused.is_empty()
        && let Ok(v) = serde_json::to_string(&refused)
            .map_err(|_| ())
            .and_then(|j| HeaderValue::from_str(&j).map_err(|_| ()))
    {
        h.insert(REFUSED_HEADER, v);
    }
    // TURN credentials name the token's identity, or the session for a tokenless caller.
    let identity = if grants.identity.is_empty() {
        public.as_str()
    } else {
        grants.identity.as_str()
    };
    let servers =
        crate::turn::ice_servers(&state.rooms.config().rtc, identity, crate::auth::now_unix());
    for server in &servers {
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

/// `DELETE` on a WHIP/WHEP resource URL: the URL itself is the credential.
async fn end_session(
    State(state): State<AppState>,
    Path((room, session)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    // The refusal does not echo the URL: it is a secret.
    let unknown = || ApiError::NotFound(format!("no such session in room {room}"));
    let id = state
        .auth
        .check_capability(room.as_str(), &session)
        .and_then(SessionId::parse)
        .ok_or_else(unknown)?;
    state.rooms.leave(&room, id).await.map_err(|_| unknown())?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /api/rooms/{room}/participants/{id}` (`roomAdmin`): removes a participant by the
/// public id the room shows.
async fn remove_participant(
    State(state): State<AppState>,
    Path((room, session)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let room = room_id(&room)?;
    let unknown = || ApiError::NotFound(format!("no participant {session} in room {room}"));
    let id = SessionId::parse(&session).ok_or_else(unknown)?;
    state.rooms.leave(&room, id).await.map_err(|_| unknown())?;
    tracing::info!(room = %room, session = %id, "removed by an administrator");
    Ok(StatusCode::OK.into_response())
}

/// `GET /api/rooms/{room}/participants/{id}/stats` (`id`: the session id the room info
/// lists): the server's side of `getStats` for one session.
async fn participant_stats(
    State(state): State<AppState>,
    Path((room, session)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    #[derive(serde::Serialize)]
    struct Body {
        session: String,
        name: String,
        /// The quality label it receives (`"360p"`, `"audio only"`, …).
        quality: Option<String>,
        #[serde(flatten)]
        stats: crate::room::ParticipantStats,
    }
    let id = room_id(&room)?;
    let not_found = || ApiError::NotFound(format!("no participant {session} in room {id}"));
    let info = state.rooms.room_info(&id).await.ok_or_else(not_found)?;
    let p = info
        .participants
        .into_iter()
        .find(|p| p.session == session)
        .ok_or_else(not_found)?;
    Ok(Json(Body {
        session: p.session,
        name: p.name,
        quality: p.quality.map(|q| q.label),
        stats: p.stats,
    })
    .into_response())
}

async fn room_info(
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let id = room_id(&room)?;
    let info = state
        .rooms
        .room_info(&id)
        .await
        .ok_or_else(|| ApiError::NotFound(format!("no room {id}")))?;
    Ok(Json(info).into_response())
}
