//! The HTTP surface against `router()` without a socket: bad input gets an honest status and
//! a JSON error, never a panic.

use crate::common::test_config;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn app() -> axum::Router {
    mixdown::mixer::init().unwrap();
    mixdown::http::router(mixdown::app::state(test_config()).expect("state"))
}

async fn send(req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let res = app().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn offer(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap()
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON error body");
    v["error"].as_str().expect("error field").to_owned()
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let (s, _, body) = send(offer("/whip/r", "application/json", "{}")).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error_of(&body).contains("application/sdp"));
}

#[tokio::test]
async fn oversized_offer_is_413() {
    let big = format!("v=0\r\n{}", "a=x\r\n".repeat(20_000));
    let (s, _, body) = send(offer("/whip/r", "application/sdp", big)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(&body).contains("65536"));
}

#[tokio::test]
async fn malformed_sdp_is_400_naming_the_problem() {
    for (sdp, words) in [
        ("hello", "v=0"),
        ("v=0\r\nm=video\r\n", "line 2"),
        ("v=0\r\ns=-\r\n", "no audio or video"),
    ] {
        let (s, _, body) = send(offer("/whip/r", "application/sdp", sdp)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{sdp:?}");
        assert!(error_of(&body).contains(words), "{sdp:?}: {body}");
    }
    let (s, _, _) = send(offer("/whip/r", "application/sdp", vec![0xffu8, 0xfe])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "not UTF-8");
}

#[tokio::test]
async fn offer_without_usable_codec_is_406_naming_the_accepted_ones() {
    // G.722 and AV1: WebRTC codecs Mixdown does not take.
    let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 9\r\na=rtpmap:9 G722/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 45\r\na=rtpmap:45 AV1/90000\r\n";
    let (s, _, body) = send(offer("/whip/r", "application/sdp", sdp)).await;
    assert_eq!(s, StatusCode::NOT_ACCEPTABLE);
    let e = error_of(&body);
    assert!(
        e.contains("VP8") && e.contains("VP9") && e.contains("H264") && e.contains("PCMU"),
        "{e}"
    );
}

#[tokio::test]
async fn offer_webrtc_rejects_is_400_and_leaves_no_room() {
    // Parses as SDP with a usable codec, but has no ICE credentials or fingerprint.
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:96 VP8/90000\r\n";
    let state = mixdown::app::state(test_config()).expect("state");
    mixdown::mixer::init().unwrap();
    let router = mixdown::http::router(state.clone());
    let res = router
        .oneshot(offer("/whip/bad", "application/sdp", sdp))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    for _ in 0..100 {
        if state.rooms.live_rooms() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state.rooms.room_count(), 0);
    assert_eq!(state.rooms.live_rooms(), 0);
    assert_eq!(state.rooms.peers().sessions_open(), 0);
}

#[tokio::test]
async fn unknown_session_is_404() {
    for path in [
        "/whip/r/0123456789abcdef",
        "/whep/r/nonsense",
        "/whip/r/ffffffffffffffff",
    ] {
        let req = Request::delete(path).body(Body::empty()).unwrap();
        let (s, _, body) = send(req).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert!(!error_of(&body).is_empty());
    }
    let (s, _, _) = send(
        Request::get("/api/rooms/nobody")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = send(Request::get("/nothing/here").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_room_name_is_400() {
    let (s, _, body) = send(offer("/whip/a%20b", "application/sdp", "v=0\r\n")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("room names"));
}

#[tokio::test]
async fn cors_preflight_and_health() {
    let req = Request::options("/whip/r")
        .header(header::ORIGIN, "https://example.org")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = send(req).await;
    assert!(s.is_success(), "{s}");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(
        h[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    let req = Request::get("/healthz")
        .header(header::ORIGIN, "https://example.org")
        .body(Body::empty())
        .unwrap();
    let (s, h, body) = send(req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("ok"));
    assert!(
        h[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("location")
    );
}

#[tokio::test]
async fn a_quality_cap_the_ladder_does_not_have_is_400() {
    // The default ladder has three rungs: 0 (the canvas), 1 and 2.
    for (path, words) in [
        ("/whep/r?max_tier=3", "tiers 0..=2"),
        ("/whip/r?max_tier=-1", "bad query"),
        ("/whep/r?tier=1", "bad query"),
    ] {
        let (s, _, body) = send(offer(path, "application/sdp", "v=0\r\n")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
        assert!(error_of(&body).contains(words), "{path}: {body}");
    }
}
