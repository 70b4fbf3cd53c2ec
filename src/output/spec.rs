//! What an output is (pure): formats, names, file paths, and the AAC configuration both the
//! encoder and the muxers agree on.

use crate::media::VideoCodec;
use std::fmt;

/// A recording's container and codecs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// VP8 + Opus: the room's VP8 encode and Opus mix, copied.
    Webm,
    /// The room's own video codec (VP8 unless only H.264 is encoded) + Opus, copied.
    Mkv,
    /// H.264 + AAC, fragmented (`moof` every second): plays anywhere, survives a crash.
    Mp4,
}

pub const FORMATS: &str = "webm, mkv, mp4";

impl RecordFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "webm" => Ok(Self::Webm),
            "mkv" => Ok(Self::Mkv),
            "mp4" => Ok(Self::Mp4),
            other => Err(format!(
                "unknown recording format {other:?}: use one of {FORMATS}"
            )),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Webm => "webm",
            Self::Mkv => "mkv",
            Self::Mp4 => "mp4",
        }
    }

    /// The video codec written: WebM must be VP8 and MP4 H.264; Matroska takes whichever the
    /// room already encodes (no second encoder), else the first configured send codec.
    pub fn video_codec(self, active: &[VideoCodec], preference: &[VideoCodec]) -> VideoCodec {
        match self {
            Self::Webm => VideoCodec::Vp8,
            Self::Mp4 => VideoCodec::H264,
            Self::Mkv => preference
                .iter()
                .copied()
                .find(|c| active.contains(c))
                .or_else(|| active.first().copied())
                .or_else(|| preference.first().copied())
                .unwrap_or(VideoCodec::Vp8),
        }
    }

    /// Whether the audio is AAC (from the room's shared AAC encoder) rather than the Opus mix.
    pub fn aac(self) -> bool {
        self == Self::Mp4
    }
}

impl fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// The longest recording name accepted (without extension).
pub const MAX_NAME: usize = 100;

/// A user-supplied recording name: 1–100 characters of `A-Z a-z 0-9 _ - .`, not starting with
/// a dot. Anything else (a slash, `..`, a hidden file) is refused rather than rewritten, so the
/// name the user gave is the name on disk.
pub fn check_name(name: &str) -> Result<&str, String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "recording names are 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, '_', '-' and '.', \
             not starting with '.' and without '..'; got {name:?}"
        ))
    }
}

/// `room-YYYYMMDD-HHMMSS-id`, from UTC seconds since the Unix epoch.
pub fn default_name(room: &str, unix_secs: u64, id: &str) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_secs);
    format!("{room}-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{id}")
}

/// RFC 3339 UTC time, for the API.
pub fn rfc3339(unix_secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Calendar date and time of a Unix timestamp (UTC), after Howard Hinnant's days-from-civil
/// algorithm.
fn civil(unix_secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// AAC-LC AudioSpecificConfig (ISO 14496-3 §1.6.2.1) for the muxers' `codec_data`.
pub fn aac_lc_config(rate: u32, channels: u8) -> Option<[u8; 2]> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let index = RATES.iter().position(|r| *r == rate)? as u16;
    if !(1..=7).contains(&channels) {
        return None;
    }
    let bits: u16 = (2 << 11) | (index << 7) | (u16::from(channels) << 3);
    Some(bits.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_refuse_with_the_list() {
        assert_eq!(RecordFormat::parse("mp4"), Ok(RecordFormat::Mp4));
        let e = RecordFormat::parse("avi").unwrap_err();
        assert!(e.contains("webm, mkv, mp4"), "{e}");
    }

    #[test]
    fn matroska_reuses_the_rooms_codec() {
        use VideoCodec::*;
        let pref = [Vp8, H264];
        assert_eq!(RecordFormat::Mkv.video_codec(&[H264], &pref), H264);
        assert_eq!(RecordFormat::Mkv.video_codec(&[H264, Vp8], &pref), Vp8);
        assert_eq!(RecordFormat::Mkv.video_codec(&[], &[H264, Vp8]), H264);
        assert_eq!(RecordFormat::Webm.video_codec(&[H264], &pref), Vp8);
        assert_eq!(RecordFormat::Mp4.video_codec(&[Vp8], &pref), H264);
    }

    #[test]
    fn names_refuse_traversal_and_odd_characters() {
        assert_eq!(check_name("standup-2026.11"), Ok("standup-2026.11"));
        for bad in [
            "../x",
            "a/b",
            "..",
            ".hidden",
            "",
            "x y",
            "a\\b",
            "é",
            &"x".repeat(101),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_693_925), "2026-11-26T11:52:05Z");
        assert_eq!(
            default_name("r1", 1_795_693_925, "ab12"),
            "r1-20261126-115205-ab12"
        );
    }

    #[test]
    fn aac_config_matches_the_standard_examples() {
        // 48 kHz mono AAC-LC is 0x1188; 44.1 kHz stereo is 0x1210.
        assert_eq!(aac_lc_config(48000, 1), Some([0x11, 0x88]));
        assert_eq!(aac_lc_config(44100, 2), Some([0x12, 0x10]));
        assert_eq!(aac_lc_config(12345, 1), None);
    }
}
