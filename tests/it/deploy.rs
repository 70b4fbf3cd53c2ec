//! Deployment (issue 16): what an operator's stack relies on.

use crate::common::{TestServer, init_logging, test_config};
use crate::signalling::{connect, recv, send};
use base64::Engine as _;
use serde_json::json;

const TURN_SECRET: &str = "a shared secret for coturn";
const TURN_URL: &str = "turn:127.0.0.1:23478?transport=udp";

/// Whether `credential` is coturn's password for `username` under the secret, and the
/// username's expiry is `ttl` from now (within the test's own few seconds).
fn check_turn(username: &str, credential: &str, identity: &str, ttl: u64) {
    let (expiry, who) = username.split_once(':').expect("<expiry>:<identity>");
    assert_eq!(who, identity, "{username}");
    let expiry: u64 = expiry.parse().expect("Unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry >= now + ttl - 10 && expiry <= now + ttl + 1,
        "expires at {expiry}, now {now}, ttl {ttl}"
    );
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        TURN_SECRET.as_bytes(),
    );
    let tag = base64::engine::general_purpose::STANDARD
        .decode(credential)
        .expect("base64");
    ring::hmac::verify(&key, username.as_bytes(), &tag).expect("the HMAC verifies");
}

/// `Link` headers of a WHIP answer and WebSocket welcomes hand out TURN credentials that
/// verify against the shared secret and expire `ttl_s` from now, named after the caller;
/// the secret itself appears nowhere. Without `[rtc.turn]`, no TURN entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_verify_against_the_secret_and_expire() {
    init_logging();
    let mut c = test_config();
    c.rtc.turn.urls = vec![TURN_URL.into()];
    c.rtc.turn.secret = TURN_SECRET.into();
    c.rtc.turn.ttl_s = 600;
    c.rtc.ice_servers = vec![mixdown::config::IceServer {
        urls: vec!["stun:stun.example.org:3478".into()],
        ..Default::default()
    }];
    let server = TestServer::start(c).await;
    let offer = crate::security::real_offer(&server.url("")).await;
    let res = reqwest::Client::new()
        .post(server.url("/whip/turnroom"))
        .header("Content-Type", "application/sdp")
        .body(offer.clone())
        .send()
        .await
        .expect("the server answers");
    assert_eq!(res.status().as_u16(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let links: Vec<String> = res
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        links
            .iter()
            .any(|l| l.starts_with("<stun:stun.example.org:3478>; rel=\"ice-server\"")),
        "{links:?}"
    );
    let turn = links
        .iter()
        .find(|l| l.starts_with(&format!("<{TURN_URL}>; rel=\"ice-server\"")))
        .unwrap_or_else(|| panic!("no TURN link in {links:?}"));
    let field = |name: &str| {
        let start = turn.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
        turn[start..].split('"').next().unwrap().to_owned()
    };
    assert!(turn.contains("credential-type=\"password\""), "{turn}");
    let public = mixdown::ids::SessionId::public_in_location(&location).expect("public id");
    check_turn(&field("username"), &field("credential"), public, 600);
    assert!(!links.iter().any(|l| l.contains(TURN_SECRET)));

    // The WebSocket welcome: the same, named after the participant's id.
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"type": "join", "room": "turnroom", "name": "Ada"}),
    )
    .await;
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let servers = welcome["ice_servers"].as_array().expect("ice_servers");
    let t = servers
        .iter()
        .find(|s| s["urls"][0] == TURN_URL)
        .unwrap_or_else(|| panic!("no TURN entry in {welcome}"));
    check_turn(
        t["username"].as_str().unwrap(),
        t["credential"].as_str().unwrap(),
        welcome["id"].as_str().unwrap(),
        600,
    );
    assert!(!welcome.to_string().contains(TURN_SECRET));
    drop(ws);
    server.stop().await;

    // Without [rtc.turn]: the static servers only.
    let server = TestServer::start(test_config()).await;
    let res = reqwest::Client::new()
        .post(server.url("/whip/plain"))
        .header("Content-Type", "application/sdp")
        .body(offer)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(res.headers().get_all("link").iter().count(), 0);
    server.stop().await;
}
