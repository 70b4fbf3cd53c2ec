//! Who may do what over HTTP: the bearer token of a request ([`grants`]), a route layer that
//! checks one grant on a room's routes ([`guard`]), and the client address sessions are
//! counted by ([`ClientAddr`]).

use super::{ApiError, AppState};
use crate::auth::{Action, Denied, Grants, bearer, now_unix};
use crate::limits::Counters;
use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};

/// The token a request carries: `Authorization: Bearer`, else (where `query` is allowed:
/// HLS, whose players cannot always set headers) `?token=`.
fn token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Result<Option<&'a str>, Denied> {
    match headers.get(header::AUTHORIZATION) {
        Some(v) => {
            let v = v.to_str().unwrap_or("");
            bearer(v).map(Some).ok_or_else(|| {
                Denied::Unauthenticated("Authorization must be \"Bearer <token>\"".into())
            })
        }
        None => Ok(query.and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .filter(|t| !t.is_empty())
        })),
    }
}

/// Counts a refusal in `/healthz` (HTTP and WebSocket alike).
pub(super) fn count_refusal(state: &AppState, d: &Denied) {
    let c = state.rooms.counters();
    match d {
        Denied::Unauthenticated(_) => Counters::bump(&c.unauthorized),
        Denied::Forbidden(_) => Counters::bump(&c.forbidden),
    }
}

/// Counts a refusal and turns it into its HTTP error.
pub(super) fn refused(state: &AppState, d: Denied) -> ApiError {
    count_refusal(state, &d);
    d.into()
}

/// The grants of a request's token (everything when Mixdown runs open).
pub(super) fn grants(state: &AppState, headers: &HeaderMap) -> Result<Grants, ApiError> {
    token(headers, None)
        .and_then(|t| state.auth.grants(t, now_unix()))
        .map_err(|d| refused(state, d))
}

/// Checks `actions` on `room` for `grants`, counting a refusal.
pub(super) fn allow(
    state: &AppState,
    grants: &Grants,
    room: &str,
    actions: &[Action],
) -> Result<(), ApiError> {
    for a in actions {
        grants.allow(room, *a).map_err(|d| refused(state, d))?;
    }
    Ok(())
}

/// What a guarded group of routes needs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Need {
    /// `GET` views the room, other methods administer it (layout, participants).
    ViewOrAdmin,
    Record,
    /// Receive the room's media (HLS), token also accepted as `?token=`.
    Subscribe,
    /// The room list.
    List,
}

/// Route layer: checks the request's token for its `{room}` before the handler runs.
pub(super) async fn guard(
    State((state, need)): State<(AppState, Need)>,
    params: RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    let room = params
        .iter()
        .find(|(k, _)| *k == "room")
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    let action = match need {
        Need::ViewOrAdmin if request.method() == Method::GET => Action::View,
        Need::ViewOrAdmin => Action::Admin,
        Need::Record => Action::Record,
        Need::Subscribe => Action::Subscribe,
        Need::List => Action::List,
    };
    let query = match need {
        Need::Subscribe => request.uri().query(),
        _ => None,
    };
    let checked = token(request.headers(), query)
        .and_then(|t| state.auth.grants(t, now_unix()))
        .and_then(|g| g.allow(&room, action));
    match checked {
        Ok(()) => next.run(request).await,
        Err(d) => refused(&state, d).into_response(),
    }
}

/// The client's address, when the server knows it (connections accepted by [`crate::app`]);
/// requests made in-process (tests) have none and are not counted.
pub(super) struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// A session's share of its address's limit (none for an unknown address).
pub(super) fn address_slot(
    state: &AppState,
    addr: &ClientAddr,
) -> Result<Option<std::sync::Arc<crate::limits::Slot>>, ApiError> {
    let Some(ip) = addr.0 else { return Ok(None) };
    state
        .rooms
        .address_slot(ip)
        .map(Some)
        .ok_or_else(|| ApiError::TooMany {
            message: format!(
                "{ip} already has {} sessions open (limits.sessions_per_address)",
                state.rooms.config().limits.sessions_per_address
            ),
            retry_after_s: 10,
        })
}
