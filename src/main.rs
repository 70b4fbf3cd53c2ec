//! `mixdown`: parse the command line, load the configuration, start logging, run the server.

use clap::Parser;
use mixdown::config::Config;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Mixdown: a WebRTC MCU. Every participant of a room is mixed into one composite video and
/// one audio mix (each hears everyone but themselves), sent back as a single stream.
/// Join with WHIP at POST /whip/{room}; watch with WHEP at POST /whep/{room}.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// TOML configuration file (see mixdown.example.toml); defaults apply without one.
    #[arg(short, long, env = "MIXDOWN_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text for people, or as JSON (one object a line, the same fields) for a
    /// log collector.
    #[arg(long, value_enum, default_value = "text", env = "MIXDOWN_LOG_FORMAT")]
    log_format: LogFormat,
    /// Address for HTTP and media; overrides server.host (default 127.0.0.1, local only).
    #[arg(long)]
    host: Option<IpAddr>,
    /// HTTP port; overrides server.http_port (default 8080).
    #[arg(long)]
    http_port: Option<u16>,
    /// The one media port (UDP, and TCP for ICE-TCP) every session shares; overrides
    /// rtc.udp_port (default 20000).
    #[arg(long)]
    udp_port: Option<u16>,
    /// Public address to advertise behind 1:1 NAT; overrides rtc.public_ip.
    #[arg(long)]
    public_ip: Option<IpAddr>,
    /// Serve HTTPS with a certificate made now for localhost and the bound address (a LAN
    /// demo; browsers give cameras only to secure origins). Sets server.self_signed.
    #[arg(long)]
    self_signed: bool,
    /// Check the configuration and the GStreamer plugins, then exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print an access token (LiveKit's format: JWT HS256) signed with a configured API key.
    /// Without --publish or --subscribe it allows both.
    Token {
        /// The room it admits to.
        #[arg(long)]
        room: String,
        /// Who the holder is (`sub`).
        #[arg(long)]
        identity: String,
        /// The name others see (defaults to the identity).
        #[arg(long)]
        name: Option<String>,
        /// May send audio and video (and chat).
        #[arg(long)]
        publish: bool,
        /// May receive the room's mix.
        #[arg(long)]
        subscribe: bool,
        /// May start and stop recordings and streams of the room.
        #[arg(long)]
        record: bool,
        /// May remove participants and change the layout of the room.
        #[arg(long)]
        admin: bool,
        /// Joins without being announced or counted as a viewer.
        #[arg(long)]
        hidden: bool,
        /// How long it is valid: 90s, 30m, 6h, 2d.
        #[arg(long, default_value = "6h")]
        valid_for: String,
        /// The API key to sign with (default: the first configured).
        #[arg(long)]
        key: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads: see `mixdown::memory`.
    mixdown::memory::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // Two webrtc-rs internals warn on every join about nothing an operator can act on
        // (DTLS's unset server name, an ICE check round before the client's trickled
        // candidates): only their errors are shown. RUST_LOG overrides.
        .unwrap_or_else(|_| {
            "info,webrtc=warn,rtc=warn,rtc_dtls::config=error,rtc_ice::agent=error".into()
        });
    // Logs go to stderr (as the README says), leaving stdout to what a command prints.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Fields at the top level of each object, beside `timestamp`, `level`, `target` and
        // `message` (what collectors index without a nested path).
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(h) = cli.host {
        config.server.host = h;
    }
    if let Some(p) = cli.http_port {
        config.server.http_port = p;
    }
    if let Some(p) = cli.udp_port {
        config.rtc.udp_port = p;
    }
    if cli.self_signed {
        config.server.self_signed = true;
    }
    if let Some(ip) = cli.public_ip {
        config.rtc.public_ip = Some(ip);
    }
    config.add_env_key()?;
    config.validate()?;
    config.check_turn_secret()?;
    if let Some(Command::Token {
        room,
        identity,
        name,
        publish,
        subscribe,
        record,
        admin,
        hidden,
        valid_for,
        key,
    }) = cli.command
    {
        let room = mixdown::ids::RoomId::parse(&room)?;
        let secs = mixdown::auth::parse_duration(&valid_for).map_err(anyhow::Error::msg)?;
        let (key, secret) = match &key {
            Some(k) => config.auth.keys.get_key_value(k),
            None => config.auth.keys.iter().next(),
        }
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no such API key: configure [auth] keys (or MIXDOWN_API_KEY and MIXDOWN_API_SECRET)"
            )
        })?;
        let both = !publish && !subscribe;
        let now = mixdown::auth::now_unix();
        let claims = mixdown::auth::Claims {
            iss: key.clone(),
            name: name.unwrap_or_else(|| identity.clone()),
            sub: identity,
            nbf: Some(now),
            exp: now + secs,
            video: mixdown::auth::VideoGrant {
                room: room.to_string(),
                room_join: true,
                can_publish: Some(publish || both),
                can_subscribe: Some(subscribe || both),
                can_publish_data: Some(publish || both),
                hidden,
                room_record: record,
                room_admin: admin,
                ..Default::default()
            },
        };
        println!("{}", mixdown::auth::mint(&claims, secret));
        return Ok(());
    }
    config.check_exposure()?;
    if cli.check {
        mixdown::mixer::init()?;
        println!("configuration and GStreamer plugins OK");
        return Ok(());
    }
    mixdown::app::run(config).await
}
