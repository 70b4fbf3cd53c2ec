//! Running the whole suite and writing `BENCHMARKS.md` (machine, command, table) with its
//! plots (PNG, drawn by gnuplot when it is installed).

use crate::measure::{median, quantile};
use crate::media::Clips;
use crate::run::{
    AudioServer, Extras, OutputSpec, RunResult, Timing, audio_room_run, bare_run, idle_run,
    server_run,
};
use crate::transport::{Impl, TransportResult};
use mixdown::media::VideoCodec;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Capacity criteria (issue targets): 30 fps, at most 1 % late frames, within 1.6 cores.
pub const CAPACITY_MIN_FPS: f64 = 29.0;
pub const CAPACITY_MAX_LATE: f64 = 0.01;
pub const CAPACITY_MAX_CORES: f64 = 1.6;

#[derive(Clone, Debug)]
pub struct Plan {
    pub server_bin: PathBuf,
    pub timing: Timing,
    pub runs: usize,
    /// (participants, output codec)
    pub rooms: Vec<(usize, VideoCodec)>,
    /// Room sizes with VP8 out and [`G711_PUBLISHERS`] participants on G.711, run
    /// interleaved with `rooms`.
    pub g711_rooms: Vec<usize>,
    /// Room sizes for the bare-pipeline comparison; each runs alternately with the server's
    /// video-only room of the same size (the bare pipeline does no audio either).
    pub bare: Vec<usize>,
    pub capacity: Vec<usize>,
    /// Capacity sizes also run with composite pacing off (alternately with the paced run), to
    /// show what pacing does to late frames and latency.
    pub unpaced: Vec<usize>,
    pub idle_rooms: usize,
    /// Audio-only rooms: (participants, speakers), on Mixdown and on Janus AudioBridge.
    pub audio_rooms: Vec<(usize, usize)>,
    /// Alternating run pairs for the audio-only comparison: more than `runs`, because both
    /// servers use little CPU and this shared machine's noise is large against it.
    pub audio_runs: usize,
    /// Participants of the room whose outputs are measured.
    pub output_room: usize,
    /// Output variants (label, outputs started), the first being the baseline; they run
    /// alternately.
    pub outputs: Vec<(String, Vec<OutputSpec>)>,
    /// Connection counts of the transport scenario (old and new transport alternately).
    pub transport: Vec<usize>,
    /// Participants of the room whose encoder tiers are measured (1, 2 and 3 tiers
    /// alternately); 0 skips it.
    pub tier_room: usize,
    /// Run the link profiles (Chromium behind shaped links; needs root).
    pub links: bool,
    /// Large-room sizes (16 visible, [`LARGE_SPEAKERS`] speaking), run in turn within each run
    /// so that the marginal cost between two sizes compares the same moments.
    pub large: Vec<usize>,
    /// Flooding tasks of the join-flood comparison (a 9-person room with tokens, without and
    /// with the flood, alternately); 0 skips it.
    pub flood: usize,
    /// Viewer joins of each kind (direct, through another cluster node) in the cluster join
    /// comparison; 0 skips it.
    pub cluster_joins: usize,
    pub command: String,
}

/// Participants of the join-flood room.
pub const FLOOD_ROOM: usize = 9;

/// Participants who speak in a large room; everyone else sends silence.
pub const LARGE_SPEAKERS: usize = 3;

/// The tier variants: (label, the ladder rungs the extra viewers are held at).
pub const TIER_VARIANTS: [(&str, &[usize]); 3] = [
    ("1 tier (720p)", &[0, 0]),
    ("2 tiers (720p, 360p)", &[1, 1]),
    ("3 tiers (720p, 360p, 180p)", &[1, 2]),
];

#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub participants: usize,
    pub runs: Vec<RunResult>,
}

impl Row {
    fn new(name: String, participants: usize) -> Self {
        Self {
            name,
            participants,
            runs: Vec::new(),
        }
    }
    /// Keeps a run's result, or notes why it failed.
    fn record(&mut self, result: anyhow::Result<RunResult>, errors: &mut Vec<String>) {
        match result {
            Ok(r) => self.runs.push(r),
            Err(e) => errors.push(format!("{}: {e:#}", self.name)),
        }
    }
    fn med(&self, f: impl Fn(&RunResult) -> f64) -> Option<f64> {
        median(
            &self
                .runs
                .iter()
                .map(f)
                .filter(|v| v.is_finite())
                .collect::<Vec<_>>(),
        )
    }
    fn pooled(&self, f: impl Fn(&RunResult) -> &Vec<f64>) -> Vec<f64> {
        self.runs
            .iter()
            .flat_map(|r| f(r).iter().copied())
            .collect()
    }
    pub fn cpu(&self) -> Option<f64> {
        self.med(|r| r.cpu_cores)
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

pub struct Report {
    pub rows: Vec<Row>,
    pub bare: Vec<Row>,
    pub capacity: Option<usize>,
    pub capacity_rows: Vec<Row>,
    /// (name of the paced row, the same room with pacing off)
    pub unpaced: Vec<(String, Row)>,
    pub idle: Option<Row>,
    /// Pairs of rows (Mixdown, Janus AudioBridge) for each audio-only room.
    pub audio: Vec<(Row, Row)>,
    /// One row per output variant, the baseline first.
    pub outputs: Vec<Row>,
    /// Per connection count: the runs of the old transport, then of the new.
    pub transport: Vec<(usize, Vec<TransportResult>, Vec<TransportResult>)>,
    /// One row per tier variant ([`TIER_VARIANTS`]).
    pub tiers: Vec<Row>,
    /// The link profiles and the climb back (seconds), when run.
    pub links: Option<(Vec<crate::weak::LinkResult>, Option<f64>)>,
    /// One row per large-room size, and for each run of each size its CPU (for the
    /// marginal cost, paired by run).
    pub large: Vec<Row>,
    /// The join-flood pair: the room with tokens and no flood, then with the flood.
    pub flood: Vec<Row>,
    /// The cluster join comparison, when run.
    pub cluster: Option<crate::cluster::ClusterJoins>,
    pub errors: Vec<String>,
}

/// Media ports for run `i`, so that consecutive servers never share ports.
/// Publishers on G.711 in the G.711 room rows.
pub const G711_PUBLISHERS: usize = 3;

fn ports(i: usize) -> (u16, u16) {
    let base = 22000 + ((i % 40) as u16) * 200;
    (base, base + 199)
}

/// A room with audio and VP8 out (the capacity probes and the output variants).
async fn vp8_room(
    plan: &Plan,
    clips: &Arc<Clips>,
    n: usize,
    ports: (u16, u16),
    extras: Extras<'_>,
) -> anyhow::Result<RunResult> {
    server_run(
        &plan.server_bin,
        clips,
        n,
        VideoCodec::Vp8,
        true,
        &plan.timing,
        ports,
        extras,
    )
    .await
}

pub async fn run_plan(plan: &Plan, clips: &Arc<Clips>) -> Report {
    let mut counter = 0usize;
    let mut next_ports = || {
        counter += 1;
        ports(counter)
    };
    let mut errors = Vec::new();
    let mut rows = Vec::new();
    // The codec rows interleave run by run, so that their ratios compare the same moments
    // of this shared machine.
    let mut room_rows: Vec<(Row, usize, VideoCodec, usize)> = plan
        .rooms
        .iter()
        .map(|(n, out)| {
            let name = format!("{n} participants, VP8 360p in, {out} 720p30 out");
            (Row::new(name, *n), *n, *out, 0)
        })
        .chain(plan.g711_rooms.iter().map(|n| {
            let name = format!(
                "{n} participants, VP8 360p in, VP8 720p30 out, {G711_PUBLISHERS} of them on G.711 (PCMU)"
            );
            (Row::new(name, *n), *n, VideoCodec::Vp8, G711_PUBLISHERS.min(*n))
        }))
        .collect();
    for _ in 0..plan.runs {
        for (row, n, out, g711) in room_rows.iter_mut() {
            row.record(
                server_run(
                    &plan.server_bin,
                    clips,
                    *n,
                    *out,
                    true,
                    &plan.timing,
                    next_ports(),
                    Extras {
                        g711: *g711,
                        ..Extras::default()
                    },
                )
                .await,
                &mut errors,
            );
        }
    }
    rows.extend(room_rows.into_iter().map(|(row, ..)| row));
    // The bare pipeline and the server's video-only room run alternately, so both see the
    // same moments of this shared machine; their ratio is taken from these pairs.
    let mut bare = Vec::new();
    for n in &plan.bare {
        let mut server_row = Row::new(
            format!("{n} participants, VP8 360p in, VP8 720p30 out, video only"),
            *n,
        );
        let mut row = Row::new(
            format!("bare gst-launch-1.0, {n} × VP8 360p → VP8 720p30"),
            *n,
        );
        for _ in 0..plan.runs {
            server_row.record(
                server_run(
                    &plan.server_bin,
                    clips,
                    *n,
                    VideoCodec::Vp8,
                    false,
                    &plan.timing,
                    next_ports(),
                    Extras::default(),
                )
                .await,
                &mut errors,
            );
            row.record(
                bare_run(&clips.vp8.path, *n, VideoCodec::Vp8, &plan.timing).await,
                &mut errors,
            );
        }
        rows.push(server_row);
        bare.push(row);
    }
    let mut capacity = None;
    let mut capacity_rows = Vec::new();
    let mut unpaced_rows = Vec::new();
    for n in &plan.capacity {
        let mut row = Row::new(format!("capacity probe: {n} participants, VP8 out"), *n);
        let compare = plan.unpaced.contains(n);
        let mut unpaced = Row::new(
            format!("capacity probe: {n} participants, VP8 out, pacing off"),
            *n,
        );
        for _ in 0..plan.runs {
            row.record(
                vp8_room(plan, clips, *n, next_ports(), Extras::default()).await,
                &mut errors,
            );
            if compare {
                let unpaced_extras = Extras {
                    video: "pacing_margin_ms = 0",
                    ..Extras::default()
                };
                unpaced.record(
                    vp8_room(plan, clips, *n, next_ports(), unpaced_extras).await,
                    &mut errors,
                );
            }
        }
        if compare {
            unpaced_rows.push((row.name.clone(), unpaced));
        }
        let ok = row.cpu().is_some_and(|c| c <= CAPACITY_MAX_CORES)
            && row.med(|r| r.fps).is_some_and(|f| f >= CAPACITY_MIN_FPS)
            && row
                .med(|r| r.late_share)
                .is_some_and(|l| l <= CAPACITY_MAX_LATE);
        if ok {
            capacity = Some(*n);
        }
        capacity_rows.push(row);
    }
    let idle = if plan.idle_rooms > 0 {
        let mut row = Row::new(format!("{} idle rooms (everyone left)", plan.idle_rooms), 0);
        for _ in 0..plan.runs {
            row.record(
                idle_run(
                    &plan.server_bin,
                    clips,
                    plan.idle_rooms,
                    &plan.timing,
                    next_ports(),
                )
                .await,
                &mut errors,
            );
        }
        Some(row)
    } else {
        None
    };
    // Mixdown and Janus run alternately, for the same reason.
    let mut audio = Vec::new();
    for (n, speakers) in &plan.audio_rooms {
        let row = |label: &str| {
            Row::new(
                format!("audio-only room, {n} participants ({speakers} speaking), {label}"),
                *n,
            )
        };
        let mut pair = [row("Mixdown"), row("Janus AudioBridge")];
        for _ in 0..plan.audio_runs {
            for (server, row) in [AudioServer::Mixdown, AudioServer::JanusAudioBridge]
                .into_iter()
                .zip(pair.iter_mut())
            {
                row.record(
                    audio_room_run(
                        server,
                        &plan.server_bin,
                        clips,
                        *n,
                        *speakers,
                        &plan.timing,
                        next_ports(),
                    )
                    .await,
                    &mut errors,
                );
            }
        }
        let [mixdown, janus] = pair;
        audio.push((mixdown, janus));
    }
    // Output variants run alternately too: each one's extra cost is read against the
    // baseline measured at the same moments.
    let n = plan.output_room;
    let mut outputs: Vec<Row> = plan
        .outputs
        .iter()
        .map(|(label, _)| Row::new(format!("{n} participants, VP8 720p30 out, {label}"), n))
        .collect();
    for _ in 0..plan.runs {
        for ((_, specs), row) in plan.outputs.iter().zip(outputs.iter_mut()) {
            let extras = Extras {
                outputs: specs,
                ..Extras::default()
            };
            row.record(
                vp8_room(plan, clips, n, next_ports(), extras).await,
                &mut errors,
            );
        }
    }
    // The old and the new transport alternate within each run, for the same reason.
    let mut transport = Vec::new();
    for &n in &plan.transport {
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for _ in 0..plan.runs {
            for imp in [Impl::Old, Impl::New] {
                let warmup = plan.timing.warmup;
                match crate::transport::run(imp, n, warmup, plan.timing.window, next_ports()).await
                {
                    Ok(r) => match imp {
                        Impl::Old => old.push(r),
                        Impl::New => new.push(r),
                    },
                    Err(e) => errors.push(format!("transport, {n} connections, {imp}: {e:#}")),
                }
            }
        }
        transport.push((n, old, new));
    }
    // Encoder tiers: the same room with its extra viewers held on one, two or three tiers,
    // alternately.
    let n = plan.tier_room;
    let mut tiers: Vec<Row> = Vec::new();
    if n > 0 {
        tiers = TIER_VARIANTS
            .iter()
            .map(|(label, _)| Row::new(format!("{n} participants + 2 viewers, {label}"), n))
            .collect();
        for _ in 0..plan.runs {
            for ((_, viewers), row) in TIER_VARIANTS.iter().zip(tiers.iter_mut()) {
                let extras = Extras {
                    viewers,
                    ..Extras::default()
                };
                row.record(
                    vp8_room(plan, clips, n, next_ports(), extras).await,
                    &mut errors,
                );
            }
        }
    }
    let links = if plan.links {
        match crate::weak::link_profiles(&plan.server_bin, clips, next_ports()).await {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(format!("link profiles: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let mut large: Vec<Row> = plan
        .large
        .iter()
        .map(|n| {
            Row::new(
                format!("large room: {n} participants (16 visible, {LARGE_SPEAKERS} speaking)"),
                *n,
            )
        })
        .collect();
    for _ in 0..plan.runs {
        for row in large.iter_mut() {
            let extras = Extras {
                speakers: Some(LARGE_SPEAKERS),
                ..Extras::default()
            };
            let result = vp8_room(plan, clips, row.participants, next_ports(), extras).await;
            // A failed run keeps its place (NaN) so that runs stay paired by index.
            match result {
                Ok(r) => row.runs.push(r),
                Err(e) => {
                    errors.push(format!("{}: {e:#}", row.name));
                    row.runs.push(RunResult {
                        cpu_cores: f64::NAN,
                        ..RunResult::default()
                    });
                }
            }
        }
    }
    let mut flood: Vec<Row> = if plan.flood > 0 {
        vec![
            Row::new(
                format!("{FLOOD_ROOM} participants, tokens, no flood"),
                FLOOD_ROOM,
            ),
            Row::new(
                format!(
                    "{FLOOD_ROOM} participants, tokens, {} flooders on this server",
                    plan.flood
                ),
                FLOOD_ROOM,
            ),
            Row::new(
                format!(
                    "control: {} flooders on another server of this machine",
                    plan.flood
                ),
                FLOOD_ROOM,
            ),
        ]
    } else {
        Vec::new()
    };
    for _ in 0..plan.runs {
        for (i, row) in flood.iter_mut().enumerate() {
            let extras = Extras {
                flood: Some(if i == 0 { 0 } else { plan.flood }),
                flood_elsewhere: i == 2,
                ..Extras::default()
            };
            match vp8_room(plan, clips, row.participants, next_ports(), extras).await {
                Ok(r) => row.runs.push(r),
                Err(e) => {
                    errors.push(format!("{}: {e:#}", row.name));
                    row.runs.push(RunResult {
                        cpu_cores: f64::NAN,
                        ..RunResult::default()
                    });
                }
            }
        }
    }
    let cluster = if plan.cluster_joins > 0 {
        match crate::cluster::join_latency(&plan.server_bin, plan.cluster_joins, next_ports()).await
        {
            Ok(c) => Some(c),
            Err(e) => {
                errors.push(format!("cluster joins: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    Report {
        large,
        flood,
        cluster,
        rows,
        bare,
        capacity,
        capacity_rows,
        unpaced: unpaced_rows,
        idle,
        audio,
        outputs,
        transport,
        tiers,
        links,
        errors,
    }
}

/// Joins through a non-owner node (307 followed) against direct joins.
fn cluster_markdown(md: &mut String, c: &crate::cluster::ClusterJoins) {
    let p50 = |v: &[f64]| crate::measure::quantile(v, 0.5);
    let f = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
    let _ = writeln!(md, "\n## Cluster joins\n");
    let _ = writeln!(
        md,
        "Two nodes against one `redis-server` on loopback; a room of one publisher on node A; \
         WHEP viewers join it directly at A or through B (307 to A, followed), alternately, \
         {} of each. Medians.\n",
        c.direct_answer_ms.len()
    );
    let _ = writeln!(
        md,
        "| join | answer (ms) | first frame (ms) |\n|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| direct, at the owner | {} | {} |",
        f(p50(&c.direct_answer_ms)),
        f(p50(&c.direct_frame_ms))
    );
    let _ = writeln!(
        md,
        "| through another node (307) | {} | {} |",
        f(p50(&c.redirected_answer_ms)),
        f(p50(&c.redirected_frame_ms))
    );
    if let (Some(d), Some(r)) = (p50(&c.direct_answer_ms), p50(&c.redirected_answer_ms)) {
        let _ = writeln!(
            md,
            "\nThe redirect adds {:.1} ms to the answer (ratio {:.2}).",
            r - d,
            r / d.max(0.001)
        );
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|k| format!("{:.0} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem}")
}

impl Report {
    /// The Markdown report; `plots` names the PNG files written beside it (if any).
    pub fn markdown(&self, plan: &Plan, plots: &[String]) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Mixdown benchmarks\n");
        let _ = writeln!(md, "Machine: {}.  ", machine());
        let _ = writeln!(md, "Command: `{}`.  ", plan.command);
        let _ = writeln!(
            md,
            "Each figure is the median of {} runs (the audio-only comparison: {} per server); each run measures a {:.0} s window after {:.0} s \
             of warm-up. Server CPU is user+system time of the `mixdown` process from \
             `/proc/<pid>/stat` (1.0 = one core); the load generator runs in another process. \
             Latency is marker to probe on loopback (video: a patch that turns white, seen in the \
             composite by a decoding WHEP probe; audio: a 3 kHz burst found in the probe's mix), so \
             it includes loopback transport and the probe's decode. Late frames: more than 10 ms \
             behind the RTP timeline at the probe.\n",
            plan.runs,
            plan.audio_runs,
            plan.timing.window.as_secs_f64(),
            plan.timing.warmup.as_secs_f64()
        );
        let _ = writeln!(
            md,
            "| scenario | server CPU (cores) | RSS (MiB) | fps | late frames (of them within 200 ms after a keyframe) | video latency p50 / p99 (ms) | audio latency p50 / p99 (ms) | join → first frame p50 (ms) | generator CPU (cores) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for row in self
            .rows
            .iter()
            .chain(&self.capacity_rows)
            .chain(self.unpaced.iter().map(|(_, r)| r))
            .chain(&self.outputs)
        {
            let v = row.pooled(|r| &r.video_latency_ms);
            let a = row.pooled(|r| &r.audio_latency_ms);
            let j = row.pooled(|r| &r.join_ms);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} % ({} %) | {} / {} | {} / {} | {} | {} |",
                row.name,
                fmt(row.cpu(), 2),
                fmt(row.med(|r| r.rss_mib), 0),
                fmt(row.med(|r| r.fps), 1),
                fmt(row.med(|r| r.late_share * 100.0), 1),
                fmt(row.med(|r| r.late_after_keyframe * 100.0), 1),
                fmt(quantile(&v, 0.5), 0),
                fmt(quantile(&v, 0.99), 0),
                fmt(quantile(&a, 0.5), 0),
                fmt(quantile(&a, 0.99), 0),
                fmt(quantile(&j, 0.5), 0),
                fmt(row.med(|r| r.generator_cores), 2),
            );
        }
        let audio_rows = self.audio.iter().flat_map(|(m, j)| [m, j]);
        for row in self.bare.iter().chain(audio_rows).chain(&self.idle) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | – | – | – | – | – | – |",
                row.name,
                fmt(row.cpu(), 2),
                fmt(row.med(|r| r.rss_mib), 0)
            );
        }
        let _ = writeln!(md);
        for b in &self.bare {
            // Compare like with like: the video-only room if it was run.
            let server = self
                .rows
                .iter()
                .filter(|r| r.participants == b.participants && r.name.contains("VP8 720p30"))
                .max_by_key(|r| r.name.contains("video only"));
            if let (Some(s), Some(sc), Some(bc)) = (server, server.and_then(Row::cpu), b.cpu()) {
                let _ = writeln!(
                    md,
                    "Server ÷ bare pipeline, {} participants: {:.2} ({}: {:.2} cores, bare: {:.2}).  ",
                    b.participants,
                    sc / bc,
                    s.name,
                    sc,
                    bc
                );
            }
        }
        for (m, j) in &self.audio {
            if let (Some(mc), Some(jc)) = (m.cpu(), j.cpu()) {
                let _ = writeln!(
                    md,
                    "Audio-only room of {}: Mixdown ÷ Janus AudioBridge CPU = {:.2} ({mc:.2} vs {jc:.2} cores, medians of {} alternating runs each).  ",
                    m.participants,
                    mc / jc,
                    m.runs.len()
                );
            }
        }
        if let Some((base, rest)) = self.outputs.split_first()
            && let Some(bc) = base.cpu()
        {
            for row in rest {
                if let Some(c) = row.cpu() {
                    let _ = writeln!(
                        md,
                        "{}: {:+.2} cores over the same room without outputs ({c:.2} vs {bc:.2}, ratio {:.2}).  ",
                        row.name,
                        c - bc,
                        c / bc
                    );
                }
            }
        }
        for (paced_name, unpaced) in &self.unpaced {
            let Some(paced) = self.capacity_rows.iter().find(|r| &r.name == paced_name) else {
                continue;
            };
            let late = |r: &Row| fmt(r.med(|x| x.late_share * 100.0), 1);
            let p50 = |r: &Row| fmt(quantile(&r.pooled(|x| &x.video_latency_ms), 0.5), 0);
            let _ = writeln!(
                md,
                "Composite pacing, {} participants: {} % late frames with pacing, {} % without; \
                 video latency p50 {} ms with, {} ms without.  ",
                paced.participants,
                late(paced),
                late(unpaced),
                p50(paced),
                p50(unpaced)
            );
        }
        if !self.capacity_rows.is_empty() {
            let _ = writeln!(
                md,
                "Capacity (largest room probed with ≥ {CAPACITY_MIN_FPS} fps, ≤ {:.0} % late \
                 frames, ≤ {CAPACITY_MAX_CORES} cores): {}.  ",
                CAPACITY_MAX_LATE * 100.0,
                self.capacity
                    .map(|n| format!("{n} participants"))
                    .unwrap_or_else(|| "none of the sizes probed".into())
            );
        }
        if !self.large.is_empty() {
            self.large_markdown(&mut md);
        }
        if !self.flood.is_empty() {
            self.flood_markdown(&mut md);
        }
        if !self.transport.is_empty() {
            self.transport_markdown(&mut md);
        }
        if !self.tiers.is_empty() {
            self.tiers_markdown(&mut md);
        }
        if let Some((links, climb)) = &self.links {
            links_markdown(&mut md, links, *climb);
        }
        if let Some(c) = &self.cluster {
            cluster_markdown(&mut md, c);
        }
        for p in plots {
            let _ = writeln!(md, "\n![{p}]({p})");
        }
        if !self.errors.is_empty() {
            let _ = writeln!(md, "\n## Failed runs\n");
            for e in &self.errors {
                let _ = writeln!(md, "- {e}");
            }
        }
        md
    }
}

impl Report {
    /// The join flood: the same room with and without anonymous and bad-token POSTs.
    fn flood_markdown(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Join flood\n\nA {FLOOD_ROOM}-person room on a server with `[auth] keys` (each \
             participant sends the VP8 360p clip and speech with a valid token and receives the \
             composite; one decoding WHEP probe), without and with flooding tasks that POST \
             WHIP offers as fast as the server answers, half with no token and half with a \
             token signed by the wrong secret, each on its own keep-alive connection, for the \
             whole measured window. The three variants run in turn: no flood, the flood on this \
             server, and (a control) the same flood on a second Mixdown server on the same \
             machine, which shows what the attacker's load costs the machine rather than what \
             refusing costs this server. The flooders run in their own process (the \
             attacker), on the same two cores as the server and the generator.\n"
        );
        let _ = writeln!(
            md,
            "| variant | server CPU (cores) | fps | late frames | video latency p50 (ms) | flood: requests/s | answers | attacker CPU (cores) | generator CPU (cores) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for row in &self.flood {
            let v = row.pooled(|r| &r.video_latency_ms);
            let rates: Vec<f64> = row
                .runs
                .iter()
                .filter_map(|r| r.flood.as_ref().map(|f| f.rate()))
                .collect();
            let mut statuses = std::collections::BTreeMap::new();
            for f in row.runs.iter().filter_map(|r| r.flood.as_ref()) {
                for (s, n) in &f.statuses {
                    *statuses.entry(*s).or_insert(0u64) += n;
                }
            }
            let answers = if statuses.is_empty() {
                "–".to_owned()
            } else {
                statuses
                    .iter()
                    .map(|(s, n)| format!("{n} × {s}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} % | {} | {} | {} | {} | {} |",
                row.name,
                fmt(row.cpu(), 2),
                fmt(row.med(|r| r.fps), 1),
                fmt(row.med(|r| r.late_share * 100.0), 1),
                fmt(quantile(&v, 0.5), 0),
                if rates.is_empty() {
                    "–".to_owned()
                } else {
                    fmt(median(&rates), 0)
                },
                answers,
                fmt(
                    median(
                        &row.runs
                            .iter()
                            .filter_map(|r| r.flood.as_ref().map(|f| f.attacker_cores))
                            .filter(|c| c.is_finite())
                            .collect::<Vec<_>>()
                    ),
                    2
                ),
                fmt(row.med(|r| r.generator_cores), 2),
            );
        }
    }

    /// Large rooms: the table, the largest that passes, and the marginal cost of ten more
    /// participants (hidden and silent) between consecutive sizes, paired run by run.
    fn large_markdown(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Large rooms\n\nN participants each send the VP8 360p clip and audio with \
             the RFC 6464 level extension; the first {LARGE_SPEAKERS} send speech, the rest \
             silence. Every participant receives the composite (VP8 720p30, 1.5 Mbit/s) and \
             its mix; the server shows 16 (`video.max_tiles`) and mixes 3 \
             (`audio.max_speakers`). One decoding WHEP probe. Sizes run in turn within each \
             run. Join → first frame: from the WHIP request to the first composite frame \
             received, for the first and the last ten joiners.\n"
        );
        let _ = writeln!(
            md,
            "| participants | server CPU (cores) | RSS (MiB) | fps | late frames | video / audio latency p50 (ms) | join → first frame p50, first 10 / last 10 (ms) | generator CPU (cores) | passes |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        let mut largest = None;
        for row in &self.large {
            let ok = row.cpu().is_some_and(|c| c <= CAPACITY_MAX_CORES)
                && row.med(|r| r.fps).is_some_and(|f| f >= CAPACITY_MIN_FPS)
                && row
                    .med(|r| r.late_share)
                    .is_some_and(|l| l <= CAPACITY_MAX_LATE);
            if ok {
                largest = Some(row.participants);
            }
            let ends = |last: bool| -> Vec<f64> {
                row.runs
                    .iter()
                    .flat_map(|r| {
                        let j = &r.join_ms;
                        let k = j.len().min(10);
                        if last { &j[j.len() - k..] } else { &j[..k] }.to_vec()
                    })
                    .collect()
            };
            let v = row.pooled(|r| &r.video_latency_ms);
            let a = row.pooled(|r| &r.audio_latency_ms);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} % | {} / {} | {} / {} | {} | {} |",
                row.participants,
                fmt(row.cpu(), 2),
                fmt(row.med(|r| r.rss_mib), 0),
                fmt(row.med(|r| r.fps), 1),
                fmt(row.med(|r| r.late_share * 100.0), 1),
                fmt(quantile(&v, 0.5), 0),
                fmt(quantile(&a, 0.5), 0),
                fmt(quantile(&ends(false), 0.5), 0),
                fmt(quantile(&ends(true), 0.5), 0),
                fmt(row.med(|r| r.generator_cores), 2),
                if ok { "yes" } else { "no" },
            );
        }
        let _ = writeln!(
            md,
            "\nLargest room that passes (≥ {CAPACITY_MIN_FPS} fps, ≤ {:.0} % late, ≤ {CAPACITY_MAX_CORES} \
             server cores): {}.  ",
            CAPACITY_MAX_LATE * 100.0,
            largest
                .map(|n| format!("{n} participants"))
                .unwrap_or_else(|| "none of the sizes".into())
        );
        for pair in self.large.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let per10: Vec<f64> = a
                .runs
                .iter()
                .zip(&b.runs)
                .map(|(x, y)| {
                    (y.cpu_cores - x.cpu_cores) / (b.participants - a.participants) as f64 * 10.0
                })
                .filter(|v| v.is_finite())
                .collect();
            let _ = writeln!(
                md,
                "Marginal server cost {} → {} participants: {} cores per +10 (median of {} paired runs).  ",
                a.participants,
                b.participants,
                fmt(median(&per10), 3),
                per10.len()
            );
        }
    }
}

/// The link-profile table.
fn links_markdown(md: &mut String, links: &[crate::weak::LinkResult], climb: Option<f64>) {
    let _ = writeln!(
        md,
        "\n## Weak links\n\nOne headless Chromium receiver (WHEP) in a network namespace whose \
         link is shaped with `tc tbf` (burst 16 KB, 100 ms queue) both ways, random loss dropped \
         by iptables' `statistic` match on what arrives in the namespace; two publishers of the \
         natural-entropy clips on this side; the default configuration (1280x720 canvas at \
         1500 kbit/s, tiers 640x360@30 450 kbit/s and 320x180@15 120 kbit/s). A fresh receiver \
         per profile connects on the shaped link, loss is switched on once it decodes, it \
         settles for {:.0} s and is measured for {:.0} s (one run per profile). From Chromium's \
         `getStats`: frames decoded, `freezeCount`, video bytes, concealed audio samples, and \
         the video jitter-buffer delay per frame (its playout delay, not glass-to-glass). The \
         tier is what `GET /api/rooms/{{room}}` reports for the receiver at the end.\n",
        crate::weak::SETTLE.as_secs_f64(),
        crate::weak::MEASURE.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| link | loss | tier delivered | fps | freezes/min | longest stall (s) | video kbit/s | audio concealed | playout delay (ms) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for l in links {
        let w = &l.window;
        let _ = writeln!(
            md,
            "| {} kbit/s | {:.0} % | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} % | {} |",
            l.kbit,
            l.loss * 100.0,
            l.tier,
            w.fps,
            w.freezes * 60.0 / w.seconds.max(1.0),
            w.longest_stall,
            w.kbps,
            w.concealed * 100.0,
            fmt(w.playout_ms.is_finite().then_some(w.playout_ms), 0)
        );
    }
    let _ = writeln!(
        md,
        "\nClimb: behind 300 kbit/s for 15 s, then the link lifted to 5 Mbit/s: Chromium decoded \
         the 720p canvas again after {}.",
        climb
            .map(|c| format!("{c:.1} s"))
            .unwrap_or_else(|| "more than 60 s (never)".into())
    );
}

impl Report {
    fn tiers_markdown(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Encoder tiers\n\nThe same room with two extra WHEP viewers held on ladder \
             rungs by `?max_tier=` (the room's participants and probe get the canvas), so that \
             one, two or three composite encodes run; the variants alternate. `encodes` is what \
             `GET /api/rooms/{{room}}` lists at the end of the window.\n"
        );
        let _ = writeln!(md, "| room | encodes | server CPU (cores) | ÷ one tier |");
        let _ = writeln!(md, "|---|---|---|---|");
        let base = self.tiers.first().and_then(|r| r.cpu());
        for row in &self.tiers {
            let ratio = match (row.cpu(), base) {
                (Some(c), Some(b)) if b > 0.0 => Some(c / b),
                _ => None,
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                row.name,
                fmt(row.med(|r| r.encodes as f64), 0),
                fmt(row.cpu(), 2),
                fmt(ratio, 2)
            );
        }
    }

    fn transport_markdown(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Transport\n\nN connections, each sending and receiving {} packets/s (100 \
             video of ~1,100 B, 50 audio of 100 B), to a server process that only moves packets \
             (`mixdown-bench --transport-server`), the old and the new transport alternating. \
             CPU and memory of the server process; µs per packet = server CPU ÷ packets in and \
             out; syscalls counted by `strace -c -f` in a separate 3 s window (strace slows the \
             process, so not during the CPU window); loss = packets that did not arrive of \
             those sent in the window (in: at the server, out: at the peers). The load peers \
             (webrtc-rs, in the bench process) share the machine's two cores with the server.\n",
            crate::transport::PACKETS_PER_S
        );
        let _ = writeln!(
            md,
            "| connections | transport | server CPU (cores) | µs per packet | syscalls/s | syscalls per packet | MiB per connection | loss in / out | UDP sockets |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for (n, old, new) in &self.transport {
            for (imp, runs) in [(Impl::Old, old), (Impl::New, new)] {
                let m = |f: &dyn Fn(&TransportResult) -> Option<f64>| {
                    median(&runs.iter().filter_map(f).collect::<Vec<_>>())
                };
                let _ = writeln!(
                    md,
                    "| {n} | {imp} | {} | {} | {} | {} | {} | {} % / {} % | {} |",
                    fmt(m(&|r| Some(r.cores)), 2),
                    fmt(m(&|r| Some(r.us_per_packet)), 1),
                    fmt(m(&|r| r.syscalls_per_s), 0),
                    fmt(m(&|r| r.syscalls_per_packet), 2),
                    fmt(m(&|r| Some(r.mib_per_connection)), 2),
                    fmt(m(&|r| Some(r.loss_in * 100.0)), 2),
                    fmt(m(&|r| Some(r.loss_out * 100.0)), 2),
                    fmt(m(&|r| Some(r.udp_sockets as f64)), 0),
                );
            }
        }
        for (n, old, new) in &self.transport {
            let us = |runs: &Vec<TransportResult>| {
                median(&runs.iter().map(|r| r.us_per_packet).collect::<Vec<_>>())
            };
            if let (Some(o), Some(w)) = (us(old), us(new)) {
                let _ = writeln!(
                    md,
                    "\nTransport, {n} connections: new ÷ old CPU per packet = {:.2} ({w:.1} vs {o:.1} µs).  ",
                    w / o
                );
            }
        }
    }
}

/// Draws the plots with gnuplot (if installed) into `dir`; returns the PNG file names.
pub fn plots(report: &Report, dir: &Path) -> Vec<String> {
    if std::process::Command::new("gnuplot")
        .arg("--version")
        .output()
        .is_err()
    {
        return Vec::new();
    }
    let mut written = Vec::new();
    // Series sorted by room size: rooms with audio (the capacity probes included) and
    // video-only rooms, each against the bare pipeline.
    let series = |video_only: bool| {
        let mut points: Vec<(usize, f64)> = report
            .rows
            .iter()
            .chain(&report.capacity_rows)
            .filter(|r| r.name.contains("VP8 out") || r.name.contains("VP8 720p30 out"))
            .filter(|r| r.name.contains("video only") == video_only)
            .filter_map(|r| r.cpu().map(|c| (r.participants, c)))
            .collect();
        points.sort_by_key(|p| p.0);
        points.iter().fold(String::new(), |mut out, (n, c)| {
            let _ = writeln!(out, "{n} {c}");
            out
        })
    };
    let cpu = series(false);
    let cpu_video = series(true);
    let mut bare = String::new();
    for row in &report.bare {
        if let Some(c) = row.cpu() {
            let _ = writeln!(bare, "{} {c}", row.participants);
        }
    }
    let mut lat = String::new();
    let (mut v, mut a) = (Vec::new(), Vec::new());
    for row in &report.rows {
        v.extend(row.pooled(|r| &r.video_latency_ms));
        a.extend(row.pooled(|r| &r.audio_latency_ms));
    }
    v.sort_by(|x, y| x.total_cmp(y));
    a.sort_by(|x, y| x.total_cmp(y));
    for (i, x) in v.iter().enumerate() {
        let _ = writeln!(lat, "{x} {}", (i + 1) as f64 / v.len() as f64);
    }
    let mut alat = String::new();
    for (i, x) in a.iter().enumerate() {
        let _ = writeln!(alat, "{x} {}", (i + 1) as f64 / a.len() as f64);
    }
    let files = [
        ("cpu.dat", cpu),
        ("cpu-video.dat", cpu_video),
        ("bare.dat", bare),
        ("video-latency.dat", lat),
        ("audio-latency.dat", alat),
    ];
    for (name, data) in &files {
        let _ = std::fs::write(dir.join(name), data);
    }
    let script = format!(
        "set terminal pngcairo size 800,500\n\
         set output '{dir}/cpu.png'\nset title 'Server CPU against participants (VP8 720p30 out)'\n\
         set xlabel 'participants'\nset ylabel 'cores'\nset key top left\nset grid\n\
         plot '{dir}/cpu.dat' with linespoints title 'mixdown, video + audio', '{dir}/cpu-video.dat' with linespoints title 'mixdown, video only', '{dir}/bare.dat' with linespoints title 'bare gst-launch-1.0 (video only)'\n\
         set output '{dir}/latency.png'\nset title 'Marker latency on loopback (cumulative)'\n\
         set xlabel 'ms'\nset ylabel 'share of markers'\nset key bottom right\n\
         plot '{dir}/video-latency.dat' with lines title 'video', '{dir}/audio-latency.dat' with lines title 'audio'\n",
        dir = dir.display()
    );
    let script_path = dir.join("plots.gp");
    let ok = std::fs::write(&script_path, &script).is_ok()
        && std::process::Command::new("gnuplot")
            .arg(&script_path)
            .status()
            .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&script_path);
    for (name, _) in &files {
        let _ = std::fs::remove_file(dir.join(name));
    }
    if ok {
        for f in ["cpu.png", "latency.png"] {
            if dir.join(f).exists() {
                written.push(f.to_owned());
            }
        }
    }
    written
}
