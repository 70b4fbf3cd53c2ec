//! The one configuration tree, read from TOML. Every key has a default (the named constants
//! below), unknown keys are errors, and [`Config::validate`] names the offending key.
//! `mixdown.example.toml` documents every key; a test parses it.

use crate::media::VideoCodec;
use crate::output::spec::RecordFormat;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// The one UDP port every peer connection shares. Outside Linux's default ephemeral range
/// (32768–60999), so the bind never collides with an outgoing socket.
pub const DEFAULT_UDP_PORT: u16 = 20000;
/// More reader sockets than this would only contend for the same cores.
pub const MAX_UDP_SHARDS: usize = 64;
pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 720;
pub const DEFAULT_FRAMERATE: u32 = 30;
pub const DEFAULT_VIDEO_BITRATE_KBPS: u32 = 1500;
/// Video jitter buffer: enough for loopback and LAN reordering, far below GStreamer's 200 ms.
pub const DEFAULT_VIDEO_JITTER_MS: u32 = 30;
pub const DEFAULT_KEYFRAME_INTERVAL_S: u32 = 10;
/// Composite pacing: how far behind the fastest recent frame a frame may be held so frames
/// leave evenly. Measured encoder output jitter at 20 participants: 5 ms median, 14 ms p99.
pub const DEFAULT_PACING_MARGIN_MS: u32 = 15;
pub const DEFAULT_AUDIO_BITRATE_KBPS: u32 = 32;
pub const DEFAULT_AUDIO_JITTER_MS: u32 = 20;
pub const DEFAULT_MAX_PARTICIPANTS: usize = 100;
/// The most participants a room may be configured for.
pub const MAX_PARTICIPANTS: usize = 1000;
/// Publishers on screen at most (the rest are not decoded).
pub const DEFAULT_MAX_TILES: usize = 16;
/// Voices in the audio mix at most (the rest are not decoded).
pub const DEFAULT_MAX_SPEAKERS: usize = 3;
pub const DEFAULT_ICE_TIMEOUT_S: u32 = 8;
/// Seconds a graceful shutdown lets calls go on (under Docker's 10 s stop timeout, with time
/// left to finalise recordings).
pub const DEFAULT_DRAIN_S: u32 = 5;
/// How long handed-out TURN credentials stay valid (coturn REST API).
pub const DEFAULT_TURN_TTL_S: u32 = 3600;
/// Relative paths are resolved against the working directory (the repository for `make run`).
pub const DEFAULT_RECORDING_DIR: &str = "recordings";
pub const DEFAULT_HLS_DIR: &str = "hls";
pub const DEFAULT_HLS_SEGMENT_S: u32 = 2;
pub const DEFAULT_HLS_PLAYLIST_LENGTH: u32 = 5;
pub const DEFAULT_RTMP_MAX_RETRY_S: u32 = 30;

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub rtc: RtcConfig,
    pub video: VideoConfig,
    pub audio: AudioConfig,
    pub room: RoomConfig,
    pub recording: RecordingConfig,
    pub hls: HlsConfig,
    pub rtmp: RtmpConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub cluster: ClusterConfig,
}

/// Several nodes sharing rooms through Redis (see `crate::cluster`). Off while `redis_url` is
/// empty: Mixdown is then the single self-contained process it always was.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. Empty: one node.
    pub redis_url: String,
    /// Where clients and the other nodes reach this node (`http://10.0.0.5:8080`): the base of
    /// the redirects other nodes answer with.
    pub node_url: String,
    /// This node's name in the directory (default: its `node_url`).
    pub node_id: String,
    /// A node's directory entry and its room claims lapse this long after it stops renewing
    /// them (it renews every third of it): how long a dead node's rooms stay unreachable.
    pub claim_ttl_s: u32,
}

pub const DEFAULT_CLAIM_TTL_S: u32 = 5;

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            node_url: String::new(),
            node_id: String::new(),
            claim_ttl_s: DEFAULT_CLAIM_TTL_S,
        }
    }
}

/// Access tokens (see `crate::auth`). With no keys Mixdown is open: it starts so only when
/// every listener is on loopback, or when `open = true` says it is meant.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// API key → secret (at least 32 bytes). `MIXDOWN_API_KEY` and `MIXDOWN_API_SECRET` in the
    /// environment add one more.
    pub keys: std::collections::BTreeMap<String, String>,
    /// Run without tokens on a non-loopback address (a private network, a proxy that checks).
    pub open: bool,
}

/// What one client or room may take. Every limit answers 429 (a client's own) or 503 (the
/// server's or a room's) with `Retry-After`, and is counted in `GET /healthz`. 0 disables the
/// per-address limit.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Rooms open at once.
    pub max_rooms: usize,
    /// WHIP/WHEP/WebSocket sessions from one client address at once (0: no limit).
    pub sessions_per_address: usize,
    /// Viewers (sessions that send nothing: WHEP, receive-only WHIP) per room, counted apart
    /// from participants (`room.max_participants`).
    pub max_viewers: usize,
    /// Largest picture a publisher may send (width x height); a larger one's tile is dropped.
    pub max_video_pixels: u32,
    /// Datagrams one session may send per second (half a second of burst); the rest are
    /// dropped before decryption.
    pub packets_per_second: u32,
    /// HTTP connections open at once; more wait in the kernel's backlog.
    pub http_connections: usize,
    /// Seconds a client has to send its request headers.
    pub http_header_timeout_s: u32,
    /// Seconds a WebSocket may stay silent (the server pings every third of it).
    pub ws_idle_timeout_s: u32,
}

pub const DEFAULT_MAX_ROOMS: usize = 50;
/// Enough for a household or a small office behind one NAT address.
pub const DEFAULT_SESSIONS_PER_ADDRESS: usize = 50;
pub const DEFAULT_MAX_VIEWERS: usize = 200;
/// 1920x1080 with room for 1088-line H.264 and portrait phones.
pub const DEFAULT_MAX_VIDEO_PIXELS: u32 = 1920 * 1088;
/// Ten times a 2.5 Mbit/s camera's packets with its audio (about 300/s).
pub const DEFAULT_PACKETS_PER_SECOND: u32 = 3000;
pub const DEFAULT_HTTP_CONNECTIONS: usize = 1024;
pub const DEFAULT_HTTP_HEADER_TIMEOUT_S: u32 = 10;
pub const DEFAULT_WS_IDLE_TIMEOUT_S: u32 = 60;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_rooms: DEFAULT_MAX_ROOMS,
            sessions_per_address: DEFAULT_SESSIONS_PER_ADDRESS,
            max_viewers: DEFAULT_MAX_VIEWERS,
            max_video_pixels: DEFAULT_MAX_VIDEO_PIXELS,
            packets_per_second: DEFAULT_PACKETS_PER_SECOND,
            http_connections: DEFAULT_HTTP_CONNECTIONS,
            http_header_timeout_s: DEFAULT_HTTP_HEADER_TIMEOUT_S,
            ws_idle_timeout_s: DEFAULT_WS_IDLE_TIMEOUT_S,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Where recordings are written (created if missing).
    pub dir: PathBuf,
    /// Start a recording in this format whenever a room opens.
    pub auto_format: Option<RecordFormat>,
    /// Most the directory may hold, MB (0: no quota). A recording that would start beyond it
    /// is refused (507); one running when it is reached is stopped and finalised.
    pub quota_mb: u64,
    /// Recordings older than this many days are deleted (at start and hourly); 0 keeps them.
    pub retention_days: u32,
}

/// 50 GiB: a day of a few busy rooms, and a bound on what one caller can fill.
pub const DEFAULT_RECORDING_QUOTA_MB: u64 = 51_200;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HlsConfig {
    /// Segments and playlists, one directory per room.
    pub dir: PathBuf,
    pub segment_s: u32,
    /// Segments listed in the sliding-window playlist.
    pub playlist_length: u32,
    /// Start HLS whenever a room opens.
    pub auto: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    /// Longest wait between attempts to reach a lost RTMP server.
    pub max_retry_s: u32,
    /// URL prefixes a stream may be pushed to, each starting with `rtmp://` or `rtmps://` and
    /// closing its host with `/` (`rtmp://ingest.example.com/`, `rtmp://127.0.0.1:1935/live/`),
    /// matched as plain string prefixes of the URL a caller gives.
    ///
    /// Empty (the default): any destination whose host resolves only to public addresses;
    /// loopback, private, link-local, CGNAT, multicast and documentation addresses are refused.
    /// Non-empty: only URLs starting with one of these prefixes, whatever their address, so a
    /// private or loopback server is reachable only by listing it.
    pub allow: Vec<String>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_RECORDING_DIR),
            auto_format: None,
            quota_mb: DEFAULT_RECORDING_QUOTA_MB,
            retention_days: 0,
        }
    }
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_HLS_DIR),
            segment_s: DEFAULT_HLS_SEGMENT_S,
            playlist_length: DEFAULT_HLS_PLAYLIST_LENGTH,
            auto: false,
        }
    }
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            max_retry_s: DEFAULT_RTMP_MAX_RETRY_S,
            allow: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The address HTTP and media bind to. 127.0.0.1 keeps everything local.
    pub host: IpAddr,
    pub http_port: u16,
    /// PEM certificate chain and private key: HTTPS and WSS on `http_port` instead of HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// HTTPS with a certificate made at start for `localhost` and the bound address (a LAN
    /// demo: browsers give cameras only to secure origins). Its fingerprint is logged.
    pub self_signed: bool,
    /// On SIGTERM or SIGINT: seconds during which joins are refused (503, `/readyz` 503) and
    /// the calls in progress go on, told the server is shutting down, before every room
    /// closes (recordings finalised) and the process exits. 0 closes at once.
    pub drain_s: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    /// The UDP port all media uses (every participant and viewer); 0 picks a free one.
    pub udp_port: u16,
    /// Sockets bound to the port per address (`SO_REUSEPORT`), each read by its own task:
    /// 0 means one per core.
    pub udp_shards: usize,
    /// Advertised instead of the bound address in ICE candidates (1:1 NAT).
    pub public_ip: Option<IpAddr>,
    /// Seconds without ICE traffic before a vanished peer is removed.
    pub ice_timeout_s: u32,
    /// Given to clients in WHIP/WHEP `Link` headers (the server itself gathers only host
    /// candidates: it is meant to have a reachable or `public_ip` address).
    pub ice_servers: Vec<IceServer>,
    /// A TURN server sharing a secret with Mixdown (coturn's `use-auth-secret`): each
    /// caller gets its own short-lived credentials for it.
    pub turn: TurnConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// `turn:` / `turns:` URLs of the TURN server; none: no TURN entry is handed out.
    pub urls: Vec<String>,
    /// coturn's `static-auth-secret` (or `MIXDOWN_TURN_SECRET` in the environment). It never
    /// leaves the server: callers get an HMAC of their username under it.
    pub secret: String,
    /// How long handed-out credentials stay valid.
    pub ttl_s: u32,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: String::new(),
            ttl_s: DEFAULT_TURN_TTL_S,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub credential: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VideoConfig {
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
    pub bitrate_kbps: u32,
    pub jitter_ms: u32,
    pub keyframe_interval_s: u32,
    pub pacing_margin_ms: u32,
    /// Codecs the composite may be sent in, in order of preference.
    pub send_codecs: Vec<VideoCodec>,
    /// Lower-quality encodes of the same composite, best first, for receivers whose link
    /// cannot carry the canvas (the canvas itself is the top tier). At most two.
    pub tiers: Vec<TierConfig>,
    /// Publishers on screen at most; the others are neither shown nor decoded.
    pub max_tiles: usize,
}

/// One rung of the encoder ladder below the canvas.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
    pub bitrate_kbps: u32,
}

/// The default ladder below the 1280x720 canvas: 360p30 and 180p15.
pub const DEFAULT_TIERS: [TierConfig; 2] = [
    TierConfig {
        width: 640,
        height: 360,
        framerate: 30,
        bitrate_kbps: 450,
    },
    TierConfig {
        width: 320,
        height: 180,
        framerate: 15,
        bitrate_kbps: 120,
    },
];
/// Tiers below the canvas, at most: three encodes per codec in all.
pub const MAX_LOWER_TIERS: usize = 2;

impl VideoConfig {
    /// The whole ladder, best first: the canvas, then the configured lower tiers.
    pub fn ladder(&self) -> Vec<TierConfig> {
        let mut l = vec![TierConfig {
            width: self.width,
            height: self.height,
            framerate: self.framerate,
            bitrate_kbps: self.bitrate_kbps,
        }];
        l.extend_from_slice(&self.tiers);
        l
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    pub bitrate_kbps: u32,
    pub jitter_ms: u32,
    /// Voices in the mix at most (the loudest); the others are not decoded.
    pub max_speakers: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoomConfig {
    pub max_participants: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            // The literal is a valid address.
            host: DEFAULT_HOST.parse().expect("valid default host"),
            http_port: DEFAULT_HTTP_PORT,
            tls_cert: None,
            tls_key: None,
            self_signed: false,
            drain_s: DEFAULT_DRAIN_S,
        }
    }
}

impl RtcConfig {
    /// `udp_shards`, with 0 resolved to the number of cores.
    pub fn udp_shards(&self) -> usize {
        match self.udp_shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            udp_port: DEFAULT_UDP_PORT,
            udp_shards: 0,
            public_ip: None,
            ice_timeout_s: DEFAULT_ICE_TIMEOUT_S,
            ice_servers: Vec::new(),
            turn: TurnConfig::default(),
        }
    }
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            framerate: DEFAULT_FRAMERATE,
            bitrate_kbps: DEFAULT_VIDEO_BITRATE_KBPS,
            jitter_ms: DEFAULT_VIDEO_JITTER_MS,
            keyframe_interval_s: DEFAULT_KEYFRAME_INTERVAL_S,
            pacing_margin_ms: DEFAULT_PACING_MARGIN_MS,
            // VP8 first: cheaper to encode here (9.5 vs 6.3 ms x264 per 720p frame, but x264
            // rarely serves alone) and every browser decodes it. VP9 last: its encode costs about
            // 1.9x VP8's per 720p frame, so only a receiver that takes nothing else makes it run.
            send_codecs: vec![VideoCodec::Vp8, VideoCodec::H264, VideoCodec::Vp9],
            tiers: DEFAULT_TIERS.to_vec(),
            max_tiles: DEFAULT_MAX_TILES,
        }
    }
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            bitrate_kbps: DEFAULT_AUDIO_BITRATE_KBPS,
            jitter_ms: DEFAULT_AUDIO_JITTER_MS,
            max_speakers: DEFAULT_MAX_SPEAKERS,
        }
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            max_participants: DEFAULT_MAX_PARTICIPANTS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn check(ok: bool, key: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: reason.into(),
        })
    }
}

impl Config {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Adds the key in `MIXDOWN_API_KEY` / `MIXDOWN_API_SECRET`, when both are set, and the
    /// TURN secret in `MIXDOWN_TURN_SECRET`, when set (secrets stay out of config files).
    pub fn add_env_key(&mut self) -> Result<(), ConfigError> {
        if let Ok(s) = std::env::var("MIXDOWN_TURN_SECRET")
            && !s.is_empty()
        {
            self.rtc.turn.secret = s;
        }
        let key = std::env::var("MIXDOWN_API_KEY").ok();
        let secret = std::env::var("MIXDOWN_API_SECRET").ok();
        match (key, secret) {
            (Some(k), Some(s)) => {
                self.auth.keys.insert(k, s);
                Ok(())
            }
            (None, None) => Ok(()),
            _ => Err(ConfigError::Invalid {
                key: "MIXDOWN_API_KEY",
                reason: "set both MIXDOWN_API_KEY and MIXDOWN_API_SECRET, or neither".into(),
            }),
        }
    }

    /// With TURN URLs, a secret must have been given (in the file or the environment).
    pub fn check_turn_secret(&self) -> Result<(), ConfigError> {
        check(
            self.rtc.turn.urls.is_empty() || !self.rtc.turn.secret.is_empty(),
            "rtc.turn.secret",
            "rtc.turn.urls are set but no secret: set rtc.turn.secret or MIXDOWN_TURN_SECRET \
             (coturn's static-auth-secret)",
        )
    }

    /// Refuses to run open (no keys) on a non-loopback HTTP address unless `auth.open` says so.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        check(
            !self.auth.keys.is_empty() || self.auth.open || self.server.host.is_loopback(),
            "auth",
            format!(
                "no API keys while listening on {}: anyone who reaches it could join, watch, \
                 record and stream every room. Add [auth] keys (or MIXDOWN_API_KEY and \
                 MIXDOWN_API_SECRET), or set auth.open = true to run open on purpose",
                self.server.host
            ),
        )
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = &self.video;
        check(
            (64..=3840).contains(&v.width) && v.width.is_multiple_of(2),
            "video.width",
            format!("{} must be even and within 64..=3840", v.width),
        )?;
        check(
            (64..=2160).contains(&v.height) && v.height.is_multiple_of(2),
            "video.height",
            format!("{} must be even and within 64..=2160", v.height),
        )?;
        check(
            (1..=60).contains(&v.framerate),
            "video.framerate",
            format!("{} must be within 1..=60", v.framerate),
        )?;
        check(
            (100..=20_000).contains(&v.bitrate_kbps),
            "video.bitrate_kbps",
            format!("{} must be within 100..=20000", v.bitrate_kbps),
        )?;
        check(
            v.jitter_ms <= 1000,
            "video.jitter_ms",
            format!("{} must be at most 1000", v.jitter_ms),
        )?;
        check(
            !v.send_codecs.is_empty(),
            "video.send_codecs",
            "must list at least one of \"vp8\", \"h264\", \"vp9\"",
        )?;
        check(
            (1..=300).contains(&v.keyframe_interval_s),
            "video.keyframe_interval_s",
            format!("{} must be within 1..=300", v.keyframe_interval_s),
        )?;
        check(
            v.pacing_margin_ms <= 100,
            "video.pacing_margin_ms",
            format!("{} must be at most 100", v.pacing_margin_ms),
        )?;
        check(
            v.tiers.len() <= MAX_LOWER_TIERS,
            "video.tiers",
            format!("at most {MAX_LOWER_TIERS} tiers below the canvas"),
        )?;
        let ladder = v.ladder();
        for pair in ladder.windows(2) {
            let (upper, t) = (pair[0], pair[1]);
            check(
                t.width >= 32
                    && t.height >= 32
                    && t.width.is_multiple_of(2)
                    && t.height.is_multiple_of(2)
                    && t.width <= upper.width
                    && t.height <= upper.height,
                "video.tiers",
                format!(
                    "{}x{} must be even, at least 32x32 and no larger than the tier above ({}x{})",
                    t.width, t.height, upper.width, upper.height
                ),
            )?;
            check(
                (1..=v.framerate).contains(&t.framerate) && t.framerate <= upper.framerate,
                "video.tiers",
                format!(
                    "framerate {} must be within 1..={} and no higher than the tier above",
                    t.framerate, v.framerate
                ),
            )?;
            check(
                (30..upper.bitrate_kbps).contains(&t.bitrate_kbps),
                "video.tiers",
                format!(
                    "bitrate_kbps {} must be at least 30 and below the tier above ({})",
                    t.bitrate_kbps, upper.bitrate_kbps
                ),
            )?;
        }
        let a = &self.audio;
        check(
            (6..=510).contains(&a.bitrate_kbps),
            "audio.bitrate_kbps",
            format!("{} must be within 6..=510", a.bitrate_kbps),
        )?;
        check(
            (20..=200).contains(&a.jitter_ms),
            "audio.jitter_ms",
            format!("{} must be within 20..=200", a.jitter_ms),
        )?;
        let r = &self.rtc;
        check(
            r.udp_shards <= MAX_UDP_SHARDS,
            "rtc.udp_shards",
            format!(
                "{} must be at most {MAX_UDP_SHARDS} (0: one per core)",
                r.udp_shards
            ),
        )?;
        check(
            (2..=600).contains(&r.ice_timeout_s),
            "rtc.ice_timeout_s",
            format!("{} must be within 2..=600", r.ice_timeout_s),
        )?;
        for s in &r.ice_servers {
            check(
                !s.urls.is_empty(),
                "rtc.ice_servers.urls",
                "must list at least one URL",
            )?;
            for u in &s.urls {
                check(
                    ["stun:", "stuns:", "turn:", "turns:"]
                        .iter()
                        .any(|p| u.starts_with(p))
                        && !u.contains(['\r', '\n', '>', '"']),
                    "rtc.ice_servers.urls",
                    format!("{u:?} must be a stun:, stuns:, turn: or turns: URL"),
                )?;
            }
        }
        check(
            self.server.drain_s <= 3600,
            "server.drain_s",
            format!("{} must be at most 3600", self.server.drain_s),
        )?;
        let t = &r.turn;
        for u in &t.urls {
            check(
                ["turn:", "turns:"].iter().any(|p| u.starts_with(p))
                    && !u.contains(['\r', '\n', '>', '"']),
                "rtc.turn.urls",
                format!("{u:?} must be a turn: or turns: URL"),
            )?;
        }
        // Empty is allowed here: the secret may come from the environment
        // (`check_turn_secret` runs once it has been read).
        check(
            t.secret.is_empty() || t.secret.len() >= 16,
            "rtc.turn.secret",
            "must be at least 16 bytes",
        )?;
        check(
            (60..=7 * 86_400).contains(&t.ttl_s),
            "rtc.turn.ttl_s",
            format!("{} must be within 60..=604800", t.ttl_s),
        )?;
        check(
            (1..=MAX_PARTICIPANTS).contains(&self.room.max_participants),
            "room.max_participants",
            format!(
                "{} must be within 1..={MAX_PARTICIPANTS}",
                self.room.max_participants
            ),
        )?;
        for (key, secret) in &self.auth.keys {
            check(
                !key.is_empty() && key.len() <= 128 && key.chars().all(|c| c.is_ascii_graphic()),
                "auth.keys",
                format!("API key {key:?} must be 1 to 128 printable ASCII characters"),
            )?;
            check(
                secret.len() >= crate::auth::MIN_SECRET_BYTES,
                "auth.keys",
                format!(
                    "the secret of API key {key:?} must be at least {} bytes",
                    crate::auth::MIN_SECRET_BYTES
                ),
            )?;
        }
        let srv = &self.server;
        check(
            srv.tls_cert.is_some() == srv.tls_key.is_some(),
            "server.tls_cert",
            "set both server.tls_cert and server.tls_key, or neither",
        )?;
        check(
            !(srv.self_signed && srv.tls_cert.is_some()),
            "server.self_signed",
            "a self-signed certificate or server.tls_cert, not both",
        )?;
        let l = &self.limits;
        check(
            (1..=10_000).contains(&l.max_rooms),
            "limits.max_rooms",
            format!("{} must be within 1..=10000", l.max_rooms),
        )?;
        check(
            (1..=10_000).contains(&l.max_viewers),
            "limits.max_viewers",
            format!("{} must be within 1..=10000", l.max_viewers),
        )?;
        check(
            (64 * 64..=8192 * 8192).contains(&l.max_video_pixels),
            "limits.max_video_pixels",
            format!("{} must be within 4096..=67108864", l.max_video_pixels),
        )?;
        check(
            (100..=1_000_000).contains(&l.packets_per_second),
            "limits.packets_per_second",
            format!("{} must be within 100..=1000000", l.packets_per_second),
        )?;
        check(
            (1..=100_000).contains(&l.http_connections),
            "limits.http_connections",
            format!("{} must be within 1..=100000", l.http_connections),
        )?;
        check(
            (1..=300).contains(&l.http_header_timeout_s),
            "limits.http_header_timeout_s",
            format!("{} must be within 1..=300", l.http_header_timeout_s),
        )?;
        check(
            (5..=3600).contains(&l.ws_idle_timeout_s),
            "limits.ws_idle_timeout_s",
            format!("{} must be within 5..=3600", l.ws_idle_timeout_s),
        )?;
        check(
            (1..=100).contains(&v.max_tiles),
            "video.max_tiles",
            format!("{} must be within 1..=100", v.max_tiles),
        )?;
        check(
            (1..=16).contains(&a.max_speakers),
            "audio.max_speakers",
            format!("{} must be within 1..=16", a.max_speakers),
        )?;
        check(
            (1..=30).contains(&self.hls.segment_s),
            "hls.segment_s",
            format!("{} must be within 1..=30", self.hls.segment_s),
        )?;
        check(
            (3..=100).contains(&self.hls.playlist_length),
            "hls.playlist_length",
            format!("{} must be within 3..=100", self.hls.playlist_length),
        )?;
        let c = &self.cluster;
        if !c.redis_url.is_empty() {
            check(
                c.redis_url.starts_with("redis://") || c.redis_url.starts_with("rediss://"),
                "cluster.redis_url",
                "must start with redis:// or rediss:// (TLS)",
            )?;
            check(
                c.node_url.starts_with("http://") || c.node_url.starts_with("https://"),
                "cluster.node_url",
                "must be this node's http:// or https:// address as clients reach it",
            )?;
            check(
                (2..=10).contains(&c.claim_ttl_s),
                "cluster.claim_ttl_s",
                format!("{} must be within 2..=10", c.claim_ttl_s),
            )?;
        }
        check(
            (1..=3600).contains(&self.rtmp.max_retry_s),
            "rtmp.max_retry_s",
            format!("{} must be within 1..=3600", self.rtmp.max_retry_s),
        )?;
        for prefix in &self.rtmp.allow {
            crate::output::destination::check_allow_prefix(prefix).map_err(|reason| {
                ConfigError::Invalid {
                    key: "rtmp.allow",
                    reason: format!("{prefix:?}: {reason}"),
                }
            })?;
        }
        for (key, dir) in [
            ("recording.dir", &self.recording.dir),
            ("hls.dir", &self.hls.dir),
        ] {
            check(!dir.as_os_str().is_empty(), key, "must name a directory")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../mixdown.example.toml");
        let parsed = Config::from_toml(text, "mixdown.example.toml").unwrap();
        assert_eq!(
            parsed,
            Config::default(),
            "the example documents the defaults"
        );
        // The commented-out keys are valid too.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = ") || r.starts_with('['))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let all = Config::from_toml(&uncommented, "uncommented example").unwrap();
        assert_eq!(all.rtc.ice_servers.len(), 1);
        assert!(all.rtc.public_ip.is_some());
        assert_eq!(all.rtc.turn.urls.len(), 2);
        all.check_turn_secret()
            .expect("the example's TURN has a secret");
    }

    #[test]
    fn turn_needs_turn_urls_and_a_secret() {
        let e = Config::from_toml("[rtc.turn]\nurls = [\"stun:x\"]\n", "x").unwrap_err();
        assert!(e.to_string().contains("rtc.turn.urls"), "{e}");
        let e = Config::from_toml("[rtc.turn]\nsecret = \"short\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("rtc.turn.secret"), "{e}");
        let e = Config::from_toml("[rtc.turn]\nttl_s = 5\n", "x").unwrap_err();
        assert!(e.to_string().contains("rtc.turn.ttl_s"), "{e}");
        // URLs without a secret load (it may come from the environment) but cannot run.
        let c = Config::from_toml("[rtc.turn]\nurls = [\"turn:t:3478\"]\n", "x").unwrap();
        let e = c.check_turn_secret().unwrap_err();
        assert!(e.to_string().contains("MIXDOWN_TURN_SECRET"), "{e}");
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("", "x").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[video]\nwidth = 333\n", "x").unwrap_err();
        assert!(e.to_string().contains("video.width"), "{e}");
        let e = Config::from_toml("[video]\nwdth = 640\n", "x").unwrap_err();
        assert!(e.to_string().contains("wdth"), "{e}");
        // The port range is gone (one port now): an old configuration is told so by name.
        let e = Config::from_toml("[rtc]\nport_min = 3000\n", "x").unwrap_err();
        assert!(e.to_string().contains("port_min"), "{e}");
        let e = Config::from_toml("[rtc]\nudp_port = 70000\n", "x").unwrap_err();
        assert!(e.to_string().contains("udp_port"), "{e}");
        let e = Config::from_toml("[server]\nhost = \"nope\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("host"), "{e}");
        let e = Config::from_toml("[video]\nsend_codecs = []\n", "x").unwrap_err();
        assert!(e.to_string().contains("video.send_codecs"), "{e}");
        let e = Config::from_toml("[video]\nsend_codecs = [\"av1\"]\n", "x").unwrap_err();
        assert!(e.to_string().contains("av1"), "{e}");
        let e = Config::from_toml("[[rtc.ice_servers]]\nurls = [\"http://x\"]\n", "x").unwrap_err();
        assert!(e.to_string().contains("rtc.ice_servers.urls"), "{e}");
        let e = Config::from_toml("[recording]\nauto_format = \"avi\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("avi"), "{e}");
        let e = Config::from_toml("[hls]\nsegment_s = 0\n", "x").unwrap_err();
        assert!(e.to_string().contains("hls.segment_s"), "{e}");
        let e = Config::from_toml(
            "[video]\n[[video.tiers]]\nwidth = 640\nheight = 360\nframerate = 30\nbitrate_kbps = 2000\n",
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("video.tiers"), "{e}");
        let c = Config::from_toml("[video]\ntiers = []\n", "x").unwrap();
        assert_eq!(c.video.ladder().len(), 1);
        let e = Config::from_toml("[video]\npacing_margin_ms = 500\n", "x").unwrap_err();
        assert!(e.to_string().contains("video.pacing_margin_ms"), "{e}");
    }
}
