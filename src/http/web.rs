//! The browser app, embedded in the binary (`web/`): the conference page at `/`, watch mode
//! at `/watch/{room}`, and their script and style. No build step; nothing read from disk.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");
const WATCH: &str = include_str!("../../web/watch.html");
const WATCH_JS: &str = include_str!("../../web/watch.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small and embedded: always revalidate so an upgraded server is picked up.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(super) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The room name is read by the page from its own URL.
pub(super) async fn watch() -> Response {
    asset("text/html; charset=utf-8", WATCH)
}

pub(super) async fn watch_js() -> Response {
    asset("text/javascript; charset=utf-8", WATCH_JS)
}
