//! Headless Firefox ESR for the browser tests, driven over WebDriver BiDi (Debian has no
//! geckodriver): a fresh profile whose prefs give a fake camera, a fake microphone tone and
//! loopback ICE; pages opened at a URL, async JavaScript evaluated to JSON, screenshots, and
//! the page consoles collected for failure output. Dropping it kills that Firefox (its whole
//! process group) and removes its profile, also when a test panics; it never touches a Firefox
//! or a profile it did not start.

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// The browser, from Debian's `firefox-esr` package (`scripts/install-deps.sh --test`).
pub const FIREFOX: &str = "firefox-esr";
/// How long Firefox may take to start listening for WebDriver BiDi (a hang guard).
const LISTEN_LIMIT: Duration = Duration::from_secs(30);
/// How long one BiDi command may take; a navigation waits for the page's `load` (a hang guard).
const CALL_LIMIT: Duration = Duration::from_secs(30);
/// Firefox's stderr lines kept for failure output (the oldest go first).
const STDERR_LINES: usize = 50;
/// Each page's viewport, as the Chromium tests' `--window-size`: what screenshots show.
const VIEWPORT: (u32, u32) = (1280, 900);
/// What Firefox prints, followed by `ws://127.0.0.1:PORT`, once its remote agent listens.
const LISTENING: &str = "WebDriver BiDi listening on ";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Test prefs for the profile's `user.js`; `media.navigator.audio.fake_frequency` is added
/// by [`Firefox::launch`].
const PREFS: &[(&str, &str)] = &[
    // A fake camera and microphone, granted without a prompt.
    ("media.navigator.streams.fake", "true"),
    ("media.navigator.permission.disabled", "true"),
    // Received audio plays without a click.
    ("media.autoplay.default", "0"),
    // ICE host candidates on 127.0.0.1 (and ::1), named by address, not by mDNS `.local`.
    ("media.peerconnection.ice.loopback", "true"),
    ("media.peerconnection.ice.obfuscate_host_addresses", "false"),
    // Without a stored camera or microphone permission (the fake devices do not count as
    // capturing) ICE uses only the default route's addresses, whatever the loopback pref: no
    // 127.0.0.1 candidate, no pairing with a server's 127.0.0.1 candidate, and no candidates
    // at all in a network namespace with only `lo`. A default "allow" counts as one.
    ("permissions.default.camera", "1"),
    ("permissions.default.microphone", "1"),
    // WebDriver BiDi only.
    ("remote.active-protocols", "1"),
    // Usual test-profile hygiene: no first-run pages, updates or telemetry.
    ("browser.shell.checkDefaultBrowser", "false"),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("toolkit.telemetry.reportingpolicy.firstRun", "false"),
    ("app.update.disabledForTesting", "true"),
    ("browser.startup.homepage_override.mstone", "\"ignore\""),
    ("network.captive-portal-service.enabled", "false"),
];

/// Profiles of this test process are numbered, so tests running at once never share one.
static NEXT_PROFILE: AtomicU64 = AtomicU64::new(1);

pub struct Firefox {
    child: tokio::process::Child,
    /// Removed when dropped, after `Drop for Firefox` has stopped the browser.
    _profile: Profile,
    ws: tokio::sync::Mutex<Socket>,
    next: AtomicU64,
    /// `log.entryAdded` events of every page, as `level: text` lines, in arrival order.
    console: Mutex<Vec<String>>,
    /// The last lines Firefox wrote to stderr.
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Firefox {
    /// Starts headless Firefox on a fresh profile whose fake microphone plays a `tone_hz`
    /// sine, connects to its WebDriver BiDi endpoint and opens a session that collects the
    /// console of every page. Panics, naming the install script, when Firefox is missing.
    pub async fn launch(tone_hz: u32) -> Self {
        let profile = std::env::temp_dir().join(format!(
            "mixdown-firefox-{}-{}",
            std::process::id(),
            NEXT_PROFILE.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("firefox profile dir");
        let profile = Profile(profile);
        let hz = tone_hz.to_string();
        let mut user_js = String::new();
        for (name, value) in PREFS
            .iter()
            .copied()
            .chain([("media.navigator.audio.fake_frequency", hz.as_str())])
        {
            user_js.push_str(&format!("user_pref(\"{name}\", {value});\n"));
        }
        std::fs::write(profile.0.join("user.js"), user_js).expect("firefox user.js");

        let spawned = tokio::process::Command::new(FIREFOX)
            .args(["-headless", "-no-remote", "-profile"])
            .arg(&profile.0)
            .args(["--remote-debugging-port", "0"])
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            // Its own process group, so that dropping kills the content processes too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!(
                    "{FIREFOX} is missing: `scripts/install-deps.sh --test` installs Debian's \
                     firefox-esr package"
                )
            }
            Err(e) => panic!("{FIREFOX} does not start: {e}"),
        };
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        // The stderr pipe (once it is known which port Firefox listens on) is drained for as
        // long as Firefox runs, so that it never blocks on a full pipe.
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let url = tokio::time::timeout(LISTEN_LIMIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let url = line
                    .split_once(LISTENING)
                    .map(|(_, url)| url.trim().to_owned());
                keep(&stderr, line);
                if url.is_some() {
                    return url;
                }
            }
            None
        })
        .await;
        let url = match url {
            Ok(Some(url)) => url,
            failed => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                panic!(
                    "{FIREFOX} {} WebDriver BiDi; its stderr:\n{}",
                    if failed.is_err() {
                        "did not start listening for"
                    } else {
                        "exited before listening for"
                    },
                    tail(&stderr)
                )
            }
        };
        tokio::spawn({
            let stderr = stderr.clone();
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    keep(&stderr, line);
                }
            }
        });
        let (ws, _) = tokio_tungstenite::connect_async(format!("{url}/session"))
            .await
            .expect("firefox webdriver bidi websocket");
        let firefox = Self {
            child,
            _profile: profile,
            ws: tokio::sync::Mutex::new(ws),
            next: AtomicU64::new(1),
            console: Mutex::new(Vec::new()),
            stderr,
        };
        // Self-signed test servers (HTTPS) are accepted like a person who clicked through.
        firefox
            .call(
                "session.new",
                json!({"capabilities": {"alwaysMatch": {"acceptInsecureCerts": true}}}),
            )
            .await;
        firefox
            .call("session.subscribe", json!({"events": ["log.entryAdded"]}))
            .await;
        firefox
    }

    /// Sends the BiDi command `method` and returns its result; panics on an error reply.
    /// Events that arrive meanwhile are kept (the console) or skipped.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let msg = json!({"id": id, "method": method, "params": params});
        let mut ws = self.ws.lock().await;
        ws.send(Message::Text(msg.to_string().into()))
            .await
            .unwrap_or_else(|e| panic!("{method}: firefox connection: {e}"));
        loop {
            let m = tokio::time::timeout(CALL_LIMIT, ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} in {CALL_LIMIT:?}"))
                .unwrap_or_else(|| {
                    let stderr = tail(&self.stderr);
                    panic!("{method}: firefox closed the connection; its stderr:\n{stderr}")
                })
                .unwrap_or_else(|e| panic!("{method}: firefox connection: {e}"));
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("webdriver bidi sends JSON");
            if v["type"] == "event" {
                if v["method"] == "log.entryAdded" {
                    self.console.lock().unwrap().push(log_line(&v["params"]));
                }
            } else if v["id"] == id {
                assert!(v["type"] == "success", "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new window (each page in its own window stays visible, so its timers
    /// and frames are not throttled like a background tab's), waiting for its `load`; returns
    /// its browsing context.
    pub async fn open(&self, url: &str) -> String {
        let context = self.new_window().await;
        self.navigate(&context, url).await;
        context
    }

    /// Like [`Firefox::open`], with `script` run in the page before any of its own.
    #[allow(dead_code)] // the counterpart of `Cdp::open_with`, for a page that needs a shim
    pub async fn open_with(&self, url: &str, script: &str) -> String {
        let context = self.new_window().await;
        self.call(
            "script.addPreloadScript",
            json!({"functionDeclaration": format!("() => {{\n{script}\n}}"), "contexts": [context]}),
        )
        .await;
        self.navigate(&context, url).await;
        context
    }

    async fn new_window(&self) -> String {
        let created = self
            .call("browsingContext.create", json!({"type": "window"}))
            .await;
        let context = created["context"]
            .as_str()
            .expect("a browsing context id")
            .to_owned();
        let (width, height) = VIEWPORT;
        self.call(
            "browsingContext.setViewport",
            json!({"context": context, "viewport": {"width": width, "height": height}}),
        )
        .await;
        context
    }

    /// Loads `url` in `context` and waits for its `load` event.
    pub async fn navigate(&self, context: &str, url: &str) {
        self.call(
            "browsingContext.navigate",
            json!({"context": context, "url": url, "wait": "complete"}),
        )
        .await;
    }

    /// Evaluates the JavaScript expression `expression` in `context`, awaits it if it is a
    /// promise, and returns its value as JSON (`undefined` is `null`). Panics when it throws.
    pub async fn eval_json(&self, context: &str, expression: &str) -> Value {
        let r = self
            .call(
                "script.evaluate",
                json!({
                    "expression": format!("(async () => JSON.stringify(await (\n{expression}\n)))()"),
                    "target": {"context": context},
                    "awaitPromise": true,
                    "resultOwnership": "none",
                }),
            )
            .await;
        if r["type"] == "exception" {
            let d = &r["exceptionDetails"];
            panic!(
                "the page threw {} (line {}): {expression}",
                d["text"], d["lineNumber"]
            );
        }
        match &r["result"] {
            v if v["type"] == "string" => {
                serde_json::from_str(v["value"].as_str().unwrap_or_default())
                    .expect("JSON.stringify gives JSON")
            }
            _ => Value::Null,
        }
    }

    /// Saves a PNG of what `context` shows (its viewport) to `path`, creating its folder.
    pub async fn screenshot(&self, context: &str, path: &Path) {
        let shot = self
            .call(
                "browsingContext.captureScreenshot",
                json!({"context": context}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, &png).unwrap();
    }

    /// Everything the pages logged so far (console calls and uncaught errors), as
    /// `level: text` lines.
    pub async fn console(&self) -> Vec<String> {
        // A round trip picks up the entries already sent.
        self.call("session.status", json!({})).await;
        self.console.lock().unwrap().clone()
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let console = self
                .console
                .lock()
                .map(|c| c.join("\n"))
                .unwrap_or_default();
            eprintln!(
                "firefox console:\n{console}\nfirefox stderr:\n{}",
                tail(&self.stderr)
            );
        }
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) has no memory effects; the group is the one Firefox leads, made
            // by `process_group(0)` at spawn, and the leader is not reaped yet (it has an id).
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        }
        // Wait (briefly) for it to die before the profile it writes to is removed.
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A Firefox profile directory of this test process; removed on drop.
struct Profile(PathBuf);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `log.entryAdded` entry as a line: `error: TypeError: … (http://…/app.js:12)`.
fn log_line(entry: &Value) -> String {
    let text = entry["text"].as_str().unwrap_or_default();
    let at = &entry["stackTrace"]["callFrames"][0];
    match at["url"].as_str() {
        Some(url) if !url.is_empty() => format!(
            "{}: {text} ({url}:{})",
            entry["level"].as_str().unwrap_or("?"),
            at["lineNumber"].as_u64().map_or(0, |l| l + 1)
        ),
        _ => format!("{}: {text}", entry["level"].as_str().unwrap_or("?")),
    }
}

fn keep(stderr: &Mutex<VecDeque<String>>, line: String) {
    let mut lines = stderr.lock().unwrap();
    if lines.len() == STDERR_LINES {
        lines.pop_front();
    }
    lines.push_back(line);
}

fn tail(stderr: &Mutex<VecDeque<String>>) -> String {
    let lines = stderr.lock().map(|l| l.clone()).unwrap_or_default();
    Vec::from(lines).join("\n")
}
