//! The recordings directory's budget (pure but for reading the directory): how much it holds
//! against `recording.quota_mb`, and which recordings `recording.retention_days` lets go.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Extensions of the files Mixdown records: retention deletes only these.
pub const RECORDING_EXTENSIONS: [&str; 3] = ["webm", "mkv", "mp4"];

/// Bytes of the regular files directly in `dir` (0 when it cannot be read).
pub fn usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Recordings in `dir` last written more than `keep` before `now`.
pub fn expired(dir: &Path, keep: Duration, now: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.path()
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| RECORDING_EXTENSIONS.contains(&x))
        })
        .filter(|e| {
            e.metadata()
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| m.modified().ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > keep)
        })
        .map(|e| e.path())
        .collect()
}

/// Deletes the expired recordings (logging each); returns how many went.
pub fn apply_retention(dir: &Path, days: u32) -> usize {
    if days == 0 {
        return 0;
    }
    let keep = Duration::from_secs(u64::from(days) * 86_400);
    let mut n = 0;
    for path in expired(dir, keep, SystemTime::now()) {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                n += 1;
                tracing::info!(path = %path.display(), days, "recording deleted (recording.retention_days)");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot delete an expired recording: {e}")
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_retention() {
        let dir = std::env::temp_dir().join(format!("mixdown-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: usize, age_days: u64| {
            let p = dir.join(name);
            std::fs::write(&p, vec![0u8; bytes]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age_days * 86_400))
                .unwrap();
        };
        write("old.webm", 1000, 40);
        write("new.mp4", 500, 1);
        write("old-notes.txt", 200, 40);
        assert_eq!(usage(&dir), 1700);
        assert_eq!(usage(&dir.join("missing")), 0);
        let gone = expired(&dir, Duration::from_secs(30 * 86_400), SystemTime::now());
        assert_eq!(
            gone,
            vec![dir.join("old.webm")],
            "only old recordings, not other files"
        );
        assert_eq!(apply_retention(&dir, 0), 0, "0 keeps everything");
        assert_eq!(apply_retention(&dir, 30), 1);
        assert!(!dir.join("old.webm").exists() && dir.join("new.mp4").exists());
        assert!(dir.join("old-notes.txt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
