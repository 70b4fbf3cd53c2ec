//! The WebSocket signalling protocol without a browser: every malformed-input case, and a
//! webrtc-rs participant joining over `/ws` next to a WHIP participant, checked against what a
//! WHEP viewer sees and hears (layout metadata, name cards, mute, speaking, chat).

use crate::common::client::{Client, ClientOptions};
use crate::common::{TestServer, close_to, init_logging, test_config, tone_db, wait_for};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const LIMIT: Duration = Duration::from_secs(30);

pub(crate) async fn connect(server: &TestServer) -> Socket {
    let url = format!("ws://{}/ws", server.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket")
        .0
}

pub(crate) async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message (hang guard: 10 s).
pub(crate) async fn recv(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket stays open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn expect_error(ws: &mut Socket, code: &str) {
    let m = recv(ws).await;
    assert_eq!(
        (m["type"].as_str(), m["code"].as_str()),
        (Some("error"), Some(code)),
        "{m}"
    );
    assert!(m["message"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_errors_and_the_connection_goes_on() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    // A connection that never joins is told so and closed after the join timeout.
    let mut idle = connect(&server).await;
    let mut ws = connect(&server).await;
    ws.send(Message::Text("{nope".into())).await.unwrap();
    expect_error(&mut ws, "bad-json").await;
    send(&mut ws, json!({"type": "dance"})).await;
    expect_error(&mut ws, "unknown-type").await;
    let big = json!({"type": "chat", "text": "x".repeat(70 * 1024)});
    send(&mut ws, big).await;
    expect_error(&mut ws, "too-large").await;
    send(&mut ws, json!({"type": "candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}})).await;
    expect_error(&mut ws, "not-joined").await;
    send(&mut ws, json!({"type": "leave"})).await;
    expect_error(&mut ws, "not-joined").await;
    send(
        &mut ws,
        json!({"type": "join", "room": "../etc", "name": "x"}),
    )
    .await;
    expect_error(&mut ws, "bad-field").await;

    send(
        &mut ws,
        json!({"type": "join", "room": "sig", "name": "Ada"}),
    )
    .await;
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["participants"], json!([]));
    send(
        &mut ws,
        json!({"type": "join", "room": "sig", "name": "Ada"}),
    )
    .await;
    expect_error(&mut ws, "already-joined").await;
    send(&mut ws, json!({"type": "candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}})).await;
    expect_error(&mut ws, "no-offer").await;
    send(&mut ws, json!({"type": "offer", "sdp": "v=0\r\nnot sdp"})).await;
    expect_error(&mut ws, "bad-offer").await;
    send(&mut ws, json!({"type": "leave"})).await;
    assert_eq!(recv(&mut ws).await["type"], "left");
    send(&mut ws, json!({"type": "leave"})).await;
    expect_error(&mut ws, "not-joined").await;

    // A burst beyond the rate limit is refused message by message, not by dropping the socket.
    for _ in 0..80 {
        send(&mut ws, json!({"type": "leave"})).await;
    }
    let mut limited = 0;
    for _ in 0..80 {
        if recv(&mut ws).await["code"] == "rate-limited" {
            limited += 1;
        }
    }
    assert!(limited >= 20, "{limited} of 80 rate-limited");
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(
        &mut ws,
        json!({"type": "join", "room": "sig", "name": "Ada"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "welcome");

    expect_error(&mut idle, "join-timeout").await;
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.next()).await;
    assert!(
        matches!(
            closed,
            Ok(None | Some(Ok(Message::Close(_))) | Some(Err(_)))
        ),
        "the idle connection is closed: {closed:?}"
    );
    drop(ws);
    server.stop().await;
}

/// A webrtc-rs participant signalled over `/ws`; its socket stays open in a task that keeps
/// every message it receives.
pub(crate) struct WsParticipant {
    pub(crate) client: Client,
    /// The offer it joined with (sent again to test renegotiation).
    offer: String,
    pub(crate) id: String,
    inbox: Arc<Mutex<Vec<Value>>>,
    outbox: tokio::sync::mpsc::UnboundedSender<Value>,
}

impl WsParticipant {
    pub(crate) async fn join(
        server: &TestServer,
        room: &str,
        name: &str,
        opts: ClientOptions,
    ) -> Self {
        Self::join_with_token(server, room, name, opts, None).await
    }

    pub(crate) async fn join_with_token(
        server: &TestServer,
        room: &str,
        name: &str,
        opts: ClientOptions,
        token: Option<&str>,
    ) -> Self {
        let mut ws = connect(server).await;
        send(
            &mut ws,
            json!({"type": "join", "room": room, "name": name, "token": token}),
        )
        .await;
        let welcome = recv(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let id = welcome["id"].as_str().unwrap().to_owned();
        let inbox = Arc::new(Mutex::new(vec![welcome]));
        let (outbox, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let socket = Arc::new(tokio::sync::Mutex::new(Some(ws)));
        let s2 = Arc::clone(&socket);
        let inbox2 = Arc::clone(&inbox);
        let offer_seen = Arc::new(Mutex::new(String::new()));
        let offer_kept = Arc::clone(&offer_seen);
        let client = Client::connect(&server.url(""), opts, async move |offer: String| {
            let mut guard = s2.lock().await;
            let ws = guard.as_mut().ok_or("no socket")?;
            *offer_kept.lock().unwrap() = offer.clone();
            send(ws, json!({"type": "offer", "sdp": offer})).await;
            // The answer, then trickled candidates until null; folded back into one SDP for
            // this non-trickling client.
            let mut answer = String::new();
            let mut candidates = Vec::new();
            loop {
                let m = recv(ws).await;
                match m["type"].as_str() {
                    Some("answer") => answer = m["sdp"].as_str().unwrap_or("").to_owned(),
                    Some("candidate") if m["candidate"].is_null() => break,
                    Some("candidate") => candidates.push(
                        m["candidate"]["candidate"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    ),
                    Some("error") => return Err(m.to_string()),
                    _ => inbox2.lock().unwrap().push(m),
                }
            }
            assert!(
                !answer.contains("a=candidate"),
                "candidates are trickled, not in the answer"
            );
            assert!(!candidates.is_empty());
            let mut lines: Vec<String> = answer.lines().map(str::to_owned).collect();
            let second_m = lines
                .iter()
                .skip(1)
                .position(|l| l.starts_with("m="))
                .map(|i| i + 1);
            let first_m = lines.iter().position(|l| l.starts_with("m=")).unwrap_or(0);
            let at = second_m.filter(|i| *i > first_m).unwrap_or(lines.len());
            for (k, c) in candidates.iter().enumerate() {
                lines.insert(at + k, format!("a={c}"));
            }
            Ok((String::new(), lines.join("\r\n") + "\r\n"))
        })
        .await
        .expect("joins over the WebSocket");
        let ws = socket.lock().await.take().unwrap();
        let (mut write, mut read) = ws.split();
        let inbox3 = Arc::clone(&inbox);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = read.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            if let Ok(v) = serde_json::from_str(&t) {
                                inbox3.lock().unwrap().push(v);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    v = out_rx.recv() => match v {
                        Some(v) => { let _ = write.send(Message::Text(v.to_string().into())).await; }
                        None => { let _ = write.close().await; break; }
                    },
                }
            }
        });
        let offer = offer_seen.lock().unwrap().clone();
        Self {
            client,
            offer,
            id,
            inbox,
            outbox,
        }
    }

    pub(crate) fn send(&self, v: Value) {
        self.outbox.send(v).unwrap();
    }

    /// The latest message of `kind` matching `f`.
    pub(crate) fn last(&self, kind: &str, f: impl Fn(&Value) -> bool) -> Option<Value> {
        self.inbox
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["type"] == kind && f(m))
            .cloned()
    }
}

fn tile(layout: &Value, id: &str, size: (f64, f64)) -> Option<[u32; 4]> {
    let t = layout["tiles"].as_array()?.iter().find(|t| t["id"] == id)?;
    let f = |k: &str, s: f64| (t[k].as_f64().unwrap_or(0.0) * s).round() as u32;
    Some([
        f("x", size.0),
        f("y", size.1),
        f("w", size.0),
        f("h", size.1),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_whip_participants_share_a_room_with_layout_mute_speaking_and_chat() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let room = "mixed";
    let blue = ClientOptions::participant(0xff0000ff, 800.0);
    let ada = WsParticipant::join(&server, room, "Ada", blue).await;
    let mut red = ClientOptions::participant(0xffff0000, 500.0);
    red.receive = false;
    let whip = Client::join(&base, room, red).await;
    let whip_id = mixdown::ids::SessionId::public_in_location(&whip.location)
        .unwrap()
        .to_owned();
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;

    // Ada hears of the WHIP participant and gets a layout with both tiles, named.
    wait_for("a layout with two tiles", LIMIT, || async {
        ada.last("layout", |m| {
            m["tiles"].as_array().is_some_and(|t| t.len() == 2)
        })
        .is_some()
    })
    .await;
    let joined = ada.last("participant-joined", |m| {
        m["participant"]["id"] == whip_id.as_str()
    });
    assert!(joined.is_some_and(|j| {
        j["participant"]["name"]
            .as_str()
            .unwrap()
            .starts_with("Guest ")
    }));
    let layout = ada.last("layout", |_| true).unwrap();
    let names: Vec<&str> = layout["tiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Ada"), "{layout}");
    let size = (640.0, 360.0);
    let ada_tile = tile(&layout, &ada.id, size).unwrap();
    let whip_tile = tile(&layout, &whip_id, size).unwrap();

    // The layout metadata matches the picture: each colour is where the layout says.
    let colour_in = |t: [u32; 4], rgb: [u8; 3]| {
        viewer
            .received
            .frame()
            .is_some_and(|f| close_to(f.mean(t), rgb, 48.0))
    };
    wait_for("colours where the layout puts them", LIMIT, || async {
        colour_in(ada_tile, [0, 0, 255]) && colour_in(whip_tile, [255, 0, 0])
    })
    .await;
    wait_for("Ada is speaking (her tone)", LIMIT, || async {
        ada.last("speaking", |m| m["id"] == ada.id.as_str())
            .is_some_and(|m| m["speaking"] == true)
    })
    .await;

    // Chat is relayed to everyone in the room, the sender included.
    ada.send(json!({"type": "chat", "text": "hello room"}));
    wait_for("the chat comes back", LIMIT, || async {
        ada.last("chat", |m| m["text"] == "hello room" && m["name"] == "Ada")
            .is_some()
    })
    .await;

    // Stopping the camera turns Ada's tile into a name card; muting the microphone takes her
    // tone out of the mix and her speaking indicator off.
    ada.send(json!({"type": "mute", "audio": true, "video": true}));
    wait_for("Ada's update", LIMIT, || async {
        ada.last("participant-updated", |m| {
            m["participant"]["id"] == ada.id.as_str()
                && m["participant"]["audio_muted"] == true
                && m["participant"]["video_muted"] == true
        })
        .is_some()
    })
    .await;
    wait_for("the name card replaces the blue tile", LIMIT, || async {
        colour_in(ada_tile, [58, 63, 75]) && colour_in(whip_tile, [255, 0, 0])
    })
    .await;
    let speaking = ada
        .last("speaking", |m| m["id"] == ada.id.as_str())
        .unwrap();
    assert_eq!(speaking["speaking"], false, "muted means not speaking");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let heard = viewer.received.recent_audio(48_000);
    let (tone_ada, tone_whip) = (tone_db(&heard, 800.0), tone_db(&heard, 500.0));
    assert!(
        tone_whip > -30.0 && tone_whip - tone_ada >= 20.0,
        "muted Ada at {tone_ada} dB vs {tone_whip} dB"
    );

    // Unmute: the camera is back at once.
    ada.send(json!({"type": "mute", "video": false}));
    wait_for("the blue tile returns", LIMIT, || async {
        colour_in(ada_tile, [0, 0, 255])
    })
    .await;

    // A second offer renegotiates: answered (with trickled candidates) on a fresh peer
    // connection, same participant, no departure.
    let answers = ada
        .inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "answer")
        .count();
    ada.send(json!({"type": "offer", "sdp": ada.offer}));
    wait_for("the renegotiation answer", LIMIT, || async {
        let inbox = ada.inbox.lock().unwrap();
        inbox.iter().filter(|m| m["type"] == "answer").count() > answers
            && inbox.last().is_some_and(|m| m["type"] != "answer")
    })
    .await;
    assert!(
        ada.last("participant-left", |m| m["id"] == ada.id.as_str())
            .is_none()
    );
    let layout = ada.last("layout", |_| true).unwrap();
    assert!(
        tile(&layout, &ada.id, size).is_some(),
        "Ada keeps her tile: {layout}"
    );

    // Leaving updates the others.
    assert_eq!(whip.leave().await, 200);
    wait_for("Ada sees the WHIP participant leave", LIMIT, || async {
        ada.last("participant-left", |m| m["id"] == whip_id.as_str())
            .is_some()
            && ada
                .last("layout", |_| true)
                .is_some_and(|l| l["tiles"].as_array().is_some_and(|t| t.len() == 1))
    })
    .await;
    ada.send(json!({"type": "leave"}));
    wait_for("left", LIMIT, || async {
        ada.last("left", |_| true).is_some()
    })
    .await;
    ada.client.close().await;
    viewer.close().await;
    server.stop().await;
}
