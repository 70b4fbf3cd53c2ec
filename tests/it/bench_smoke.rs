//! A tiny run of the benchmark harness so that it cannot rot: it must produce every figure
//! (their values are the benchmarks' business, not the tests').

use mixdown::media::VideoCodec;
use mixdown_bench::media::load_or_generate;
use mixdown_bench::report::{Plan, run_plan};
use mixdown_bench::run::{OutputSpec, Timing};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_harness_produces_figures() {
    crate::common::init_logging();
    let cache = std::env::temp_dir().join("mixdown-bench-smoke-cache");
    let clips = Arc::new(load_or_generate(&cache, 6).expect("clips generate"));
    assert_eq!(clips.vp8.frames.len(), 180);
    assert_eq!(clips.h264.frames.len(), 180);
    assert!(
        clips.speech.frames.len() >= 290,
        "{}",
        clips.speech.frames.len()
    );
    let plan = Plan {
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_mixdown")),
        timing: Timing {
            warmup: Duration::from_secs(2),
            window: Duration::from_secs(3),
        },
        runs: 1,
        audio_runs: 1,
        // VP9 out and G.711 publishers too: their rows run in `make bench`.
        rooms: vec![(2, VideoCodec::Vp8), (2, VideoCodec::Vp9)],
        g711_rooms: vec![3],
        bare: vec![2],
        capacity: vec![2],
        unpaced: vec![2],
        idle_rooms: 2,
        audio_rooms: vec![],
        output_room: 2,
        // The transport scenario runs its server as `mixdown-bench --transport-server`, a
        // binary this test cannot start; `make bench` runs it.
        transport: vec![],
        tier_room: 2,
        // Chromium behind shaped links is the weak-link tests' (and `make bench`'s).
        links: false,
        outputs: vec![(
            "WebM recording".into(),
            vec![OutputSpec {
                endpoint: "recordings",
                body: serde_json::json!({ "format": "webm" }),
            }],
        )],
        // Two small sizes: enough for a marginal cost between them.
        large: vec![2, 3],
        // The flood spawns this binary as its attacker (`--flood-target`): not from a test binary.
        flood: 0,
        // Two cluster nodes and a redis-server (installed by `make test` too).
        cluster_joins: 2,
        command: "bench smoke test".into(),
    };
    let report = run_plan(&plan, &clips).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.outputs[0].runs[0].cpu_cores > 0.0,
        "the output scenario measured nothing: {:?}",
        report.outputs[0].runs
    );
    let row = &report.rows[0];
    let run = &row.runs[0];
    assert!(run.cpu_cores > 0.0 && run.rss_mib > 0.0, "{run:?}");
    assert!(run.fps > 0.0, "no composite frames at the probe: {run:?}");
    assert!(
        !run.video_latency_ms.is_empty(),
        "no video marker seen: {run:?}"
    );
    assert!(
        !run.audio_latency_ms.is_empty(),
        "no audio marker heard: {run:?}"
    );
    assert_eq!(run.join_ms.len(), 2, "{run:?}");
    // VP9 out: the probe decodes it. Two G.711 publishers: the markers of the Opus one
    // still cross the mix.
    let vp9 = &report.rows[1].runs[0];
    assert!(
        vp9.fps > 0.0,
        "no VP9 composite frames at the probe: {vp9:?}"
    );
    let g711 = &report.rows[2].runs[0];
    assert!(
        g711.fps > 0.0 && !g711.audio_latency_ms.is_empty(),
        "G.711 room: {g711:?}"
    );
    assert!(
        report.bare[0].cpu().is_some_and(|c| c > 0.0),
        "bare pipeline not measured"
    );
    assert!(report.idle.as_ref().and_then(|r| r.cpu()).is_some());
    let md = report.markdown(&plan, &[]);
    assert!(
        md.contains("| 2 participants, VP8 360p in, VP8 720p30 out |"),
        "{md}"
    );
    assert!(
        md.contains("Server ÷ bare pipeline, 2 participants"),
        "{md}"
    );
    // Three encodes run when the viewers are held on three tiers.
    assert_eq!(report.tiers.len(), 3, "{md}");
    let encodes: Vec<usize> = report
        .tiers
        .iter()
        .map(|r| r.runs.first().map_or(0, |r| r.encodes))
        .collect();
    assert_eq!(encodes, vec![1, 2, 3], "{md}");
    assert!(md.contains("## Encoder tiers"), "{md}");
    // Large rooms: a row per size, and the marginal cost between them.
    assert_eq!(report.large.len(), 2, "{md}");
    assert!(report.large[1].runs[0].fps > 0.0, "{md}");
    assert!(md.contains("## Large rooms"), "{md}");
    assert!(
        md.contains("Marginal server cost 2 → 3 participants:"),
        "{md}"
    );
    // Joins through another cluster node land on the owner and are timed.
    let c = report.cluster.as_ref().expect("the cluster joins ran");
    assert_eq!(c.redirected_answer_ms.len(), 2, "{md}");
    assert!(md.contains("## Cluster joins"), "{md}");
    // The capacity probe, with its unpaced twin.
    assert!(report.unpaced[0].1.runs[0].fps > 0.0, "{md}");
    assert!(md.contains("Composite pacing, 2 participants:"), "{md}");
}
