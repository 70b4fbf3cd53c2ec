//! Join floods: tasks that POST WHIP offers with no token or a bad one as fast as the server
//! answers, while a room with tokens runs. The server must refuse them (401) without its room
//! noticing: the benchmark compares the room's fps and late frames with and without a flood.

use mixdown::auth::{Claims, VideoGrant, mint, now_unix};
use std::collections::BTreeMap;
use std::time::Duration;

/// The benchmark server's API key and secret.
pub const KEY: &str = "bench";
pub const SECRET: &str = "bench-secret-bench-secret-bench-secret";

/// A token for `room`: a participant's, or (`admin`) one that may also read the room.
pub fn token(room: &str, admin: bool) -> String {
    let now = now_unix();
    mint(
        &Claims {
            iss: KEY.into(),
            sub: if admin { "harness" } else { "generator" }.into(),
            name: String::new(),
            nbf: Some(now - 1),
            exp: now + 3600,
            video: VideoGrant {
                room: room.into(),
                room_join: true,
                room_admin: admin,
                ..VideoGrant::default()
            },
        },
        SECRET,
    )
}

/// What the flood sent and what it got back.
#[derive(Clone, Debug, Default)]
pub struct FloodStats {
    pub requests: u64,
    /// Answers by HTTP status (0: the request failed).
    pub statuses: BTreeMap<u16, u64>,
    pub seconds: f64,
    /// CPU of the attacker process over the window (cores).
    pub attacker_cores: f64,
}

impl FloodStats {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "requests": self.requests,
            "seconds": self.seconds,
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        })
        .to_string()
    }

    pub fn from_json(text: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
        Some(Self {
            requests: v["requests"].as_u64()?,
            seconds: v["seconds"].as_f64()?,
            statuses: v["statuses"]
                .as_object()?
                .iter()
                .filter_map(|(k, n)| Some((k.parse().ok()?, n.as_u64()?)))
                .collect(),
            attacker_cores: f64::NAN,
        })
    }

    pub fn add(&mut self, other: &FloodStats) {
        self.requests += other.requests;
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }
}

/// An offer-shaped body (never parsed: the token is checked first).
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\n";

/// Posts to `url` until `stop`: even tasks anonymously, odd ones with a token signed by the
/// wrong secret; each on its own keep-alive connection.
pub async fn flooder(
    url: String,
    index: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> FloodStats {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let bad = {
        let now = now_unix();
        mint(
            &Claims {
                iss: KEY.into(),
                sub: "intruder".into(),
                name: String::new(),
                nbf: None,
                exp: now + 3600,
                video: VideoGrant {
                    room: "bench".into(),
                    room_join: true,
                    ..VideoGrant::default()
                },
            },
            "not-the-secret-not-the-secret-not-the-secret",
        )
    };
    let mut stats = FloodStats::default();
    while !*stop.borrow_and_update() {
        let mut r = http
            .post(&url)
            .header("Content-Type", "application/sdp")
            .body(OFFER);
        if index % 2 == 1 {
            r = r.bearer_auth(&bad);
        }
        let status = match r.send().await {
            Ok(res) => {
                let s = res.status().as_u16();
                let _ = res.bytes().await;
                s
            }
            Err(_) => 0,
        };
        stats.requests += 1;
        *stats.statuses.entry(status).or_default() += 1;
    }
    stats
}

/// Floods `url` with `tasks` flooders for `window` (the attacker process's whole work).
pub async fn flood_for(url: &str, tasks: usize, window: Duration) -> FloodStats {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|i| tokio::spawn(flooder(url.to_owned(), i, stopped.clone())))
        .collect();
    tokio::time::sleep(window).await;
    let _ = stop.send(true);
    let mut total = FloodStats::default();
    for h in handles {
        if let Ok(s) = h.await {
            total.add(&s);
        }
    }
    total.seconds = start.elapsed().as_secs_f64();
    total
}

/// Runs the flood in its own process (this binary, `--flood-target`), so that the attacker
/// does not share the generator's runtime with the probe that measures the room.
pub fn spawn_attacker(
    url: &str,
    tasks: usize,
    window: Duration,
) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new(std::env::current_exe()?)
        .arg("--flood-target")
        .arg(url)
        .arg("--flood-tasks")
        .arg(tasks.to_string())
        .arg("--flood-seconds")
        .arg(window.as_secs_f64().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
}
