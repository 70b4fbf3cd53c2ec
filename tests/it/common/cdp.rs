//! A minimal Chrome DevTools protocol client for the browser tests: one connection to the
//! browser, pages attached in flat mode, calls answered by id.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Cdp {
    ws: tokio::sync::Mutex<Socket>,
    next: std::sync::atomic::AtomicU64,
}

impl Cdp {
    /// Starts headless Chromium (the tests' flags, a 1280x900 window, `extra` arguments such
    /// as fake-device files) on `profile`, and connects. The child is killed when dropped.
    pub async fn launch(profile: &Path, extra: &[String]) -> (tokio::process::Child, Self) {
        use crate::common::{CHROMIUM, CHROMIUM_FLAGS};
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: `make test` installs Debian's chromium package"
        );
        let child = tokio::process::Command::new(CHROMIUM)
            .args(CHROMIUM_FLAGS)
            .args(extra)
            .args(["--remote-debugging-port=0", "--window-size=1280,900"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let cdp = Self::connect(profile).await;
        (child, cdp)
    }

    /// The fake camera and microphone arguments for files `y4m` and `wav`.
    pub fn fake_devices(y4m: &Path, wav: &Path) -> Vec<String> {
        vec![
            format!("--use-file-for-fake-video-capture={}", y4m.display()),
            format!("--use-file-for-fake-audio-capture={}", wav.display()),
        ]
    }

    /// Connects to the Chromium started with `--remote-debugging-port=0` and
    /// `--user-data-dir=profile` (it writes its DevTools port and browser path there once it
    /// listens).
    pub async fn connect(profile: &Path) -> Self {
        let port_file = profile.join("DevToolsActivePort");
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&port_file).unwrap_or_default();
            if text.lines().count() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut lines = text.lines();
        let (port, path) = (
            lines.next().expect("devtools port"),
            lines.next().expect("devtools path"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("devtools websocket");
        Self {
            ws: tokio::sync::Mutex::new(ws),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Calls `method` (on the page `session`, or the browser) and returns its result.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut ws = self.ws.lock().await;
        ws.send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("devtools connection open")
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// A new page attached in flat mode, at `url`; its session.
    async fn new_page(&self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        attached["sessionId"].as_str().unwrap().to_owned()
    }

    /// Opens `url` in a new page; returns its session.
    pub async fn open(&self, url: &str) -> String {
        self.new_page(url).await
    }

    /// A new page that runs `script` before any of its own, then loads `url`; its session.
    pub async fn open_with(&self, url: &str, script: &str) -> String {
        let page = self.new_page("about:blank").await;
        self.call(Some(&page), "Page.enable", json!({})).await;
        self.call(
            Some(&page),
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": script}),
        )
        .await;
        self.call(Some(&page), "Page.navigate", json!({"url": url}))
            .await;
        page
    }

    /// Evaluates `expr` in the page (awaiting promises) and returns its JSON value.
    pub async fn eval(&self, page: &str, expr: &str) -> Value {
        let r = self
            .call(
                Some(page),
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }
}
