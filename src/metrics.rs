//! Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! Two kinds of figures:
//! - **counters** bumped where things happen, in [`METRICS`]: relaxed atomics, once per
//!   `recvmmsg`/`sendmmsg` batch on the media path, never per packet in a lock;
//! - **gauges** read from the rooms, the output table and `/proc` when scraped
//!   ([`Scrape`]), so they cannot drift from what is running.
//!
//! Names follow Prometheus' conventions (`mixdown_` prefix, `_total` for counters, seconds
//! and bytes). Labels are bounded sets (codec, tier, role, format, state, reason): never a
//! room or session, so a scrape's size does not grow with the audience. Rendering is pure.

use crate::output::{OutputInfo, OutputState};
use crate::room::{Role, RoomInfo};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed buckets (upper bounds in seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: [AtomicU64; 12],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: [const { AtomicU64::new(0) }; 12],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(i) = self.bounds.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const JOIN_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const ENCODE_BOUNDS: &[f64] = &[
    0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
];

/// The process-wide counters.
pub struct Metrics {
    pub udp_datagrams_received: AtomicU64,
    pub udp_bytes_received: AtomicU64,
    pub udp_datagrams_sent: AtomicU64,
    pub udp_bytes_sent: AtomicU64,
    /// Video packets receivers asked for again, and those resent.
    pub nacked_packets: AtomicU64,
    pub retransmitted_packets: AtomicU64,
    /// PLI/FIR from receivers (and those the retransmitter makes for a loss past repair).
    pub keyframe_requests: AtomicU64,
    /// Keyframes forced on composite encoders (after coalescing).
    pub keyframes_forced: AtomicU64,
    pub ice_failures: AtomicU64,
    pub joins: AtomicU64,
    /// Composite frames out of an encoder, and those more than a frame late.
    pub composite_frames: AtomicU64,
    pub composite_late_frames: AtomicU64,
    /// Frames recordings and streams dropped because their destination could not keep up.
    pub output_dropped_frames: AtomicU64,
    /// Offer to answer, WHIP/WHEP and WebSocket.
    pub join_seconds: Histogram,
    /// How long after its running time an encoded composite frame left its encoder: compose
    /// and encode time, with any queueing between them.
    pub encode_delay_seconds: Histogram,
}

pub static METRICS: Metrics = Metrics {
    udp_datagrams_received: AtomicU64::new(0),
    udp_bytes_received: AtomicU64::new(0),
    udp_datagrams_sent: AtomicU64::new(0),
    udp_bytes_sent: AtomicU64::new(0),
    nacked_packets: AtomicU64::new(0),
    retransmitted_packets: AtomicU64::new(0),
    keyframe_requests: AtomicU64::new(0),
    keyframes_forced: AtomicU64::new(0),
    ice_failures: AtomicU64::new(0),
    joins: AtomicU64::new(0),
    composite_frames: AtomicU64::new(0),
    composite_late_frames: AtomicU64::new(0),
    output_dropped_frames: AtomicU64::new(0),
    join_seconds: Histogram::new(JOIN_BOUNDS),
    encode_delay_seconds: Histogram::new(ENCODE_BOUNDS),
};

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// This process's CPU time and resident memory, from `/proc/self`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
            )
        };
        // Fields 14, 15 (utime, stime), 20 (threads), 22 (starttime) and 24 (rss) of
        // proc(5), counted from the state field (3).
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })?;
        Some(Self {
            cpu_seconds: (num(14)? + num(15)?) / ticks,
            threads: num(20)? as u64,
            start_time_seconds: boot + num(22)? / ticks,
            resident_bytes: num(24)? as u64 * page,
        })
    }
}

/// What the gauges are read from, gathered when scraped.
#[derive(Default)]
pub struct Scrape {
    pub rooms: Vec<RoomInfo>,
    pub outputs: Vec<OutputInfo>,
    /// Refusals by limit, since start (`/healthz`'s `refused`).
    pub refused: Vec<(&'static str, u64)>,
    /// Bytes in the recordings directory.
    pub recording_bytes: u64,
    pub process: Option<ProcessStats>,
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, c: &AtomicU64) {
    single(out, name, help, "counter", c.load(Ordering::Relaxed));
}

fn state_name(s: OutputState) -> &'static str {
    match s {
        OutputState::Starting => "starting",
        OutputState::Recording => "recording",
        OutputState::Paused => "paused",
        OutputState::Live => "live",
        OutputState::Retrying => "retrying",
        OutputState::Finished => "finished",
        OutputState::Failed => "failed",
    }
}

/// The scrape in Prometheus' text format.
pub fn render(s: &Scrape, m: &Metrics) -> String {
    let mut out = String::with_capacity(8192);
    let o = &mut out;
    single(o, "mixdown_rooms", "Rooms open.", "gauge", s.rooms.len());

    let (mut publishers, mut viewers) = (0usize, 0usize);
    let (mut video_decoders, mut audio_decoders) = (0usize, 0usize);
    let mut encoders: std::collections::BTreeMap<(String, usize), usize> = Default::default();
    let mut receivers: std::collections::BTreeMap<String, usize> = Default::default();
    let mut losses: Vec<f64> = Vec::new();
    for r in &s.rooms {
        video_decoders += r.video_decoders;
        audio_decoders += r.audio_decoders;
        for e in &r.encodes {
            *encoders.entry((e.codec.to_string(), e.tier)).or_default() += 1;
        }
        for p in &r.participants {
            if p.role == Role::Whep && !p.publishes_audio && !p.publishes_video {
                viewers += 1;
            } else {
                publishers += 1;
            }
            if let Some(q) = &p.quality {
                let tier = q.tier.map_or("audio-only".to_owned(), |t| t.to_string());
                *receivers.entry(tier).or_default() += 1;
                if let Some(l) = q.loss_percent {
                    losses.push(l / 100.0);
                }
            }
        }
    }
    header(
        o,
        "mixdown_participants",
        "Sessions in rooms: publishers (WHIP and WebSocket participants) and viewers (WHEP).",
        "gauge",
    );
    let _ = writeln!(o, "mixdown_participants{{role=\"publisher\"}} {publishers}");
    let _ = writeln!(o, "mixdown_participants{{role=\"viewer\"}} {viewers}");
    single(
        o,
        "mixdown_video_decoders",
        "Publisher video decoders running.",
        "gauge",
        video_decoders,
    );
    single(
        o,
        "mixdown_audio_decoders",
        "Publisher audio sources being decoded.",
        "gauge",
        audio_decoders,
    );
    header(
        o,
        "mixdown_video_encoders",
        "Composite encoders running, by codec and ladder tier (0 is the canvas).",
        "gauge",
    );
    for ((codec, tier), n) in &encoders {
        let _ = writeln!(
            o,
            "mixdown_video_encoders{{codec=\"{codec}\",tier=\"{tier}\"}} {n}"
        );
    }
    header(
        o,
        "mixdown_video_receivers",
        "Video receivers by the tier they get.",
        "gauge",
    );
    for (tier, n) in &receivers {
        let _ = writeln!(o, "mixdown_video_receivers{{tier=\"{tier}\"}} {n}");
    }
    header(
        o,
        "mixdown_receiver_loss_ratio",
        "Loss that video receivers report: the mean and the worst over current receivers.",
        "gauge",
    );
    let mean = if losses.is_empty() {
        0.0
    } else {
        losses.iter().sum::<f64>() / losses.len() as f64
    };
    let max = losses.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(o, "mixdown_receiver_loss_ratio{{stat=\"mean\"}} {mean}");
    let _ = writeln!(o, "mixdown_receiver_loss_ratio{{stat=\"max\"}} {max}");

    let mut outputs: std::collections::BTreeMap<(String, &str), usize> = Default::default();
    for out in &s.outputs {
        *outputs
            .entry((out.format.clone(), state_name(out.state)))
            .or_default() += 1;
    }
    header(
        o,
        "mixdown_outputs",
        "Recordings and streams, by format and state.",
        "gauge",
    );
    for ((format, state), n) in &outputs {
        let _ = writeln!(
            o,
            "mixdown_outputs{{format=\"{format}\",state=\"{state}\"}} {n}"
        );
    }
    single(
        o,
        "mixdown_recording_bytes",
        "Bytes in the recordings directory.",
        "gauge",
        s.recording_bytes,
    );

    let c = |o: &mut String, n: &str, h: &str, v: &AtomicU64| counter(o, n, h, v);
    c(
        o,
        "mixdown_udp_datagrams_received_total",
        "Datagrams received on the media port (STUN, DTLS, RTP, RTCP).",
        &m.udp_datagrams_received,
    );
    c(
        o,
        "mixdown_udp_received_bytes_total",
        "Bytes received on the media port.",
        &m.udp_bytes_received,
    );
    c(
        o,
        "mixdown_udp_datagrams_sent_total",
        "Datagrams sent from the media port.",
        &m.udp_datagrams_sent,
    );
    c(
        o,
        "mixdown_udp_sent_bytes_total",
        "Bytes sent from the media port.",
        &m.udp_bytes_sent,
    );
    c(
        o,
        "mixdown_nacked_packets_total",
        "Video packets receivers asked for again (NACK).",
        &m.nacked_packets,
    );
    c(
        o,
        "mixdown_retransmitted_packets_total",
        "Video packets sent again.",
        &m.retransmitted_packets,
    );
    c(
        o,
        "mixdown_keyframe_requests_total",
        "Keyframe requests from receivers (PLI, FIR, and losses past repair).",
        &m.keyframe_requests,
    );
    c(
        o,
        "mixdown_keyframes_forced_total",
        "Keyframes forced on composite encoders, after coalescing.",
        &m.keyframes_forced,
    );
    c(
        o,
        "mixdown_ice_failures_total",
        "Sessions whose connection failed (ICE or DTLS).",
        &m.ice_failures,
    );
    c(
        o,
        "mixdown_joins_total",
        "Sessions that joined (WHIP, WHEP, WebSocket).",
        &m.joins,
    );
    c(
        o,
        "mixdown_composite_frames_total",
        "Composite frames out of the encoders (every tier and codec).",
        &m.composite_frames,
    );
    c(
        o,
        "mixdown_composite_late_frames_total",
        "Composite frames that left their encoder more than a frame after their time.",
        &m.composite_late_frames,
    );
    c(
        o,
        "mixdown_output_dropped_frames_total",
        "Frames recordings and streams dropped because their destination fell behind.",
        &m.output_dropped_frames,
    );
    header(
        o,
        "mixdown_refused_total",
        "Requests refused, by the limit or check that refused them.",
        "counter",
    );
    for (reason, n) in &s.refused {
        let _ = writeln!(o, "mixdown_refused_total{{reason=\"{reason}\"}} {n}");
    }
    m.join_seconds.render(
        o,
        "mixdown_join_duration_seconds",
        "From an offer's arrival to its answer.",
    );
    m.encode_delay_seconds.render(
        o,
        "mixdown_encode_delay_seconds",
        "How long after its time a composite frame left its encoder (compose and encode).",
    );
    if let Some(p) = s.process {
        single(
            o,
            "process_cpu_seconds_total",
            "CPU time of the process, user and system.",
            "counter",
            p.cpu_seconds,
        );
        single(
            o,
            "process_resident_memory_bytes",
            "Resident memory of the process.",
            "gauge",
            p.resident_bytes,
        );
        single(
            o,
            "process_threads",
            "Threads of the process.",
            "gauge",
            p.threads,
        );
        single(
            o,
            "process_start_time_seconds",
            "When the process started, Unix seconds.",
            "gauge",
            p.start_time_seconds,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_everything() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 4.25\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
    }

    #[test]
    fn this_process_is_measured() {
        let p = ProcessStats::read().expect("/proc/self");
        assert!(p.resident_bytes > 1 << 20, "{p:?}");
        assert!(p.threads >= 1, "{p:?}");
        let now = crate::auth::now_unix() as f64;
        assert!(p.start_time_seconds > now - 3600.0 && p.start_time_seconds <= now + 1.0);
    }
}
