//! Reading a process's CPU time and memory from `/proc`, and summarising samples.

use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Resident memory in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// UDP sockets of this network namespace (`/proc/net/udp` and `udp6`, what `ss -uan` lists)
/// whose line's fields satisfy `keep` (field 1 is the local address, field 9 the inode).
pub fn count_udp_sockets(keep: impl Fn(&[&str]) -> bool) -> usize {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| keep(&l.split_whitespace().collect::<Vec<_>>()))
                .count()
        })
        .sum()
}

/// CPU used by `pid` over a window: cores (CPU seconds per wall second).
pub struct CpuWindow {
    pid: u32,
    start_cpu: f64,
    start: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> Option<Self> {
        Some(Self {
            pid,
            start_cpu: cpu_seconds(pid)?,
            start: Instant::now(),
        })
    }

    pub fn cores(&self) -> Option<f64> {
        let used = cpu_seconds(self.pid)? - self.start_cpu;
        Some(used / self.start.elapsed().as_secs_f64())
    }
}

/// The `p`-quantile (0..=1) of `values` by nearest rank, or `None` when empty.
pub fn quantile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[((v.len() - 1) as f64 * p).round() as usize])
}

pub fn median(values: &[f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// Output pacing from (arrival, RTP timestamp) of every frame: frames per second, and the
/// share of frames arriving more than `late` after the nominal timeline set by the RTP clock
/// (anchored at the earliest frame relative to that timeline).
pub fn pacing(frames: &[(Instant, u32)], clock_rate: f64, late: Duration) -> Option<(f64, f64)> {
    if frames.len() < 2 {
        return None;
    }
    let late_count = late_frames(frames, clock_rate, late).len();
    let span = frames.last()?.0.duration_since(frames[0].0).as_secs_f64();
    Some((
        (frames.len() - 1) as f64 / span.max(1e-9),
        late_count as f64 / frames.len() as f64,
    ))
}

/// RTP timestamps of the frames that arrived more than `late` behind the earliest-arriving
/// frame's position on the RTP timeline.
pub fn late_frames(frames: &[(Instant, u32)], clock_rate: f64, late: Duration) -> Vec<u32> {
    let Some(&(t0, ts0)) = frames.first() else {
        return Vec::new();
    };
    let offsets: Vec<f64> = frames
        .iter()
        .map(|(t, ts)| {
            let media = ts.wrapping_sub(ts0) as f64 / clock_rate;
            t.duration_since(t0).as_secs_f64() - media
        })
        .collect();
    let base = offsets.iter().copied().fold(f64::INFINITY, f64::min);
    frames
        .iter()
        .zip(&offsets)
        .filter(|(_, o)| **o - base > late.as_secs_f64())
        .map(|((_, ts), _)| *ts)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_is_readable() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid).unwrap() >= before);
        assert!(rss_mib(pid).unwrap() > 0.0);
    }

    #[test]
    fn quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 1.0), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn pacing_counts_late_frames() {
        let t0 = Instant::now();
        let frames: Vec<(Instant, u32)> = (0..30u32)
            .map(|i| {
                let extra = if i == 10 { 25 } else { 0 };
                (t0 + Duration::from_millis(i as u64 * 33 + extra), i * 3000)
            })
            .collect();
        let (fps, late) = pacing(&frames, 90000.0, Duration::from_millis(10)).unwrap();
        assert!((fps - 30.3).abs() < 0.5, "{fps}");
        assert!((late - 1.0 / 30.0).abs() < 1e-9, "{late}");
    }
}
