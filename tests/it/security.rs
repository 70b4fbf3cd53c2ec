//! Safe on a network: access tokens on every entry point (the negative matrix), grants,
//! capability URLs, telling participants who records and watches, and limits. Each refusal is
//! checked for its code and that nothing was created; a valid token is then shown to work.

use crate::common::client::{Client, ClientOptions};
use crate::common::{TestServer, init_logging, test_config, wait_for};
use crate::e2e::{BLUE, RED};
use crate::signalling::{WsParticipant, connect, recv, send};
use mixdown::auth::{Claims, VideoGrant, mint, now_unix};
use mixdown::config::Config;
use serde_json::{Value, json};
use std::time::Duration;

const KEY: &str = "APItestkey";
const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
const LIMIT: Duration = Duration::from_secs(30);

fn secured() -> Config {
    let mut c = test_config();
    c.auth.keys.insert(KEY.into(), SECRET.into());
    c
}

fn claims(room: &str, grant: impl FnOnce(&mut VideoGrant)) -> Claims {
    claims_for(KEY, "ada", "Ada", room, grant)
}

/// Claims under API key `key` for `sub` (shown as `name`) in `room`: `roomJoin`, plus what
/// `grant` adds; valid from a second ago for ten minutes.
pub(crate) fn claims_for(
    key: &str,
    sub: &str,
    name: &str,
    room: &str,
    grant: impl FnOnce(&mut VideoGrant),
) -> Claims {
    let now = now_unix();
    let mut video = VideoGrant {
        room: room.into(),
        room_join: true,
        ..VideoGrant::default()
    };
    grant(&mut video);
    Claims {
        iss: key.into(),
        sub: sub.into(),
        name: name.into(),
        nbf: Some(now - 1),
        exp: now + 600,
        video,
    }
}

fn token(room: &str, grant: impl FnOnce(&mut VideoGrant)) -> String {
    mint(&claims(room, grant), SECRET)
}

/// Waits for decoded frames, then checks the colours in their tiles.
async fn sees(server: &TestServer, room: &str, viewer: &Client, who: &[(&str, [u8; 3])]) {
    wait_for("decoded frames", LIMIT, || async {
        viewer.received.frame_count() > 5
    })
    .await;
    crate::e2e::assert_tiles(server, room, &viewer.received, who).await;
}

/// Every way a token can be wrong, and the status it must get.
fn bad_tokens(room: &str) -> Vec<(&'static str, Option<String>, u16)> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let good = token(room, |g| {
        g.room_admin = true;
        g.room_record = true;
    });
    let payload = good.split('.').nth(1).unwrap().to_owned();
    let mut unknown = claims(room, |_| {});
    unknown.iss = "someone-else".into();
    let mut expired = claims(room, |_| {});
    expired.exp = now_unix() - 3600;
    let mut early = claims(room, |_| {});
    early.nbf = Some(now_unix() + 3600);
    vec![
        ("no token", None, 401),
        ("not a JWT", Some("garbage".into()), 401),
        (
            "bad signature",
            Some(mint(
                &claims(room, |_| {}),
                "another-secret-another-secret-!!!",
            )),
            401,
        ),
        (
            "alg none",
            Some(format!(
                "{}.{payload}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#)
            )),
            401,
        ),
        (
            "signed with the key id",
            Some(mint(&claims(room, |_| {}), KEY)),
            401,
        ),
        ("unknown key", Some(mint(&unknown, SECRET)), 401),
        ("expired", Some(mint(&expired, SECRET)), 401),
        ("not yet valid", Some(mint(&early, SECRET)), 401),
        (
            "another room",
            Some(token("elsewhere", |g| {
                g.room_admin = true;
                g.room_record = true;
            })),
            403,
        ),
    ]
}

/// `(method, path, content type, body)` of every HTTP entry point that needs a token.
fn entry_points(room: &str) -> Vec<(&'static str, String, &'static str, String)> {
    let sdp = "v=0\r\n".to_string();
    let none = String::new();
    vec![
        (
            "POST",
            format!("/whip/{room}"),
            "application/sdp",
            sdp.clone(),
        ),
        ("POST", format!("/whep/{room}"), "application/sdp", sdp),
        ("GET", format!("/api/rooms/{room}"), "", none.clone()),
        ("GET", format!("/api/rooms/{room}/layout"), "", none.clone()),
        (
            "PUT",
            format!("/api/rooms/{room}/layout"),
            "application/json",
            r#"{"mode":"speaker"}"#.into(),
        ),
        (
            "DELETE",
            format!("/api/rooms/{room}/participants/0123456789abcdef"),
            "",
            none.clone(),
        ),
        (
            "GET",
            format!("/api/rooms/{room}/recordings"),
            "",
            none.clone(),
        ),
        (
            "POST",
            format!("/api/rooms/{room}/recordings"),
            "application/json",
            r#"{"format":"webm"}"#.into(),
        ),
        (
            "POST",
            format!("/api/rooms/{room}/streams"),
            "application/json",
            r#"{"kind":"hls"}"#.into(),
        ),
        (
            "GET",
            format!("/api/rooms/{room}/streams"),
            "",
            none.clone(),
        ),
        ("GET", format!("/hls/{room}/index.m3u8"), "", none.clone()),
        ("GET", "/api/rooms".into(), "", none),
    ]
}

/// `POST /api/rooms/{room}/recordings` for a WebM recording (with `token`, if any): the
/// status, the headers and the JSON body.
async fn record_webm(
    server: &TestServer,
    room: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    call(
        server,
        "POST",
        &format!("/api/rooms/{room}/recordings"),
        "application/json",
        r#"{"format":"webm"}"#.into(),
        token,
    )
    .await
}

async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: String,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = reqwest::Client::new().request(method.parse().unwrap(), server.url(path));
    if !content_type.is_empty() {
        r = r.header("Content-Type", content_type);
    }
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let res = r.body(body).send().await.expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_refuses_bad_tokens_and_creates_nothing() {
    init_logging();
    let server = TestServer::start(secured()).await;
    let room = "vault";
    for (what, token, want) in bad_tokens(room) {
        for (method, path, ct, body) in entry_points(room) {
            let (status, headers, json) =
                call(&server, method, &path, ct, body, token.as_deref()).await;
            // The room list is not a room's: a token for another room lacks roomList (403).
            let want = if path == "/api/rooms" && want == 403 {
                403
            } else {
                want
            };
            assert_eq!(status, want, "{what}: {method} {path}: {json}");
            let message = json["error"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "{what}: {method} {path}: no reason");
            if want == 401 {
                assert!(
                    headers.contains_key("www-authenticate"),
                    "{what}: {method} {path}"
                );
            }
        }
        // The WebSocket: `join` with the token is refused with its code.
        let mut ws = connect(&server).await;
        send(
            &mut ws,
            json!({"type": "join", "room": room, "name": "x", "token": token}),
        )
        .await;
        let reply = recv(&mut ws).await;
        let code = if want == 401 {
            "unauthorized"
        } else {
            "forbidden"
        };
        assert_eq!(reply["code"], code, "{what}: /ws join: {reply}");
    }
    // Nothing was created: no room, no session, no recording.
    assert_eq!(server.state.rooms.room_count(), 0);
    assert_eq!(server.state.rooms.peers().sessions_open(), 0);
    let refused = server.state.rooms.counters().snapshot();
    assert!(
        refused["unauthorized"].as_u64().unwrap() >= 8 * 12,
        "{refused}"
    );

    // A valid token still works: a publisher and a viewer with their own tokens; the viewer
    // sees the publisher's colour.
    let mut publisher = ClientOptions::participant(RED.0, 500.0);
    publisher.receive = false;
    publisher.token = Some(token(room, |g| g.can_subscribe = Some(false)));
    let red = Client::join(&server.url(""), room, publisher).await;
    let mut viewer = ClientOptions::viewer();
    viewer.token = Some(token(room, |g| g.can_publish = Some(false)));
    let v = Client::join(&server.url(""), room, viewer).await;
    sees(&server, room, &v, &[(red.location.as_str(), RED.1)]).await;
    // The name in the token is the name shown.
    let info = server.room_info(room).await.unwrap();
    assert!(
        info["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Ada"),
        "{info}"
    );
    v.leave().await;
    red.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_enforced_and_ids_are_not_capabilities() {
    init_logging();
    let server = TestServer::start(secured()).await;
    let base = server.url("");
    let room = "grants";

    // A subscribe-only token cannot publish: 403, and no room is opened.
    let mut sneaky = ClientOptions::participant(BLUE.0, 700.0);
    sneaky.token = Some(token(room, |g| g.can_publish = Some(false)));
    let err = Client::try_join(&base, room, sneaky)
        .await
        .err()
        .expect("refused");
    assert!(err.starts_with("403"), "{err}");
    assert!(err.contains("canPublish"), "{err}");
    assert_eq!(server.state.rooms.room_count(), 0);
    // A viewer's token does not open a room either (no roomCreate).
    let mut early = ClientOptions::viewer();
    early.token = Some(token(room, |_| {}));
    let err = Client::try_join(&base, room, early)
        .await
        .err()
        .expect("refused");
    assert!(err.starts_with("404"), "{err}");
    assert_eq!(server.state.rooms.room_count(), 0);

    let mut red_opts = ClientOptions::participant(RED.0, 500.0);
    red_opts.token = Some(token(room, |_| {}));
    let red = Client::join(&base, room, red_opts).await;
    let public = mixdown::ids::SessionId::public_in_location(&red.location)
        .unwrap()
        .to_owned();
    let member = token(room, |_| {});
    // A participant without roomRecord cannot record; without roomAdmin cannot kick.
    let (status, _, body) = record_webm(&server, room, Some(&member)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("roomRecord"));
    let kick = format!("/api/rooms/{room}/participants/{public}");
    let (status, _, body) = call(&server, "DELETE", &kick, "", String::new(), Some(&member)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("roomAdmin"));
    // Holding the public id (it is in the room info a member may read) is not enough to end
    // the session through the WHIP resource URL.
    let (status, _, info) = call(
        &server,
        "GET",
        &format!("/api/rooms/{room}"),
        "",
        String::new(),
        Some(&member),
    )
    .await;
    assert_eq!(status, 200);
    assert!(info.to_string().contains(&public));
    for guess in [public.clone(), format!("{public}{}", "0".repeat(32))] {
        let (status, _, _) = call(
            &server,
            "DELETE",
            &format!("/whip/{room}/{guess}"),
            "",
            String::new(),
            None,
        )
        .await;
        assert_eq!(status, 404, "{guess}");
    }
    assert!(server.room_info(room).await.is_some(), "red is still in");
    assert!(
        !info
            .to_string()
            .contains(&red.location[red.location.len() - 32..]),
        "the capability is never shown"
    );
    wait_for("red receives", LIMIT, || async {
        red.received.frame_count() > 0
    })
    .await;
    let before = red.received.frame_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(red.received.frame_count() > before, "red still receives");

    // An admin removes red by its public id; red's own URL then finds nothing.
    let admin = token(room, |g| g.room_admin = true);
    let (status, _, body) = call(&server, "DELETE", &kick, "", String::new(), Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    wait_for("the room to close", LIMIT, || async {
        server.room_info(room).await.is_none()
    })
    .await;
    assert_eq!(
        mixdown_bench::client::delete_session(&base, &red.location).await,
        404
    );
    drop(red);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_are_told_of_recordings_streams_and_viewers() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let room = "told";
    let ada = WsParticipant::join(
        &server,
        room,
        "Ada",
        ClientOptions::participant(RED.0, 500.0),
    )
    .await;
    let seen = |kind: &'static str, f: fn(&Value) -> bool| {
        let ada = &ada;
        async move {
            wait_for(kind, LIMIT, || async { ada.last(kind, f).is_some() }).await;
        }
    };
    seen("viewers", |m| m["count"] == 0).await;
    // A WHEP viewer is counted; a recording and HLS are announced, and their end too.
    let viewer = Client::join(&server.url(""), room, ClientOptions::viewer()).await;
    seen("viewers", |m| m["count"] == 1).await;
    let (status, _, rec) = record_webm(&server, room, None).await;
    assert_eq!(status, 201, "{rec}");
    seen("recording", |m| m["active"] == true && m["count"] == 1).await;
    let (status, _, _) = call(
        &server,
        "POST",
        &format!("/api/rooms/{room}/streams"),
        "application/json",
        r#"{"kind":"hls"}"#.into(),
        None,
    )
    .await;
    assert_eq!(status, 201);
    seen("streaming", |m| {
        m["active"] == true && m["kinds"] == json!(["hls"])
    })
    .await;
    let id = rec["id"].as_str().unwrap();
    let (status, _, _) = call(
        &server,
        "DELETE",
        &format!("/api/rooms/{room}/recordings/{id}"),
        "",
        String::new(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    seen("recording", |m| m["active"] == false).await;
    viewer.leave().await;
    seen("viewers", |m| m["count"] == 0).await;
    ada.client.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_with_retry_after_and_the_room_keeps_serving() {
    init_logging();
    let mut config = test_config();
    config.limits.max_rooms = 1;
    config.limits.max_viewers = 1;
    config.room.max_participants = 1;
    config.limits.sessions_per_address = 3;
    config.limits.http_header_timeout_s = 1;
    let server = TestServer::start(config).await;
    let base = server.url("");
    let room = "limited";
    let red = Client::join(&base, room, ClientOptions::participant(RED.0, 500.0)).await;
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;
    sees(&server, room, &viewer, &[(red.location.as_str(), RED.1)]).await;

    let refused = async |room: &str, opts: ClientOptions| {
        Client::try_join(&base, room, opts)
            .await
            .err()
            .expect("refused")
    };
    // Participants and viewers are counted apart; rooms are counted.
    let e = refused(room, ClientOptions::participant(BLUE.0, 700.0)).await;
    assert!(e.starts_with("503") && e.contains("full"), "{e}");
    let e = refused(room, ClientOptions::viewer()).await;
    assert!(e.starts_with("503") && e.contains("viewers"), "{e}");
    let e = refused("another", ClientOptions::participant(BLUE.0, 700.0)).await;
    assert!(e.starts_with("503") && e.contains("rooms"), "{e}");
    // The answer carries Retry-After.
    let (status, headers, _) = call(
        &server,
        "POST",
        "/whip/another",
        "application/sdp",
        red_offer_like(),
        None,
    )
    .await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    // A third session from this address is allowed (a WebSocket member holds its share from
    // `join`), a fourth is not (429).
    let mut ws = connect(&server).await;
    send(&mut ws, json!({"type": "join", "room": room, "name": "Bo"})).await;
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    let e = refused(room, ClientOptions::viewer()).await;
    assert!(e.starts_with("429"), "{e}");

    // A trickled candidate with port 0 or a multicast address is refused.
    let rid = mixdown::ids::RoomId::parse(room).unwrap();
    let sid = mixdown::ids::SessionId::parse(
        mixdown::ids::SessionId::public_in_location(&red.location).unwrap(),
    )
    .unwrap();
    for c in [
        "candidate:1 1 udp 1 127.0.0.1 0 typ host",
        "candidate:1 1 udp 1 224.0.0.251 5000 typ host",
    ] {
        let r = server
            .state
            .rooms
            .add_candidate(
                &rid,
                sid,
                mixdown::signal::CandidateInit {
                    candidate: c.into(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                },
            )
            .await;
        assert!(r.is_err(), "{c}");
    }

    // A client that never finishes its headers is cut off.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("the server closes a slow client");
    match n {
        Ok(0) | Err(_) => {}
        Ok(k) => {
            let reply = String::from_utf8_lossy(&buf[..k]);
            assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        }
    }

    // Through all of it the viewer kept receiving red.
    let before = viewer.received.frame_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        viewer.received.frame_count() > before,
        "the room kept serving"
    );
    sees(&server, room, &viewer, &[(red.location.as_str(), RED.1)]).await;
    let counters = server.state.rooms.counters().snapshot();
    for key in [
        "rooms",
        "participants",
        "viewers",
        "sessions_per_address",
        "http_header_timeouts",
    ] {
        assert!(counters[key].as_u64().unwrap() >= 1, "{key}: {counters}");
    }
    drop(ws);
    viewer.leave().await;
    red.leave().await;
    server.stop().await;
}

/// A syntactically complete offer (no ICE credentials): enough to reach the room limits.
fn red_offer_like() -> String {
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\n"
        .into()
}

/// POSTs an SDP offer: the status, the `Location` (if any) and the body.
async fn post_offer(server: &TestServer, path: &str, sdp: String) -> (u16, Option<String>, String) {
    let res = reqwest::Client::new()
        .post(server.url(path))
        .header("Content-Type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .expect("the server answers");
    let status = res.status().as_u16();
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, location, res.text().await.unwrap_or_default())
}

/// A real offer (webrtc-rs, audio and video), captured before it is sent.
pub(crate) async fn real_offer(base: &str) -> String {
    let captured = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let keep = std::sync::Arc::clone(&captured);
    let _ = Client::connect(
        base,
        ClientOptions::participant(RED.0, 500.0),
        async move |offer: String| {
            *keep.lock().unwrap() = offer;
            Err("captured".to_owned())
        },
    )
    .await;
    let offer = captured.lock().unwrap().clone();
    assert!(offer.contains("m=video"), "{offer}");
    offer
}

/// Offers broken the ways a fuzzer or a hostile client breaks them.
fn mutants(offer: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = offer.lines().collect();
    let join = |v: Vec<String>| v.join("\r\n") + "\r\n";
    let mut out = Vec::new();
    for i in 0..lines.len() {
        let mut dropped: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        dropped.remove(i);
        out.push((format!("line {i} dropped"), join(dropped)));
        let mut doubled: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        doubled.insert(i, lines[i].to_owned());
        out.push((format!("line {i} twice"), join(doubled)));
        let mut garbled: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        garbled[i] = format!(
            "{}\u{1}x:{}",
            &lines[i][..lines[i].len().min(2)],
            "9".repeat(30)
        );
        out.push((format!("line {i} garbled"), join(garbled)));
    }
    let rewrite = |what: &str, f: &dyn Fn(&str) -> String| {
        (what.to_owned(), join(lines.iter().map(|l| f(l)).collect()))
    };
    out.push(rewrite(
        "ssrc garbled",
        &|l| match l.strip_prefix("a=ssrc:") {
            Some(rest) => format!("a=ssrc:x{rest}"),
            None => l.to_owned(),
        },
    ));
    out.push(rewrite("ssrc blown up", &|l| {
        if l.starts_with("a=ssrc:") {
            "a=ssrc:99999999999999999999 cname:x".into()
        } else {
            l.to_owned()
        }
    }));
    out.push(rewrite("candidate port 0", &|l| {
        if l.starts_with("a=mid:") {
            format!("{l}\r\na=candidate:1 1 udp 2122260223 127.0.0.1 0 typ host")
        } else {
            l.to_owned()
        }
    }));
    out.push(rewrite("payload types blown up", &|l| {
        l.replace(" 96", " 99999")
    }));
    out.push(rewrite("huge attribute", &|l| {
        if l.starts_with("a=mid:") {
            format!("{l}\r\na=x-{}", "y".repeat(50_000))
        } else {
            l.to_owned()
        }
    }));
    out.push(rewrite("fingerprint garbled", &|l| {
        if l.starts_with("a=fingerprint:") {
            "a=fingerprint:sha-256 zz".into()
        } else {
            l.to_owned()
        }
    }));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_offers_get_4xx_and_joins_racing_a_close_are_never_refused() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let offer = real_offer(&base).await;
    let mut corpus = mutants(&offer);
    // The fuzzer's SDP corpus, replayed over HTTP.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sdp_offer");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten().take(300) {
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                corpus.push((e.path().display().to_string(), text));
            }
        }
    }
    let mut answered = 0;
    for (what, sdp) in &corpus {
        let (status, location, body) = post_offer(&server, "/whip/mutants", sdp.clone()).await;
        assert!(
            status == 201 || (400..500).contains(&status),
            "{what}: {status} {body}"
        );
        if let Some(l) = location {
            answered += 1;
            assert_eq!(mixdown_bench::client::delete_session(&base, &l).await, 200);
        }
    }
    tracing::info!(mutants = corpus.len(), answered, "mutated offers");
    assert!(corpus.len() > 100);

    // Join then leave, 500 times in a row on one room: each join meets the room closing
    // behind the previous leave, and must open it again rather than fail.
    for i in 0..500 {
        let (status, location, body) = post_offer(&server, "/whip/churn", offer.clone()).await;
        assert_eq!(status, 201, "join {i}: {body}");
        let location = location.expect("a Location");
        assert_eq!(
            mixdown_bench::client::delete_session(&base, &location).await,
            200
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_panics_closes_cleanly_and_alone() {
    init_logging();
    let dir = std::env::temp_dir().join(format!("mixdown-it-panic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = test_config();
    config.recording.dir = dir.clone();
    let server = TestServer::start(config).await;
    let base = server.url("");
    let red = Client::join(&base, "doomed", ClientOptions::participant(RED.0, 500.0)).await;
    let blue = Client::join(&base, "calm", ClientOptions::participant(BLUE.0, 700.0)).await;
    let viewer = Client::join(&base, "calm", ClientOptions::viewer()).await;
    sees(
        &server,
        "calm",
        &viewer,
        &[(blue.location.as_str(), BLUE.1)],
    )
    .await;
    let (status, _, rec) = call(
        &server,
        "POST",
        "/api/rooms/doomed/recordings",
        "application/json",
        r#"{"format":"mkv"}"#.into(),
        None,
    )
    .await;
    assert_eq!(status, 201, "{rec}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sessions = server.state.rooms.peers().sessions_open();

    let doomed = mixdown::ids::RoomId::parse("doomed").unwrap();
    assert!(server.state.rooms.inject_panic(&doomed).await);
    wait_for("the failed room to be gone", LIMIT, || async {
        server.state.rooms.live_rooms() == 1 && server.room_info("doomed").await.is_none()
    })
    .await;
    // Its session was closed (its port share freed) and its recording finalised.
    assert_eq!(server.state.rooms.peers().sessions_open(), sessions - 1);
    let id = rec["id"].as_str().unwrap();
    let (_, _, after) = call(
        &server,
        "GET",
        &format!("/api/rooms/doomed/recordings/{id}"),
        "",
        String::new(),
        None,
    )
    .await;
    assert_eq!(after["state"], "finished", "{after}");
    let path = after["path"].as_str().unwrap();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "{path}: {size} bytes");
    // The other room never noticed.
    let before = viewer.received.frame_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(viewer.received.frame_count() > before);
    sees(
        &server,
        "calm",
        &viewer,
        &[(blue.location.as_str(), BLUE.1)],
    )
    .await;
    // And the failed room's name opens again.
    let again = Client::join(&base, "doomed", ClientOptions::participant(RED.0, 500.0)).await;
    again.leave().await;
    drop(red);
    viewer.leave().await;
    blue.leave().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picture_over_the_size_limit_is_not_decoded() {
    init_logging();
    let mut config = test_config();
    // The test publishers send 320x240: a 160x120 limit refuses them.
    config.limits.max_video_pixels = 160 * 120;
    let server = TestServer::start(config).await;
    let base = server.url("");
    let room = "huge";
    let red = Client::join(&base, room, ClientOptions::participant(RED.0, 500.0)).await;
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;
    wait_for("the limit to be reached", LIMIT, || async {
        server.state.rooms.counters().snapshot()["video_pixels"] == 1
    })
    .await;
    wait_for("decoded frames", LIMIT, || async {
        viewer.received.frame_count() > 30
    })
    .await;
    // Red's packets arrive and are dropped: no decoder ever sees its picture, its tile does
    // not turn red, and the room goes on (the viewer keeps getting frames).
    let info = server.room_info(room).await.unwrap();
    let public = mixdown::ids::SessionId::public_in_location(&red.location).unwrap();
    let p = info["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["session"] == public)
        .unwrap()
        .clone();
    assert_eq!(p["video_packets"]["decoded"], 0, "{p}");
    assert!(p["video_packets"]["dropped"].as_u64().unwrap() > 10, "{p}");
    let tile = server.tile_of(room, &red.location).await.expect("a tile");
    let mean = viewer.received.frame().unwrap().mean(tile);
    assert!(
        !crate::common::close_to(mean, RED.1, 60.0),
        "red's picture was shown: {mean:?}"
    );
    viewer.leave().await;
    red.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_quota_and_retention_bound_the_disk() {
    init_logging();
    let dir = std::env::temp_dir().join(format!("mixdown-it-quota-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A recording from 40 days ago goes at start (retention 30 days); a note beside it stays.
    let old = dir.join("last-month.webm");
    std::fs::write(&old, vec![0u8; 1000]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(40 * 86_400))
        .unwrap();
    // Everything in the directory counts: a file of 980 kB leaves the recording 20 kB (a
    // solid colour compresses well: a few seconds of it).
    std::fs::write(dir.join("notes.txt"), vec![b'n'; 980_000]).unwrap();
    let mut config = test_config();
    config.recording.dir = dir.clone();
    config.recording.quota_mb = 1;
    config.recording.retention_days = 30;
    let server = TestServer::start(config).await;
    wait_for("the expired recording to go", LIMIT, || async {
        !old.exists()
    })
    .await;
    assert!(dir.join("notes.txt").exists());

    let room = "quota";
    let red = Client::join(
        &server.url(""),
        room,
        ClientOptions::participant(RED.0, 500.0),
    )
    .await;
    let (status, _, rec) = record_webm(&server, room, None).await;
    assert_eq!(status, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_owned();
    // The recording stops itself once the directory holds the megabyte.
    let recording = format!("/api/rooms/{room}/recordings/{id}");
    wait_for(
        "the quota to stop the recording",
        Duration::from_secs(60),
        || async {
            let (_, _, info) = call(&server, "GET", &recording, "", String::new(), None).await;
            info["state"] == "finished"
        },
    )
    .await;
    let (_, _, last) = call(&server, "GET", &recording, "", String::new(), None).await;
    assert!(
        last["error"].as_str().unwrap_or_default().contains("quota"),
        "{last}"
    );
    let size = std::fs::metadata(last["path"].as_str().unwrap())
        .unwrap()
        .len();
    assert!((20_000..1_000_000).contains(&size), "{size} bytes");
    assert!(last["duration_s"].as_f64().unwrap() > 0.5, "{last}");
    // A new recording is refused while the directory is over its quota; the room goes on.
    let (status, _, body) = record_webm(&server, room, None).await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("quota_mb"),
        "{body}"
    );
    let before = red.received.frame_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(red.received.frame_count() > before);
    red.leave().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
