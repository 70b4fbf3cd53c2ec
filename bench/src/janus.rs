//! Janus AudioBridge (Debian's `janus` package) as the reference audio mixer: started with a
//! configuration written here (HTTP transport and the AudioBridge plugin only) and joined
//! through its HTTP API by the same webrtc-rs participants the Mixdown runs use.
//!
//! Janus's ICE (libnice) never gathers loopback candidates, so Janus runs in a network
//! namespace made for the run, joined to this one by a veth pair on a private /30
//! (`HOST_IP` here, `JANUS_IP` there). Nothing leaves the machine; the namespace and its
//! link are deleted when the run ends. This needs root (as `make bench` has).

use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const JANUS: &str = "/usr/bin/janus";
const LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";
pub const ROOM: u64 = 4242;
/// This side of the veth pair: the participants bind here.
pub const HOST_IP: &str = "10.77.0.1";
/// Janus's side.
pub const JANUS_IP: &str = "10.77.0.2";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running ip (iproute2)")?;
    if status.success() {
        Ok(())
    } else {
        Err(anyhow!("ip {} failed: {status}", args.join(" ")))
    }
}

/// A network namespace with one veth link to this namespace; deleted on drop.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    fn create() -> anyhow::Result<Self> {
        let tag = std::process::id() % 100_000;
        let ns = Self {
            name: format!("mdjanus{tag}"),
            host_if: format!("mdj{tag}a"),
        };
        let peer = format!("mdj{tag}b");
        let _ = ip(&["netns", "del", &ns.name]);
        let _ = ip(&["link", "del", &ns.host_if]);
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{HOST_IP}/30"), "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{JANUS_IP}/30"), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// A running Janus, stopped on drop.
pub struct Janus {
    child: Child,
    pub base: String,
    dir: PathBuf,
    _netns: Netns,
}

impl Janus {
    pub async fn start(http_port: u16, rtp_ports: (u16, u16)) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("mixdown-janus-{}-{http_port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let plugins = "libjanus_echotest.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_nosip.so,\
            libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_videoroom.so,\
            libjanus_voicemail.so,libjanus_lua.so,libjanus_duktape.so";
        let transports = "libjanus_websockets.so,libjanus_pfunix.so,libjanus_mqtt.so,\
            libjanus_nanomsg.so,libjanus_rabbitmq.so";
        std::fs::write(
            dir.join("janus.jcfg"),
            format!(
                "general: {{\n  configs_folder = \"{d}\"\n  plugins_folder = \"{LIB}/plugins\"\n  \
                 transports_folder = \"{LIB}/transports\"\n  events_folder = \"{LIB}/events\"\n  \
                 loggers_folder = \"{LIB}/loggers\"\n  debug_level = {level}\n  session_timeout = 120\n}}\n\
                 media: {{\n  rtp_port_range = \"{a}-{b}\"\n}}\n\
                 nat: {{\n  ignore_mdns = true\n}}\n\
                 plugins: {{\n  disable = \"{plugins}\"\n}}\n\
                 transports: {{\n  disable = \"{transports}\"\n}}\n\
                 events: {{\n  broadcast = false\n}}\n",
                d = dir.display(),
                level = if std::env::var_os("MIXDOWN_BENCH_KEEP_LOGS").is_some() {
                    5
                } else {
                    2
                },
                a = rtp_ports.0,
                b = rtp_ports.1,
            ),
        )?;
        std::fs::write(
            dir.join("janus.transport.http.jcfg"),
            format!(
                "general: {{\n  json = \"compact\"\n  base_path = \"/janus\"\n  http = true\n  \
                 port = {http_port}\n  ip = \"{JANUS_IP}\"\n  https = false\n}}\n\
                 admin: {{\n  admin_http = false\n}}\n"
            ),
        )?;
        std::fs::write(dir.join("janus.plugin.audiobridge.jcfg"), "general: {\n}\n")?;
        let log = std::fs::File::create(dir.join("janus.log"))?;
        let netns = Netns::create()?;
        // `ip netns exec` execs Janus in place: the child's pid is Janus's.
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name, JANUS])
            .arg("--configs-folder")
            .arg(&dir)
            .arg("--config")
            .arg(dir.join("janus.jcfg"))
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {JANUS} (Debian package janus)"))?;
        let janus = Self {
            child,
            base: format!("http://{JANUS_IP}:{http_port}/janus"),
            dir,
            _netns: netns,
        };
        for _ in 0..100 {
            if reqwest::get(format!("{}/info", janus.base))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(janus);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(anyhow!("janus did not answer /janus/info within 10 s"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // MIXDOWN_BENCH_KEEP_LOGS keeps the configuration and janus.log for a look.
        if std::env::var_os("MIXDOWN_BENCH_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn transaction() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn post(url: &str, body: Value) -> anyhow::Result<Value> {
    let v: Value = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    if v["janus"] == "error" {
        return Err(anyhow!("janus: {}", v["error"]));
    }
    Ok(v)
}

/// One Janus session with the AudioBridge plugin attached.
pub struct Handle {
    session_url: String,
    handle_url: String,
}

impl Handle {
    pub async fn attach(base: &str) -> anyhow::Result<Self> {
        let s = post(
            base,
            json!({"janus": "create", "transaction": transaction()}),
        )
        .await?;
        let session = s["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no session id: {s}"))?;
        let session_url = format!("{base}/{session}");
        let h = post(
            &session_url,
            json!({"janus": "attach", "plugin": "janus.plugin.audiobridge", "transaction": transaction()}),
        )
        .await?;
        let handle = h["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no handle id: {h}"))?;
        Ok(Self {
            handle_url: format!("{session_url}/{handle}"),
            session_url,
        })
    }

    pub async fn create_room(&self) -> anyhow::Result<()> {
        let r = post(
            &self.handle_url,
            json!({"janus": "message", "transaction": transaction(),
                   "body": {"request": "create", "room": ROOM, "sampling_rate": 48000,
                            "audiolevel_event": false, "record": false}}),
        )
        .await?;
        let data = &r["plugindata"]["data"];
        if data["audiobridge"] == "created" || data["error_code"] == 486 {
            Ok(())
        } else {
            Err(anyhow!("create room: {r}"))
        }
    }

    /// Joins the room with `offer` and returns Janus's SDP answer.
    pub async fn join(&self, offer: String) -> anyhow::Result<String> {
        post(
            &self.handle_url,
            json!({"janus": "message", "transaction": transaction(),
                   "body": {"request": "join", "room": ROOM, "display": "bench"},
                   "jsep": {"type": "offer", "sdp": offer, "trickle": false}}),
        )
        .await?;
        for _ in 0..20 {
            let ev: Value = reqwest::get(format!("{}?maxev=1", self.session_url))
                .await?
                .json()
                .await?;
            let events = if ev.is_array() {
                ev.as_array().cloned().unwrap_or_default()
            } else {
                vec![ev]
            };
            for e in events {
                if let Some(sdp) = e["jsep"]["sdp"].as_str() {
                    return Ok(sdp.to_owned());
                }
            }
        }
        Err(anyhow!("no answer from janus"))
    }
}
