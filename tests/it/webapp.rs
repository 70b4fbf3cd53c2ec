//! The browser app in real headless Chromium (fake camera and microphone), driven over the
//! DevTools protocol: two people join the same room through the page the server serves, and
//! the test reads what each page shows (`window.mixdown`, the DOM), sends chat, mutes, leaves,
//! and saves a screenshot of the room as a build artefact. On a server with access tokens, a
//! token link joins (and leaves the address bar at once), a bad one is refused on the page, and
//! the page shows the room's recording and its audience.

use crate::common::cdp::Cdp;
use crate::common::client::{Client, ClientOptions};
use crate::common::{TestServer, close_to, init_logging, test_config, wait_for};
use mixdown::auth::{VideoGrant, mint};
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(40);
/// Where the screenshot goes (kept after the test as a build artefact).
const SCREENSHOT: &str = "target/artefacts/webapp-room.png";

async fn start_chromium(profile: &std::path::Path) -> (tokio::process::Child, Cdp) {
    Cdp::launch(profile, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_meet_in_the_web_app() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let room = "webapp";
    let profile = std::env::temp_dir().join(format!("mixdown-webapp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let (mut chromium, cdp) = start_chromium(&profile).await;
    let opened = std::time::Instant::now();
    let ada = cdp
        .open(&server.url(&format!("/?room={room}&name=Ada&autojoin=1")))
        .await;
    // Reported, not asserted: page open → join → ICE/DTLS → first composite frame shown.
    let first_frame =
        "(v => v.readyState >= 2 && v.videoWidth > 0)(document.getElementById('composite'))";
    wait_for("Ada's first composite frame", LIMIT, || async {
        cdp.eval(&ada, first_frame).await == true
    })
    .await;
    eprintln!(
        "web app: page open → first composite frame in {} ms",
        opened.elapsed().as_millis()
    );
    let bob = cdp
        .open(&server.url(&format!("/?room={room}&name=Bob&autojoin=1")))
        .await;
    let pages = [("Ada", ada.as_str()), ("Bob", bob.as_str())];

    // Both pages play the composite at the canvas size, with audio.
    for (who, page) in pages {
        wait_for(
            &format!("{who} decodes the composite with audio"),
            LIMIT,
            || async {
                let s = cdp
                    .eval(page, "window.mixdown && window.mixdown.stats")
                    .await;
                s["framesDecoded"].as_u64().unwrap_or(0) > 30
                    && s["frameWidth"] == 640
                    && s["frameHeight"] == 360
                    && s["audioLevel"].as_f64().unwrap_or(0.0) > 0.0
            },
        )
        .await;
        let before = cdp
            .eval(page, "window.mixdown.stats.framesDecoded")
            .await
            .as_u64()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = cdp
            .eval(page, "window.mixdown.stats.framesDecoded")
            .await
            .as_u64()
            .unwrap();
        assert!(
            after > before + 15,
            "{who}: frames decoded {before} → {after}"
        );
    }
    // Each sees both names in the list and two tiles in the layout metadata.
    for (who, page) in pages {
        wait_for(&format!("{who} lists both and has two tiles"), LIMIT, || async {
            let v = cdp
                .eval(
                    page,
                    "({names: [...document.querySelectorAll('#participants li .name')].map(e => e.textContent), \
                       tiles: window.mixdown.layout ? window.mixdown.layout.tiles.length : 0, \
                       labels: [...document.querySelectorAll('#overlay .label')].map(e => e.textContent)})",
                )
                .await;
            let has = |k: &str, n: &str| v[k].as_array().is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|s| s.contains(n))));
            has("names", "Ada") && has("names", "Bob") && v["tiles"] == 2 && has("labels", "Ada") && has("labels", "Bob")
        })
        .await;
    }

    // The server's picture: a WHEP viewer finds Bob's tile where the layout says.
    let viewer = Client::join(&server.url(""), room, ClientOptions::viewer()).await;
    let layout = cdp.eval(&ada, "window.mixdown.layout").await;
    let bob_id = cdp.eval(&bob, "window.mixdown.id").await;
    let t = layout["tiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == bob_id)
        .unwrap()
        .clone();
    let f = |k: &str, s: f64| (t[k].as_f64().unwrap() * s).round() as u32;
    let bob_tile = [f("x", 640.0), f("y", 360.0), f("w", 640.0), f("h", 360.0)];

    // Chat from Ada appears for Bob.
    cdp.eval(&ada, "window.mixdown.sendChat('hello from Ada')")
        .await;
    wait_for("Bob sees Ada's message", LIMIT, || async {
        cdp.eval(&bob, "[...document.querySelectorAll('#chat-messages .chat-message')].some(e => e.textContent.includes('hello from Ada'))")
            .await
            == true
    })
    .await;

    // Bob mutes: his speaking indicator goes off for Ada, his tile becomes a name card.
    cdp.eval(
        &bob,
        "window.mixdown.setMuted({audio: true, video: true}).then(() => true)",
    )
    .await;
    let bob_li = format!(
        "document.querySelector('#participants li[data-id=\"{}\"]')",
        bob_id.as_str().unwrap()
    );
    wait_for("Ada sees Bob muted", LIMIT, || async {
        let p = cdp
            .eval(
                &ada,
                &format!("(window.mixdown.participants.find(p => p.id === {bob_id}) || {{}})"),
            )
            .await;
        let indicator_on = cdp
            .eval(
                &ada,
                &format!("{bob_li}.querySelector('.speaking-indicator').classList.contains('on')"),
            )
            .await;
        p["audio_muted"] == true
            && p["video_muted"] == true
            && p["speaking"] == false
            && indicator_on == false
    })
    .await;
    wait_for("Bob's tile shows his name card", LIMIT, || async {
        viewer
            .received
            .frame()
            .is_some_and(|fr| close_to(fr.mean(bob_tile), [58, 63, 75], 40.0))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let indicator_on = cdp
        .eval(
            &ada,
            &format!("{bob_li}.querySelector('.speaking-indicator').classList.contains('on')"),
        )
        .await;
    assert_eq!(indicator_on, false, "a muted participant is not speaking");

    // Watch mode: a receive-only page over WHEP plays the same composite.
    let watcher = cdp.open(&server.url(&format!("/watch/{room}"))).await;
    wait_for("the watch page plays the composite", LIMIT, || async {
        let s = cdp
            .eval(&watcher, "window.mixdownWatch && window.mixdownWatch.stats")
            .await;
        s["framesDecoded"].as_u64().unwrap_or(0) > 30
            && s["frameWidth"] == 640
            && s["frameHeight"] == 360
    })
    .await;
    // Its data channel carries the layout: the names are drawn over the tiles.
    wait_for("the watch page labels Ada's and Bob's tiles", LIMIT, || async {
        let labels = cdp
            .eval(
                &watcher,
                "[...document.querySelectorAll('#overlay .label')].map((l) => l.textContent).sort()",
            )
            .await;
        labels == json!(["Ada", "Bob"])
    })
    .await;
    let listed = cdp.eval(&ada, "window.mixdown.participants.length").await;
    assert_eq!(
        listed, 2,
        "a WHEP viewer is audience, not a listed participant"
    );

    // Ada switches the room to speaker mode and pins Bob from the participant list: both
    // pages follow, and Bob has the large region.
    cdp.eval(&ada, "document.getElementById('layout-speaker').click()")
        .await;
    cdp.eval(
        &ada,
        &format!("{bob_li}.querySelector('button.pin').click()"),
    )
    .await;
    wait_for(
        "speaker mode with Bob pinned, on both pages",
        LIMIT,
        || async {
            let mut ok = true;
            for page in [&ada, &bob] {
                let l = cdp.eval(page, "window.mixdown.layout").await;
                let big = l["tiles"]
                    .as_array()
                    .and_then(|t| t.iter().find(|t| t["id"] == bob_id))
                    .and_then(|t| t["w"].as_f64())
                    .is_some_and(|w| w > 0.5);
                ok &= l["mode"] == "speaker" && l["pinned"][0] == bob_id && big;
            }
            let pressed = cdp
                .eval(
                    &ada,
                    "document.getElementById('layout-speaker').getAttribute('aria-pressed')",
                )
                .await;
            ok && pressed == "true"
        },
    )
    .await;

    wait_for(
        "the watch page follows: Bob's tile is the large one",
        LIMIT,
        || async {
            let l = cdp.eval(&watcher, "window.mixdownWatch.layout").await;
            l["tiles"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["id"] == bob_id))
                .and_then(|t| t["w"].as_f64())
                .is_some_and(|w| w > 0.5)
        },
    )
    .await;

    // A screenshot of Ada's room page, as a build artefact.
    let shot = cdp
        .call(
            Some(&ada),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        )
        .await;
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::create_dir_all(std::path::Path::new(SCREENSHOT).parent().unwrap()).unwrap();
    std::fs::write(SCREENSHOT, &png).unwrap();

    // Bob leaves: Ada's list and layout update.
    cdp.eval(&bob, "window.mixdown.leave()").await;
    wait_for("Ada sees Bob leave", LIMIT, || async {
        let v = cdp
            .eval(&ada, "({n: document.querySelectorAll('#participants li').length, tiles: window.mixdown.layout.tiles.length})")
            .await;
        v["n"] == 1 && v["tiles"] == 1
    })
    .await;
    viewer.close().await;
    let _ = chromium.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    server.stop().await;
}

const KEY: &str = "APIwebapp";
const SECRET: &str = "a-webapp-test-secret-of-at-least-32-bytes";

/// A token for `room` in `name`'s name (`roomJoin`, plus whatever `grant` adds).
fn token(room: &str, name: &str, grant: impl FnOnce(&mut VideoGrant)) -> String {
    let claims = crate::security::claims_for(KEY, &name.to_lowercase(), name, room, grant);
    mint(&claims, SECRET)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_link_joins_and_the_page_shows_recording_and_viewers() {
    init_logging();
    let dir = std::env::temp_dir().join(format!("mixdown-webapp-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = test_config();
    config.auth.keys.insert(KEY.into(), SECRET.into());
    config.recording.dir = dir.join("recordings");
    let server = TestServer::start(config).await;
    let room = "guarded";
    let (mut chromium, cdp) = start_chromium(&dir.join("profile")).await;
    // The page's error box, its state and its address.
    let page_state = "(e => e && window.mixdown && ({state: window.mixdown.state, \
        shown: !e.hidden, code: e.dataset.code || null, text: e.textContent, href: location.href}))\
        (document.getElementById('error'))";

    // A bad token is refused on the page, saying why, and leaves the address bar too.
    let bad = "not-a-jwt";
    let eve = cdp
        .open(&server.url(&format!("/?room={room}&name=Eve&autojoin=1&token={bad}")))
        .await;
    wait_for("the bad token's refusal on the page", LIMIT, || async {
        let v = cdp.eval(&eve, page_state).await;
        v["state"] == "error" && v["shown"] == true
    })
    .await;
    let seen = cdp.eval(&eve, page_state).await;
    let text = seen["text"].as_str().unwrap_or_default();
    assert_eq!(seen["code"], "unauthorized", "{seen}");
    assert!(
        text.contains("access link was not accepted") && text.contains("not a JWT"),
        "{seen}"
    );
    let href = seen["href"].as_str().unwrap_or_default();
    assert!(!href.contains("token") && !href.contains(bad), "{href}");

    // A good one joins; the address keeps everything but the token; the token's name is used.
    let ada_token = token(room, "Ada", |_| {});
    let ada = cdp
        .open(&server.url(&format!(
            "/?room={room}&name=Typed&autojoin=1&token={ada_token}"
        )))
        .await;
    wait_for("Ada in the room (told of its viewers)", LIMIT, || async {
        let v = cdp
            .eval(
                &ada,
                "window.mixdown && window.mixdown.state === 'joined' && window.mixdown.viewers === 0",
            )
            .await;
        v == true
    })
    .await;
    let v = cdp
        .eval(
            &ada,
            "({href: location.href, hash: location.hash, names: [...document.querySelectorAll('#participants li .name')].map(e => e.textContent)})",
        )
        .await;
    let href = v["href"].as_str().unwrap();
    assert!(
        !href.contains("token") && !href.contains(&ada_token),
        "{href}"
    );
    assert!(
        href.contains(&format!("room={room}")) && href.contains("autojoin=1"),
        "{href}"
    );
    assert_eq!(
        v["names"],
        json!(["Ada"]),
        "the token names the participant"
    );

    // A recording started over the API (its own token) shows the banner…
    let ops = token(room, "ops", |g| {
        g.room_join = false;
        g.room_record = true;
    });
    let api = server.url(&format!("/api/rooms/{room}/recordings"));
    let http = reqwest::Client::new();
    let res = http
        .post(&api)
        .bearer_auth(&ops)
        .json(&json!({"format": "webm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let rec: Value = res.json().await.unwrap();
    let banner = "(b => b && !b.hidden ? b.textContent.replace(/\\s+/g, ' ').trim() : null)\
        (document.getElementById('live-banner'))";
    wait_for("the recording banner", LIMIT, || async {
        cdp.eval(&ada, banner).await == "● Recording"
    })
    .await;

    // …a watch page with a token (WHEP, Bearer) is counted in the participant panel…
    let viewer_token = token(room, "Vic", |g| g.can_publish = Some(false));
    let watcher = cdp
        .open(&server.url(&format!("/watch/{room}?token={viewer_token}")))
        .await;
    wait_for("Ada sees one viewer", LIMIT, || async {
        cdp.eval(
            &ada,
            "(e => e && e.textContent)(document.getElementById('viewer-count'))",
        )
        .await
            == "1 watching"
    })
    .await;
    let href = cdp.eval(&watcher, "location.href").await;
    assert_eq!(href, server.url(&format!("/watch/{room}")), "no token left");

    // …and the banner goes when the recording stops.
    let id = rec["id"].as_str().unwrap();
    let res = http
        .delete(format!("{api}/{id}"))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    wait_for("the banner gone", LIMIT, || async {
        cdp.eval(&ada, banner).await.is_null()
    })
    .await;
    assert_eq!(
        cdp.eval(&ada, "window.mixdown.recording").await,
        json!({"active": false, "count": 0})
    );

    let _ = chromium.kill().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Standard base64 (the screenshot), without pulling in a crate for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
