//! Three Mixdown processes sharing rooms through a real `redis-server` (Debian's, on a loopback
//! port, started and stopped by each test): one room on one node whichever node a client asks,
//! the room back elsewhere within 10 s of its node's `kill -9`, calls that survive Redis going
//! away, and exactly one winner when two nodes claim a new room at once.

use crate::common::client::{Client, ClientOptions};
use crate::common::{close_to, init_logging, test_config, wait_for};
use crate::e2e::{BLUE, GREEN, RED};
use mixdown_bench::run::ServerProcess;
use std::path::Path;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);
const COLOUR_TOLERANCE: f32 = 48.0;
const PASSWORD: &str = "cluster-test-password";

/// A `redis-server` on a loopback port, killed when dropped.
struct Redis {
    child: Option<std::process::Child>,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Self { child: None, port };
        r.restart();
        r
    }

    /// (Re)starts the server on its port, empty.
    fn restart(&mut self) {
        assert!(
            Path::new("/usr/bin/redis-server").exists(),
            "redis-server is missing: `make test` installs Debian's redis-server package"
        );
        let child = std::process::Command::new("/usr/bin/redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// With Redis' own authentication, as a deployment would have it.
    fn url(&self) -> String {
        format!("redis://:{PASSWORD}@127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    fn get(&self, key: &str) -> Option<String> {
        let mut c = redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        redis::cmd("GET").arg(key).query(&mut c).ok()?
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("KEYS").arg(pattern).query(&mut c))
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` nodes against `redis`, named node0…, recording into `dir`.
async fn nodes_recording(redis: &Redis, n: usize, dir: &Path) -> Vec<ServerProcess> {
    let bin = Path::new(env!("CARGO_BIN_EXE_mixdown"));
    let mut out = Vec::new();
    for i in 0..n {
        let port = test_config().rtc.udp_port;
        let extra = format!(
            "[cluster]\nredis_url = \"{}\"\nnode_url = \"http://127.0.0.1:{{http_port}}\"\n\
             node_id = \"node{i}\"\n[recording]\ndir = \"{}\"\n",
            redis.url(),
            dir.display()
        );
        out.push(
            ServerProcess::start(bin, (port, port), &extra)
                .await
                .expect("a node starts"),
        );
    }
    wait_for("every node in the directory", LIMIT, || async {
        redis.keys("mixdown:node:*").len() == n
    })
    .await;
    out
}

async fn nodes(redis: &Redis, n: usize) -> Vec<ServerProcess> {
    let dir = std::env::temp_dir().join(format!("mixdown-cluster-{}", std::process::id()));
    nodes_recording(redis, n, &dir).await
}

/// A participant of colour `argb` and a `hz` tone joining `room` through `node`.
async fn join(node: &ServerProcess, room: &str, argb: u32, hz: f32) -> Client {
    Client::join(&node.base, room, ClientOptions::participant(argb, hz)).await
}

/// The node (index) serving `room`, by its claim.
fn owner(redis: &Redis, room: &str) -> Option<usize> {
    redis
        .get(&format!("mixdown:room:{room}"))
        .and_then(|id| id.strip_prefix("node")?.parse().ok())
}

/// Every client sees every other's colour in its tile (tiles from the serving node).
async fn assert_colours(node: &ServerProcess, room: &str, clients: &[(&Client, [u8; 3])]) {
    for (viewer, _) in clients {
        for (other, colour) in clients {
            let last = std::sync::Mutex::new(String::new());
            wait_for("a colour in its tile", LIMIT, || async {
                let (Some(rect), Some(frame)) = (
                    node.tile_of(room, &other.location).await,
                    viewer.received.frame(),
                ) else {
                    return false;
                };
                let mean = frame.mean(rect);
                *last.lock().unwrap() = format!("{mean:?} in {rect:?}");
                close_to(mean, *colour, COLOUR_TOLERANCE)
            })
            .await;
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket")
        .0
}

async fn ws_send(ws: &mut Ws, v: serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        v.to_string().into(),
    ))
    .await
    .unwrap();
}

async fn ws_recv(ws: &mut Ws) -> serde_json::Value {
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message")
            .expect("open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_room_on_one_node() {
    init_logging();
    gstreamer::init().expect("GStreamer for the test clients");
    let redis = Redis::start();
    let nodes = nodes(&redis, 3).await;
    let room = "shared";
    // One participant through each node; WHIP follows the 307s.
    let a = join(&nodes[0], room, RED.0, 440.0).await;
    let b = join(&nodes[1], room, GREEN.0, 660.0).await;
    let c = join(&nodes[2], room, BLUE.0, 880.0).await;
    let o = owner(&redis, room).expect("the room is claimed");
    for cl in [&a, &b, &c] {
        assert!(
            cl.location.starts_with(&nodes[o].base),
            "{} is not on the owner {}",
            cl.location,
            nodes[o].base
        );
    }
    let info = nodes[o].room_info(room).await.unwrap();
    assert_eq!(info["participants"].as_array().unwrap().len(), 3, "{info}");
    // The other nodes run no copy of it: their room lists are the cluster's, with the owner.
    for (i, n) in nodes.iter().enumerate() {
        let list: serde_json::Value = reqwest::get(format!("{}/api/rooms", n.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["rooms"], serde_json::json!([room]), "node{i}: {list}");
        assert_eq!(list["cluster"][0]["node"], format!("node{o}"), "{list}");
    }
    assert_colours(&nodes[o], room, &[(&a, RED.1), (&b, GREEN.1), (&c, BLUE.1)]).await;
    // The REST API of a non-owner redirects to the owner (307 keeps method and body).
    let other = (o + 1) % 3;
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(format!("{}/api/rooms/{room}", nodes[other].base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}/api/rooms/{room}", nodes[o].base)
    );
    // The WebSocket of a non-owner answers `join` with the owner's socket, which takes it.
    let ws_base = |i: usize| nodes[i].base.replace("http://", "ws://");
    let mut ws = ws_connect(&format!("{}/ws", ws_base(other))).await;
    ws_send(
        &mut ws,
        serde_json::json!({"type": "join", "room": room, "name": "Wanda"}),
    )
    .await;
    let m = ws_recv(&mut ws).await;
    assert_eq!(m["type"], "redirect", "{m}");
    let url = m["url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("{}/ws?placed=1", ws_base(o)));
    let mut ws = ws_connect(&url).await;
    ws_send(
        &mut ws,
        serde_json::json!({"type": "join", "room": room, "name": "Wanda"}),
    )
    .await;
    let m = ws_recv(&mut ws).await;
    assert_eq!(m["type"], "welcome", "{m}");
    assert_eq!(m["participants"].as_array().map(Vec::len), Some(3), "{m}");
    drop(ws);
    for cl in [a, b, c] {
        assert_eq!(cl.leave().await, 200);
    }
    wait_for("the claim released once the room closes", LIMIT, || async {
        owner(&redis, room).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_comes_back_on_another_node_when_its_node_dies() {
    init_logging();
    gstreamer::init().expect("GStreamer for the test clients");
    let redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("mixdown-cluster-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut nodes = nodes_recording(&redis, 3, &dir).await;
    let room = "failover";
    let a = join(&nodes[0], room, RED.0, 440.0).await;
    let b = join(&nodes[0], room, GREEN.0, 660.0).await;
    let o = owner(&redis, room).expect("claimed");
    // A recording runs on the owner when it dies (started through another node: 307).
    let started = reqwest::Client::new()
        .post(format!(
            "{}/api/rooms/{room}/recordings",
            nodes[(o + 1) % 3].base
        ))
        .json(&serde_json::json!({"format": "webm", "name": "failover"}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    // Its heartbeat tells Redis about it, then it writes a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-9", &nodes[o].pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    a.close().await;
    b.close().await;
    // Rejoin through a surviving node until the room is back.
    let via = (o + 1) % 3;
    let mut a2 = None;
    while killed.elapsed() < Duration::from_secs(15) {
        match Client::try_join(
            &nodes[via].base,
            room,
            ClientOptions::participant(RED.0, 440.0),
        )
        .await
        {
            Ok(c) => {
                a2 = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let back = killed.elapsed();
    let a2 = a2.expect("the room came back");
    println!("room back {back:?} after kill -9 of node{o}");
    assert!(back < Duration::from_secs(10), "{back:?}");
    let b2 = join(&nodes[(o + 2) % 3], room, GREEN.0, 660.0).await;
    let o2 = owner(&redis, room).expect("claimed again");
    assert_ne!(o2, o);
    // The recording is listed as failed, with why, and its file is there.
    let list: serde_json::Value =
        reqwest::get(format!("{}/api/rooms/{room}/recordings", nodes[o2].base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let rec = &list[0];
    assert_eq!(rec["state"], "failed", "{list}");
    assert!(
        rec["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("node{o}"))),
        "{list}"
    );
    let size = std::fs::metadata(dir.join("failover.webm"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(size > 10_000, "the file has {size} bytes");
    assert_colours(&nodes[o2], room, &[(&a2, RED.1), (&b2, GREEN.1)]).await;
    a2.leave().await;
    b2.leave().await;
    // The killed node's process is gone; its handle only cleans its folder.
    nodes.remove(o);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_while_redis_is_away_and_the_directory_is_repaired() {
    init_logging();
    gstreamer::init().expect("GStreamer for the test clients");
    let mut redis = Redis::start();
    let nodes = nodes(&redis, 2).await;
    let a = join(&nodes[0], "before", RED.0, 440.0).await;
    let b = join(&nodes[0], "before", GREEN.0, 660.0).await;
    let o = owner(&redis, "before").expect("claimed");
    redis.stop();
    let redis_state = |i: usize| {
        let base = nodes[i].base.clone();
        async move {
            let h: serde_json::Value = reqwest::get(format!("{base}/healthz"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            h["cluster"]["redis"].as_str().map(str::to_owned)
        }
    };
    wait_for("the node says Redis is down", LIMIT, || async {
        redis_state(0).await.as_deref() == Some("down")
    })
    .await;
    // The call goes on: frames keep arriving.
    let frames = |c: &Client| c.received.rtp_frames.lock().unwrap().len();
    let n = frames(&b);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(frames(&b) > n + 30, "{} → {} frames", n, frames(&b));
    // A new room on the other node still works.
    let c = join(&nodes[1], "during", BLUE.0, 880.0).await;
    assert_colours(&nodes[1], "during", &[(&c, BLUE.1)]).await;
    assert_colours(&nodes[o], "before", &[(&a, RED.1), (&b, GREEN.1)]).await;
    // Redis back (empty): the directory and both claims come back.
    redis.restart();
    wait_for("the node says Redis is up", LIMIT, || async {
        redis_state(0).await.as_deref() == Some("up")
    })
    .await;
    wait_for("the directory repaired", LIMIT, || async {
        redis.keys("mixdown:node:*").len() == 2
            && owner(&redis, "before") == Some(o)
            && owner(&redis, "during") == Some(1)
    })
    .await;
    for cl in [a, b, c] {
        cl.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_a_new_room_have_one_winner() {
    init_logging();
    gstreamer::init().expect("GStreamer for the test clients");
    let redis = Redis::start();
    let nodes = nodes(&redis, 2).await;
    // `placed=1` skips placement, so both nodes try to claim at once.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for k in 0..5 {
        let room = format!("race{k}");
        let post = |i: usize| {
            http.post(format!("{}/whip/{room}?placed=1", nodes[i].base))
                .header("Content-Type", "application/sdp")
                .body("v=0\r\n")
                .send()
        };
        let (r0, r1) = tokio::join!(post(0), post(1));
        let (r0, r1) = (r0.unwrap(), r1.unwrap());
        let redirected: Vec<(usize, String)> = [(0, &r0), (1, &r1)]
            .into_iter()
            .filter(|(_, r)| r.status() == 307)
            .map(|(i, r)| (i, r.headers()["location"].to_str().unwrap().to_owned()))
            .collect();
        let w = owner(&redis, &room).expect("claimed");
        assert_eq!(
            redirected.len(),
            1,
            "{room}: {} and {}",
            r0.status(),
            r1.status()
        );
        let (loser, location) = &redirected[0];
        assert_ne!(*loser, w, "{room}");
        assert!(
            location.starts_with(&format!("{}/whip/{room}", nodes[w].base)),
            "{location}"
        );
        // The winner read the offer (a bad one here) itself.
        let winner = if w == 0 { &r0 } else { &r1 };
        assert_eq!(winner.status(), 400, "{room}");
    }
}
