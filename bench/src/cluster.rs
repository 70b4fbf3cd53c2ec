//! Join latency in a cluster: a room served by node A, and WHEP viewers joining it either
//! directly at A or through node B, which answers 307 and the client follows. Both kinds
//! alternate within one run, against one `redis-server` started here.

use crate::client::{Client, ClientOptions};
use crate::run::ServerProcess;
use anyhow::{Context, anyhow};
use std::path::Path;
use std::time::{Duration, Instant};

/// Medians of the joins of each kind, in ms: the offer's answer (what the client waits for
/// before ICE), and the first composite frame.
#[derive(Debug, Clone, Default)]
pub struct ClusterJoins {
    pub direct_answer_ms: Vec<f64>,
    pub direct_frame_ms: Vec<f64>,
    pub redirected_answer_ms: Vec<f64>,
    pub redirected_frame_ms: Vec<f64>,
}

struct Redis(std::process::Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `joins` viewers of each kind, alternating, into a room of one publisher on node A.
pub async fn join_latency(
    bin: &Path,
    joins: usize,
    ports: (u16, u16),
) -> anyhow::Result<ClusterJoins> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let redis = Redis(
        std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server (scripts/install-deps.sh --bench installs it)")?,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = |id: &str| {
        format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\nnode_url = \"http://127.0.0.1:{{http_port}}\"\nnode_id = \"{id}\"\n"
        )
    };
    let a = ServerProcess::start(bin, (ports.0, ports.0), &extra("a")).await?;
    let b = ServerProcess::start(bin, (ports.0 + 1, ports.0 + 1), &extra("b")).await?;
    // Both in the directory before the room is placed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let room = "cluster-bench";
    // `?placed=1` pins the room to A (no placement), as a room already running there is.
    let url_a = format!("{}/whip/{room}?placed=1", a.base);
    let mut publisher = ClientOptions::participant(0xffff0000, 440.0);
    publisher.decode = false;
    let offer_publisher = Client::connect(&a.base, publisher, async |offer: String| {
        crate::client::whip_exchange(&url_a, offer).await
    })
    .await
    .map_err(|e| anyhow!("publisher: {e}"))?;
    let mut out = ClusterJoins::default();
    for _ in 0..joins {
        for (through, direct) in [(&a, true), (&b, false)] {
            // Keyframes forced for joiners coalesce to one per 300 ms: apart by more, each
            // join waits for its own, whichever way it came.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut o = ClientOptions::viewer();
            o.decode = false;
            let t = Instant::now();
            let url = format!("{}/whep/{room}", through.base);
            let answered = std::sync::Arc::new(std::sync::Mutex::new(None));
            let mark = answered.clone();
            let viewer = Client::connect(&through.base, o, async move |offer: String| {
                let r = crate::client::whip_exchange(&url, offer).await;
                *mark.lock().unwrap() = Some(t.elapsed());
                r
            })
            .await
            .map_err(|e| anyhow!("viewer: {e}"))?;
            if !viewer.location.starts_with(&a.base) {
                return Err(anyhow!(
                    "the viewer landed on {}, not node A",
                    viewer.location
                ));
            }
            let answer = answered.lock().unwrap().unwrap_or_default();
            let deadline = Instant::now() + Duration::from_secs(10);
            while viewer.received.rtp_frames.lock().unwrap().is_empty() {
                if Instant::now() > deadline {
                    return Err(anyhow!("no frame within 10 s"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let frame = t.elapsed();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            if direct {
                out.direct_answer_ms.push(ms(answer));
                out.direct_frame_ms.push(ms(frame));
            } else {
                out.redirected_answer_ms.push(ms(answer));
                out.redirected_frame_ms.push(ms(frame));
            }
            viewer.leave().await;
        }
    }
    offer_publisher.leave().await;
    drop((a, b, redis));
    Ok(out)
}
