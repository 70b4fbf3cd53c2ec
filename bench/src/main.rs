//! `mixdown-bench`: runs the benchmark scenarios against a `mixdown` binary and writes
//! `BENCHMARKS.md` with its plots. See `make bench`.

use clap::Parser;
use mixdown::media::VideoCodec;
use mixdown_bench::media::load_or_generate;
use mixdown_bench::report::{Plan, plots, run_plan};
use mixdown_bench::run::{OutputSpec, Timing};
use mixdown_bench::transport::{Impl, parse_range, serve};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Benchmarks Mixdown: CPU, memory, pacing and latency under synthetic WebRTC load, side by side
/// with a bare gst-launch-1.0 pipeline doing the same video work.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The server binary to measure.
    #[arg(long, default_value = "target/release/mixdown")]
    server: PathBuf,
    /// Where generated media is cached.
    #[arg(long, default_value = "bench/cache")]
    cache: PathBuf,
    /// The report to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Where the plots go (PNG); the report links them relative to its own folder. A partial
    /// run (`--only`) draws none.
    #[arg(long, default_value = "bench")]
    plots: PathBuf,
    /// Runs per scenario (the report gives medians).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A tiny run that only checks the harness works (one run of two participants).
    #[arg(long)]
    smoke: bool,
    /// Rooms opened and left in the idle scenario.
    #[arg(long, default_value_t = 50)]
    idle_rooms: usize,
    /// Runs of the audio-only room on each server, alternating (the report gives medians).
    #[arg(long, default_value_t = 5)]
    audio_runs: usize,
    /// Participants of the audio-only room (three of them speak).
    #[arg(long, default_value_t = 30)]
    audio_participants: usize,
    /// Room sizes probed by the capacity scenario (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 20, 24, 28])]
    capacity: Vec<usize>,
    /// Capacity sizes also run with composite pacing off, alternately with the paced runs.
    #[arg(long, value_delimiter = ',', default_values_t = [24])]
    unpaced: Vec<usize>,
    /// Large-room sizes (16 visible, 3 speaking; comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [25, 50, 100])]
    large: Vec<usize>,
    /// Flooding tasks of the join-flood comparison (0 skips it).
    #[arg(long, default_value_t = 8)]
    flood: usize,
    /// Connection counts of the transport scenario (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [50, 100, 200])]
    transport: Vec<usize>,
    /// Run only these parts (comma-separated: rooms, bare, capacity, idle, audio, outputs,
    /// transport, tiers, links, large, flood, cluster).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Internal: serve as the transport scenario's server process.
    #[arg(long, hide = true)]
    transport_server: Option<Impl>,
    /// Internal: flood this WHIP URL (the join-flood scenario's attacker process).
    #[arg(long, hide = true)]
    flood_target: Option<String>,
    #[arg(long, hide = true, default_value_t = 8)]
    flood_tasks: usize,
    #[arg(long, hide = true, default_value_t = 10.0)]
    flood_seconds: f64,
    #[arg(long, hide = true, default_value_t = 0)]
    transport_http_port: u16,
    #[arg(long, hide = true, default_value = "23000-23999")]
    transport_udp: String,
}

/// What recording and broadcasting add to a room: none (the baseline), a WebM recording (the
/// room's own VP8 and Opus, muxed), an MP4 recording (adds the H.264 and AAC encoders), and all
/// of WebM, MP4 and HLS at once (HLS shares MP4's H.264 and AAC encoders).
fn output_variants() -> Vec<(String, Vec<OutputSpec>)> {
    let rec = |format: &str| OutputSpec {
        endpoint: "recordings",
        body: serde_json::json!({ "format": format }),
    };
    let hls = OutputSpec {
        endpoint: "streams",
        body: serde_json::json!({ "kind": "hls" }),
    };
    vec![
        ("no output".into(), vec![]),
        ("WebM recording".into(), vec![rec("webm")]),
        ("MP4 recording".into(), vec![rec("mp4")]),
        (
            "WebM + MP4 recordings + HLS".into(),
            vec![rec("webm"), rec("mp4"), hls],
        ),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(url) = cli.flood_target {
        let stats = mixdown_bench::flood::flood_for(
            &url,
            cli.flood_tasks,
            Duration::from_secs_f64(cli.flood_seconds),
        )
        .await;
        println!("{}", stats.to_json());
        return Ok(());
    }
    if let Some(imp) = cli.transport_server {
        return serve(
            imp,
            cli.transport_http_port,
            parse_range(&cli.transport_udp)?,
        )
        .await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rtc=error,webrtc=error".into()),
        )
        .init();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let (plan, seconds) = if cli.smoke {
        (
            Plan {
                server_bin: cli.server.clone(),
                timing: Timing {
                    warmup: Duration::from_secs(2),
                    window: Duration::from_secs(2),
                },
                runs: 1,
                audio_runs: 1,
                rooms: vec![(2, VideoCodec::Vp8)],
                g711_rooms: vec![],
                cluster_joins: 0,
                bare: vec![2],
                capacity: vec![],
                unpaced: vec![],
                idle_rooms: 2,
                audio_rooms: vec![],
                output_room: 2,
                outputs: vec![],
                transport: vec![2],
                tier_room: 2,
                links: false,
                large: vec![],
                flood: 0,
                command,
            },
            6,
        )
    } else {
        (
            Plan {
                server_bin: cli.server.clone(),
                timing: Timing {
                    warmup: Duration::from_secs(4),
                    window: Duration::from_secs(10),
                },
                runs: cli.runs,
                audio_runs: cli.audio_runs,

                rooms: vec![
                    (4, VideoCodec::Vp8),
                    (9, VideoCodec::Vp8),
                    (4, VideoCodec::H264),
                    (9, VideoCodec::H264),
                    (9, VideoCodec::Vp9),
                ],
                g711_rooms: vec![9],
                cluster_joins: 20,
                bare: vec![4, 9],
                capacity: cli.capacity.clone(),
                unpaced: cli.unpaced.clone(),
                idle_rooms: cli.idle_rooms,
                audio_rooms: vec![(cli.audio_participants, 3)],
                output_room: 4,
                outputs: output_variants(),
                transport: cli.transport.clone(),
                tier_room: 9,
                links: true,
                large: cli.large.clone(),
                flood: cli.flood,
                command,
            },
            20,
        )
    };
    let mut plan = plan;
    if !cli.only.is_empty() {
        let keep = |part: &str| cli.only.iter().any(|o| o == part);
        if !keep("rooms") {
            plan.rooms.clear();
            plan.g711_rooms.clear();
        }
        if !keep("bare") {
            plan.bare.clear();
        }
        if !keep("capacity") {
            plan.capacity.clear();
        }
        if !keep("idle") {
            plan.idle_rooms = 0;
        }
        if !keep("audio") {
            plan.audio_rooms.clear();
        }
        if !keep("outputs") {
            plan.outputs.clear();
        }
        if !keep("transport") {
            plan.transport.clear();
        }
        if !keep("tiers") {
            plan.tier_room = 0;
        }
        if !keep("links") {
            plan.links = false;
        }
        if !keep("large") {
            plan.large.clear();
        }
        if !keep("flood") {
            plan.flood = 0;
        }
        if !keep("cluster") {
            plan.cluster_joins = 0;
        }
    }
    let clips = Arc::new(load_or_generate(&cli.cache, seconds)?);
    eprintln!(
        "clips: {} VP8, {} H.264 frames, {} Opus packets",
        clips.vp8.frames.len(),
        clips.h264.frames.len(),
        clips.speech.frames.len()
    );
    let report = run_plan(&plan, &clips).await;
    if let Some(parent) = cli.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    // A partial run (`--only`) draws no plots: they show the whole suite, and a partial run
    // must not overwrite the full run's.
    let drawn = if cli.only.is_empty() {
        std::fs::create_dir_all(&cli.plots)?;
        plots(&report, &cli.plots)
    } else {
        Vec::new()
    };
    let pngs: Vec<String> = drawn
        .into_iter()
        .map(|f| {
            let path = cli.plots.join(f);
            let base = cli.out.parent().unwrap_or(std::path::Path::new(""));
            path.strip_prefix(base)
                .unwrap_or(&path)
                .display()
                .to_string()
        })
        .collect();
    let md = report.markdown(&plan, &pngs);
    std::fs::write(&cli.out, &md)?;
    print!("{md}");
    if !report.errors.is_empty() {
        anyhow::bail!("{} runs failed", report.errors.len());
    }
    Ok(())
}
