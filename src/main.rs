//! `mixdown`: parse the command line, load the configuration, start logging, run the server.

use clap::Parser;
use mixdown::config::Config;
use std::net::IpAddr;
use std::path::PathBuf;

/// Mixdown: a WebRTC MCU. Every participant of a room is mixed into one composite video and
/// one audio mix (each hears everyone but themselves), sent back as a single stream.
/// Join with WHIP at POST /whip/{room}; watch with WHEP at POST /whep/{room}.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// TOML configuration file (see mixdown.example.toml); defaults apply without one.
    #[arg(short, long, env = "MIXDOWN_CONFIG")]
    config: Option<PathBuf>,
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
    /// Check the configuration and the GStreamer plugins, then exit.
    #[arg(long)]
    check: bool,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Two webrtc-rs internals warn on every join about nothing an operator can
                // act on (DTLS's unset server name, an ICE check round before the client's
                // trickled candidates): only their errors are shown. RUST_LOG overrides.
                .unwrap_or_else(|_| {
                    "info,webrtc=warn,rtc=warn,rtc_dtls::config=error,rtc_ice::agent=error".into()
                }),
        )
        // Logs go to stderr (as the README says), leaving stdout to what a command prints.
        .with_writer(std::io::stderr)
        .init();
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
    if let Some(ip) = cli.public_ip {
        config.rtc.public_ip = Some(ip);
    }
    config.validate()?;
    if cli.check {
        mixdown::mixer::init()?;
        println!("configuration and GStreamer plugins OK");
        return Ok(());
    }
    mixdown::app::run(config).await
}
