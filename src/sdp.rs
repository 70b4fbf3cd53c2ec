//! Pure reading of an SDP offer: which media it carries, in which direction, with which codecs.
//! The control plane uses it to reject an offer with a clear reason before any peer connection
//! exists, and to decide what a session publishes and receives. No webrtc-rs types here.

use crate::media::{AudioCodec, VideoCodec};

/// The codecs Mixdown accepts, as told to a client whose offer has none of them.
pub const ACCEPTED_CODECS: &str = "VP8, VP9 (profile 0), H264 (packetization-mode=1; constrained baseline, baseline, main or high), opus, PCMU, PCMA";

/// H.264 profiles Mixdown receives, as `profile-level-id` (all packetization-mode 1):
/// constrained baseline, baseline, main, high, constrained high; `avdec_h264` decodes each.
/// They are also the only ones it answers a receiver with: what it sends is constrained
/// baseline with constraint_set1 (`42c0..`), which conforms to main, so every decoder of
/// these profiles decodes it (a high decoder decodes main). In order of preference for
/// sending.
pub const H264_PROFILES: [&str; 5] = ["42e01f", "42001f", "4d001f", "64001f", "640c1f"];

/// The rank of H.264 parameters `fmtp` among [`H264_PROFILES`] (profile and constraint
/// bytes compared, the level ignored, as webrtc-rs matches them), when they also say
/// packetization-mode 1; `None` for anything Mixdown cannot take. No `profile-level-id`
/// means baseline (RFC 6184).
pub fn h264_profile_rank(fmtp: &str) -> Option<usize> {
    if fmtp_value(fmtp, "packetization-mode") != Some("1") {
        return None;
    }
    let id = fmtp_value(fmtp, "profile-level-id").unwrap_or("42000a");
    let head = id.get(..4)?.to_ascii_lowercase();
    H264_PROFILES.iter().position(|p| p[..4] == head)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// Does the offerer send media in this section?
    pub fn offerer_sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
    /// Does the offerer want to receive media in this section?
    pub fn offerer_receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
    fn from_attribute(a: &str) -> Option<Self> {
        match a {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedCodec {
    pub payload_type: u8,
    /// Upper-case encoding name (`VP8`, `H264`, `OPUS`).
    pub name: String,
    pub clock_rate: u32,
    pub fmtp: String,
}

impl OfferedCodec {
    /// The video codec Mixdown can decode and encode for this offer entry, if any.
    pub fn video_codec(&self) -> Option<VideoCodec> {
        match self.name.as_str() {
            "VP8" => Some(VideoCodec::Vp8),
            // Profile 0 is what an entry without a profile-id means (Firefox sends none).
            "VP9" if fmtp_value(&self.fmtp, "profile-id").is_none_or(|p| p == "0") => {
                Some(VideoCodec::Vp9)
            }
            "H264" if h264_profile_rank(&self.fmtp).is_some() => Some(VideoCodec::H264),
            _ => None,
        }
    }

    /// The audio codec Mixdown can decode and encode for this offer entry, if any.
    pub fn audio_codec(&self) -> Option<AudioCodec> {
        match (self.name.as_str(), self.clock_rate) {
            ("OPUS", 48000) => Some(AudioCodec::Opus),
            ("PCMU", 8000) => Some(AudioCodec::Pcmu),
            ("PCMA", 8000) => Some(AudioCodec::Pcma),
            _ => None,
        }
    }

    pub fn is_opus(&self) -> bool {
        self.audio_codec() == Some(AudioCodec::Opus)
    }
}

fn fmtp_value<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k.eq_ignore_ascii_case(key)).then_some(v.trim())
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    pub kind: MediaKind,
    pub direction: Direction,
    pub codecs: Vec<OfferedCodec>,
    /// The section's `a=mid`, if it has one.
    pub mid: Option<String>,
}

impl MediaSection {
    /// Supported video codecs, in the offerer's order of preference, without repeats.
    pub fn video_codecs(&self) -> Vec<VideoCodec> {
        let mut out = Vec::new();
        for c in self.codecs.iter().filter_map(OfferedCodec::video_codec) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    /// Supported audio codecs, in the offerer's order of preference, without repeats.
    pub fn audio_codecs(&self) -> Vec<AudioCodec> {
        let mut out = Vec::new();
        for c in self.codecs.iter().filter_map(OfferedCodec::audio_codec) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    fn supported(&self) -> bool {
        match self.kind {
            MediaKind::Audio => !self.audio_codecs().is_empty(),
            MediaKind::Video => !self.video_codecs().is_empty(),
        }
    }
}

/// An m-section of an offer that Mixdown answers without media: a codec it does not take, a
/// second section of a kind it already serves, or a kind it does not know.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refused {
    pub mid: String,
    /// `audio`, `video`, `application`, …
    pub kind: String,
    /// The encoding names the section offered (`G722/8000`).
    pub codecs: Vec<String>,
    pub reason: String,
}

/// The usable media of an offer: the first audio and the first video section Mixdown
/// supports, the first data channel section, and what it refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSummary {
    pub audio: Option<MediaSection>,
    pub video: Option<MediaSection>,
    /// The mid of the offer's `webrtc-datachannel` section (the client may open channels).
    pub data_channel: Option<String>,
    pub refused: Vec<Refused>,
}

impl OfferSummary {
    pub fn publishes_audio(&self) -> bool {
        self.audio
            .as_ref()
            .is_some_and(|s| s.direction.offerer_sends())
    }
    pub fn publishes_video(&self) -> bool {
        self.video
            .as_ref()
            .is_some_and(|s| s.direction.offerer_sends())
    }
    pub fn receives_audio(&self) -> bool {
        self.audio
            .as_ref()
            .is_some_and(|s| s.direction.offerer_receives())
    }
    pub fn receives_video(&self) -> bool {
        self.video
            .as_ref()
            .is_some_and(|s| s.direction.offerer_receives())
    }
    /// Video codecs the offerer can receive, in its order of preference.
    pub fn receivable_video_codecs(&self) -> Vec<VideoCodec> {
        match &self.video {
            Some(s) if s.direction.offerer_receives() => s.video_codecs(),
            _ => Vec::new(),
        }
    }
    /// The codec the mix goes to the offerer in: Opus whenever it takes Opus (better sound
    /// in a fifth of G.711's bit rate), else the G.711 law it offered first.
    pub fn audio_send_codec(&self) -> Option<AudioCodec> {
        let codecs = match &self.audio {
            Some(s) if s.direction.offerer_receives() => s.audio_codecs(),
            _ => return None,
        };
        if codecs.contains(&AudioCodec::Opus) {
            Some(AudioCodec::Opus)
        } else {
            codecs.first().copied()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("the body is not an SDP session description (it must start with \"v=0\")")]
    NotSdp,
    #[error("malformed SDP at line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
    #[error("the offer has no audio or video media section")]
    NoMedia,
    #[error("no media section offers a codec Mixdown accepts ({ACCEPTED_CODECS})")]
    NoSupportedCodec,
}

/// RFC 3551's static payload types: what a format without `a=rtpmap` means.
const STATIC_PAYLOAD_TYPES: [(u8, &str); 19] = [
    (0, "PCMU/8000"),
    (3, "GSM/8000"),
    (4, "G723/8000"),
    (5, "DVI4/8000"),
    (6, "DVI4/16000"),
    (7, "LPC/8000"),
    (8, "PCMA/8000"),
    (9, "G722/8000"),
    (10, "L16/44100/2"),
    (11, "L16/44100"),
    (12, "QCELP/8000"),
    (13, "CN/8000"),
    (14, "MPA/90000"),
    (15, "G728/8000"),
    (16, "DVI4/11025"),
    (17, "DVI4/22050"),
    (18, "G729/8000"),
    (26, "JPEG/90000"),
    (31, "H261/90000"),
];

/// One m-section as read, before the summary decides about it.
struct RawSection {
    /// `audio`, `video`, `application`, …
    media: String,
    port_zero: bool,
    data_channel: bool,
    direction: Option<Direction>,
    formats: Vec<String>,
    codecs: Vec<OfferedCodec>,
    mid: Option<String>,
}

impl RawSection {
    fn kind(&self) -> Option<MediaKind> {
        match self.media.as_str() {
            "audio" => Some(MediaKind::Audio),
            "video" => Some(MediaKind::Video),
            _ => None,
        }
    }

    /// Static payload types listed without an `a=rtpmap` (SIP endpoints send `0 8` bare).
    fn add_static_codecs(&mut self) {
        for f in &self.formats {
            let Ok(pt) = f.parse::<u8>() else { continue };
            if self.codecs.iter().any(|c| c.payload_type == pt) {
                continue;
            }
            if let Some((_, map)) = STATIC_PAYLOAD_TYPES.iter().find(|(p, _)| *p == pt)
                && let Some(c) = parse_rtpmap(&format!("{pt} {map}"))
            {
                self.codecs.push(c);
            }
        }
    }

    fn codec_names(&self) -> Vec<String> {
        if self.data_channel {
            return vec!["webrtc-datachannel".to_owned()];
        }
        self.codecs
            .iter()
            // The offer's codecs, without the helpers that ride along with any of them.
            .filter(|c| {
                !matches!(
                    c.name.as_str(),
                    "RTX" | "RED" | "ULPFEC" | "CN" | "TELEPHONE-EVENT"
                )
            })
            .map(|c| format!("{}/{}", c.name, c.clock_rate))
            .collect()
    }
}

/// Reads an offer. Accepts `\r\n` or `\n` line endings.
pub fn parse_offer(sdp: &str) -> Result<OfferSummary, OfferError> {
    let mut lines = sdp.lines().map(str::trim_end).enumerate().peekable();
    match lines.peek() {
        Some((_, l)) if *l == "v=0" => {}
        _ => return Err(OfferError::NotSdp),
    }
    let mut session_direction = Direction::SendRecv;
    let mut sections: Vec<RawSection> = Vec::new();
    for (index, line) in lines {
        let line_no = index + 1;
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(OfferError::Malformed {
                line: line_no,
                reason: "expected <type>=<value>",
            });
        };
        if key.len() != 1 {
            return Err(OfferError::Malformed {
                line: line_no,
                reason: "the type must be a single letter",
            });
        }
        match key {
            "m" => {
                let mut parts = value.split_whitespace();
                let (Some(media), Some(port), Some(proto)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(OfferError::Malformed {
                        line: line_no,
                        reason: "m= needs <media> <port> <proto> <fmt>...",
                    });
                };
                let port: u32 = port
                    .split('/')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .filter(|p| *p <= 65535)
                    .ok_or(OfferError::Malformed {
                        line: line_no,
                        reason: "m= port is not a number",
                    })?;
                let formats: Vec<String> = parts.map(str::to_owned).collect();
                // Port 0 rejects a section unless `a=bundle-only` follows (RFC 8843):
                // max-bundle offerers (webrtcbin, some WHIP clients) send every section but
                // the first that way.
                sections.push(RawSection {
                    media: media.to_owned(),
                    port_zero: port == 0,
                    data_channel: media == "application"
                        && proto.ends_with("DTLS/SCTP")
                        && formats.iter().any(|f| f == "webrtc-datachannel"),
                    direction: None,
                    formats,
                    codecs: Vec::new(),
                    mid: None,
                });
            }
            "a" => {
                let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                if let Some(d) = Direction::from_attribute(name) {
                    match sections.last_mut() {
                        Some(s) => s.direction = Some(d),
                        None => session_direction = d,
                    }
                    continue;
                }
                let Some(section) = sections.last_mut() else {
                    continue;
                };
                match name {
                    "bundle-only" => section.port_zero = false,
                    "mid" => section.mid = Some(arg.trim().to_owned()),
                    "rtpmap" => {
                        let codec = parse_rtpmap(arg).ok_or(OfferError::Malformed {
                            line: line_no,
                            reason: "a=rtpmap needs <pt> <name>/<clock>[/<channels>]",
                        })?;
                        section.codecs.push(codec);
                    }
                    "fmtp" => {
                        let (pt, params) = arg.split_once(' ').unwrap_or((arg, ""));
                        let pt: u8 = pt.parse().map_err(|_| OfferError::Malformed {
                            line: line_no,
                            reason: "a=fmtp payload type is not a number",
                        })?;
                        if let Some(c) = section.codecs.iter_mut().find(|c| c.payload_type == pt) {
                            c.fmtp = params.trim().to_owned();
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if sections.is_empty() {
        return Err(OfferError::NoMedia);
    }
    let mut summary = OfferSummary {
        audio: None,
        video: None,
        data_channel: None,
        refused: Vec::new(),
    };
    for mut raw in sections {
        if raw.port_zero {
            continue; // the offerer's own rejection
        }
        raw.add_static_codecs();
        let names = raw.codec_names();
        let refuse = |summary: &mut OfferSummary, reason: String| {
            if let Some(mid) = &raw.mid {
                summary.refused.push(Refused {
                    mid: mid.clone(),
                    kind: raw.media.clone(),
                    codecs: names.clone(),
                    reason,
                });
            }
        };
        if raw.data_channel {
            if summary.data_channel.is_none() && raw.mid.is_some() {
                summary.data_channel = raw.mid.clone();
            } else {
                refuse(&mut summary, "one data channel section is served".into());
            }
            continue;
        }
        let Some(kind) = raw.kind() else {
            refuse(
                &mut summary,
                format!("{} sections are not served", raw.media),
            );
            continue;
        };
        let section = MediaSection {
            kind,
            direction: raw.direction.unwrap_or(session_direction),
            codecs: std::mem::take(&mut raw.codecs),
            mid: raw.mid.clone(),
        };
        if !section.supported() {
            refuse(
                &mut summary,
                format!("no codec Mixdown takes (it takes {ACCEPTED_CODECS})"),
            );
            continue;
        }
        let slot = match kind {
            MediaKind::Audio => &mut summary.audio,
            MediaKind::Video => &mut summary.video,
        };
        if slot.is_none() {
            *slot = Some(section);
        } else {
            refuse(&mut summary, format!("one {} section is served", raw.media));
        }
    }
    if summary.audio.is_none() && summary.video.is_none() {
        return Err(OfferError::NoSupportedCodec);
    }
    Ok(summary)
}

/// The offer as webrtc-rs reads it: `a=rtpmap` lines added for static payload types listed
/// without one (SIP endpoints write `m=audio … 0 8` bare, and webrtc-rs refuses a format it
/// cannot name).
pub fn complete_static_rtpmaps(offer: &str) -> String {
    let eol = if offer.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(offer.len() + 64);
    let mut pending: Vec<(u8, &str)> = Vec::new();
    let flush = |out: &mut String, pending: &mut Vec<(u8, &str)>| {
        for (pt, map) in pending.drain(..) {
            out.push_str(&format!("a=rtpmap:{pt} {map}{eol}"));
        }
    };
    let lines: Vec<&str> = offer.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(m) = line.strip_prefix("m=") {
            flush(&mut out, &mut pending);
            // This section's rtpmaps, to see which static formats lack one.
            let section_end = lines[i + 1..]
                .iter()
                .position(|l| l.starts_with("m="))
                .map_or(lines.len(), |p| i + 1 + p);
            let mapped: Vec<u8> = lines[i + 1..section_end]
                .iter()
                .filter_map(|l| l.strip_prefix("a=rtpmap:"))
                .filter_map(|a| a.split_whitespace().next()?.parse().ok())
                .collect();
            for f in m.split_whitespace().skip(3) {
                if let Ok(pt) = f.parse::<u8>()
                    && !mapped.contains(&pt)
                    && let Some(&(p, map)) = STATIC_PAYLOAD_TYPES.iter().find(|(p, _)| *p == pt)
                {
                    pending.push((p, map));
                }
            }
        }
        out.push_str(line);
        out.push_str(eol);
    }
    flush(&mut out, &mut pending);
    out
}

fn parse_rtpmap(arg: &str) -> Option<OfferedCodec> {
    let (pt, rest) = arg.split_once(' ')?;
    let payload_type: u8 = pt.trim().parse().ok()?;
    let mut parts = rest.trim().split('/');
    let name = parts.next()?.to_ascii_uppercase();
    let clock_rate: u32 = parts.next()?.parse().ok()?;
    if name.is_empty() {
        return None;
    }
    Some(OfferedCodec {
        payload_type,
        name,
        clock_rate,
        fmtp: String::new(),
    })
}

/// Picks the codec to send a receiver: one the room already encodes (no new encoder), else the
/// first of `preference` (the server's order, `video.send_codecs`) that the receiver offered.
/// Codecs missing from `preference` are never sent.
pub fn choose_send_codec(
    offered: &[VideoCodec],
    active: &[VideoCodec],
    preference: &[VideoCodec],
) -> Option<VideoCodec> {
    let allowed = |c: &VideoCodec| preference.contains(c);
    offered
        .iter()
        .copied()
        .filter(allowed)
        .find(|c| active.contains(c))
        .or_else(|| preference.iter().copied().find(|c| offered.contains(c)))
}

/// The answer as the client gets it, from webrtc-rs' answer to the same offer: each section
/// in `summary.refused` answered without media, and the candidates in a section that carries
/// the transport. webrtc-rs gives port 0 only to sections none of whose codecs it knows, keeps
/// its candidates in the first section even when that one is rejected, and has no way to
/// refuse a section it could partly match; so this rewrites its answer text (webrtc-rs' own
/// state for a section nobody sends on does not matter).
///
/// The offer's BUNDLE tag (its first bundled section) is never answered with port 0: Chromium
/// with `bundlePolicy: "max-bundle"` made its one transport for that section and cannot set up
/// another ("Failed to setup RTCP mux"). It stays in the group, `a=inactive`, carrying the
/// transport; every other refused section gets port 0 and leaves the group (RFC 8843).
pub fn finish_answer(summary: &OfferSummary, offer: &str, answer: &str) -> String {
    let eol = if answer.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let tag = offer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=group:BUNDLE "))
        .and_then(|g| g.split_whitespace().next())
        .map(str::to_owned);
    let (_, offered) = split_sections(offer);
    let (session, mut sections) = split_sections(answer);
    let refused = |mid: &str| summary.refused.iter().any(|r| r.mid == mid);
    let used = |mid: &str| {
        [&summary.audio, &summary.video]
            .into_iter()
            .flatten()
            .any(|s| s.mid.as_deref() == Some(mid))
            || summary.data_channel.as_deref() == Some(mid)
    };
    // The ICE and DTLS attributes of the first section that carries media.
    let transport: Vec<String> = sections
        .iter()
        .find(|s| section_mid(s).is_some_and(used) && !port_zero(s))
        .map(|s| {
            s.iter()
                .filter(|l| {
                    [
                        "a=ice-ufrag:",
                        "a=ice-pwd:",
                        "a=ice-options:",
                        "a=fingerprint:",
                        "a=setup:",
                    ]
                    .iter()
                    .any(|p| l.starts_with(p))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut moved: Vec<String> = Vec::new();
    for s in sections.iter_mut() {
        let Some(mid) = section_mid(s).map(str::to_owned) else {
            continue;
        };
        if !(refused(&mid) || (port_zero(s) && !used(&mid))) {
            continue;
        }
        let candidates: Vec<String> = s
            .iter()
            .filter(|l| l.starts_with("a=candidate:") || *l == "a=end-of-candidates")
            .cloned()
            .collect();
        let offer_section = offered
            .iter()
            .find(|o| section_mid(o) == Some(mid.as_str()));
        let m_line = offer_section
            .and_then(|o| o.first())
            .unwrap_or(&s[0])
            .clone();
        let mut m = m_line.trim_start_matches("m=").split_whitespace();
        let media = m.next().unwrap_or("audio").to_owned();
        let _port = m.next();
        let proto = m.next().unwrap_or("UDP/TLS/RTP/SAVPF").to_owned();
        let format = m.next().unwrap_or("0").to_owned();
        let mut rebuilt = Vec::new();
        if tag.as_deref() == Some(mid.as_str()) {
            rebuilt.push(format!("m={media} 9 {proto} {format}"));
            rebuilt.push("c=IN IP4 0.0.0.0".to_owned());
            rebuilt.extend(transport.iter().cloned());
            rebuilt.push(format!("a=mid:{mid}"));
            rebuilt.push("a=inactive".to_owned());
            if media == "audio" || media == "video" {
                rebuilt.push("a=rtcp-mux".to_owned());
                let rtpmap = format!("a=rtpmap:{format} ");
                if let Some(l) =
                    offer_section.and_then(|o| o.iter().find(|l| l.starts_with(&rtpmap)))
                {
                    rebuilt.push(l.clone());
                } else if let Ok(pt) = format.parse::<u8>()
                    && let Some((_, map)) = STATIC_PAYLOAD_TYPES.iter().find(|(p, _)| *p == pt)
                {
                    rebuilt.push(format!("{rtpmap}{map}"));
                }
            } else if let Some(o) = offer_section {
                rebuilt.extend(o.iter().filter(|l| l.starts_with("a=sctp-port:")).cloned());
            }
            rebuilt.extend(candidates);
        } else {
            rebuilt.push(format!("m={media} 0 {proto} {format}"));
            rebuilt.push("c=IN IP4 0.0.0.0".to_owned());
            rebuilt.push(format!("a=mid:{mid}"));
            moved.extend(candidates);
        }
        *s = rebuilt;
    }
    // Candidates of sections now without a transport go to the first that has one.
    if !moved.is_empty()
        && let Some(s) = sections.iter_mut().find(|s| !port_zero(s))
    {
        s.retain(|l| !l.starts_with("a=candidate:") && l != "a=end-of-candidates");
        s.extend(moved);
    }
    let bundle: Vec<&str> = sections
        .iter()
        .filter(|s| !port_zero(s))
        .filter_map(|s| section_mid(s))
        .collect();
    let mut out = String::with_capacity(answer.len());
    for l in &session {
        if l.starts_with("a=group:BUNDLE") {
            if !bundle.is_empty() {
                out.push_str(&format!("a=group:BUNDLE {}{eol}", bundle.join(" ")));
            }
        } else {
            out.push_str(l);
            out.push_str(eol);
        }
    }
    for l in sections.iter().flatten() {
        out.push_str(l);
        out.push_str(eol);
    }
    out
}

fn split_sections(sdp: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut session = Vec::new();
    let mut sections: Vec<Vec<String>> = Vec::new();
    for l in sdp.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if l.starts_with("m=") {
            sections.push(vec![l.to_owned()]);
        } else if let Some(s) = sections.last_mut() {
            s.push(l.to_owned());
        } else {
            session.push(l.to_owned());
        }
    }
    (session, sections)
}

fn section_mid(section: &[String]) -> Option<&str> {
    section
        .iter()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .map(str::trim)
}

fn port_zero(section: &[String]) -> bool {
    section
        .first()
        .and_then(|m| m.split_whitespace().nth(1))
        .is_some_and(|p| p == "0")
}

/// Moves the candidates out of an answer for trickle ICE: the SDP without `a=candidate` and
/// `a=end-of-candidates` lines, and each candidate with the `mid` and index of its m-section.
pub fn take_candidates(sdp: &str) -> (String, Vec<crate::signal::CandidateInit>) {
    // Each m-section's mid, wherever in the section `a=mid` appears.
    let mut mids: Vec<Option<String>> = Vec::new();
    for line in sdp.lines() {
        if line.starts_with("m=") {
            mids.push(None);
        } else if let (Some(mid), Some(last)) = (line.strip_prefix("a=mid:"), mids.last_mut()) {
            *last = Some(mid.trim().to_owned());
        }
    }
    let mut out = String::with_capacity(sdp.len());
    let mut candidates = Vec::new();
    let mut section: Option<usize> = None;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.starts_with("m=") {
            section = Some(section.map_or(0, |s| s + 1));
        }
        if let Some(c) = bare.strip_prefix("a=") {
            if c.starts_with("candidate:") {
                candidates.push(crate::signal::CandidateInit {
                    candidate: c.to_owned(),
                    sdp_mid: section.and_then(|i| mids.get(i).cloned().flatten()),
                    sdp_mline_index: section.map(|i| i as u16),
                });
                continue;
            }
            if c == "end-of-candidates" {
                continue;
            }
        }
        out.push_str(line);
    }
    (out, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROWSER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 102 127\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendrecv\r\n\
a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:127 H264/90000\r\na=fmtp:127 packetization-mode=0;profile-level-id=42e01f\r\n";

    #[test]
    fn reads_a_browser_offer() {
        let s = parse_offer(BROWSER).unwrap();
        assert!(s.publishes_audio() && s.receives_audio());
        assert!(s.publishes_video() && s.receives_video());
        assert_eq!(
            s.receivable_video_codecs(),
            vec![VideoCodec::Vp8, VideoCodec::H264]
        );
    }

    #[test]
    fn directions_per_section_and_session() {
        let recvonly = BROWSER.replace("a=sendrecv", "a=recvonly");
        let s = parse_offer(&recvonly).unwrap();
        assert!(!s.publishes_audio() && s.receives_audio() && !s.publishes_video());

        let session_level = BROWSER
            .replace("a=sendrecv\r\n", "")
            .replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        let s = parse_offer(&session_level).unwrap();
        assert!(s.publishes_video() && !s.receives_video());
    }

    #[test]
    fn h264_needs_packetization_mode_1() {
        let only_mode0 = BROWSER
            .replace("packetization-mode=1;", "packetization-mode=0;")
            .replace(" 96 102 127", " 102 127")
            .replace("a=rtpmap:96 VP8/90000\r\n", "");
        let s = parse_offer(&only_mode0).unwrap();
        assert!(s.video.is_none(), "mode-0 H.264 alone is not usable");
        assert!(s.audio.is_some());
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse_offer(""), Err(OfferError::NotSdp));
        assert_eq!(parse_offer("hello"), Err(OfferError::NotSdp));
        assert_eq!(parse_offer("v=0\r\ns=-\r\n"), Err(OfferError::NoMedia));
        assert!(matches!(
            parse_offer("v=0\r\nm=video\r\n"),
            Err(OfferError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            parse_offer("v=0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:x VP8/90000\r\n"),
            Err(OfferError::Malformed { line: 3, .. })
        ));
        assert!(matches!(
            parse_offer("v=0\r\nnonsense\r\n"),
            Err(OfferError::Malformed { line: 2, .. })
        ));
        let g722 = "v=0\r\nm=audio 9 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n";
        assert_eq!(parse_offer(g722), Err(OfferError::NoSupportedCodec));
    }

    #[test]
    fn rejected_and_foreign_sections_are_skipped() {
        let with_data = BROWSER.replace(
            "m=audio 9",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sendrecv\r\nm=audio 9",
        );
        assert!(parse_offer(&with_data).unwrap().audio.is_some());
        let rejected_video = BROWSER.replace("m=video 9", "m=video 0");
        assert!(parse_offer(&rejected_video).unwrap().video.is_none());
        let bundle_only = BROWSER
            .replace("m=video 9", "m=video 0")
            .replace("a=mid:1", "a=mid:1\r\na=bundle-only");
        assert!(parse_offer(&bundle_only).unwrap().video.is_some());
    }

    #[test]
    fn never_panics_on_prefixes() {
        for end in 0..BROWSER.len() {
            let _ = parse_offer(&BROWSER[..end]);
        }
    }

    #[test]
    fn send_codec_choice() {
        use VideoCodec::*;
        let both = [Vp8, H264];
        assert_eq!(choose_send_codec(&[H264, Vp8], &[], &both), Some(Vp8));
        assert_eq!(choose_send_codec(&[H264, Vp8], &[H264], &both), Some(H264));
        assert_eq!(choose_send_codec(&[H264], &[Vp8], &both), Some(H264));
        assert_eq!(choose_send_codec(&[], &[Vp8], &both), None);
        assert_eq!(
            choose_send_codec(&[Vp8, H264], &[], &[H264, Vp8]),
            Some(H264)
        );
        assert_eq!(choose_send_codec(&[H264], &[], &[Vp8]), None, "not allowed");
        assert_eq!(choose_send_codec(&[Vp8, H264], &[H264], &[Vp8]), Some(Vp8));
    }
    #[test]
    fn candidates_move_out_of_the_answer_with_their_section() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=candidate:1 1 udp 2130706431 127.0.0.1 20000 typ host\r\n\
                   a=end-of-candidates\r\na=mid:0\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
                   a=candidate:2 1 udp 2130706431 127.0.0.1 20001 typ host\r\n";
        let (rest, c) = take_candidates(sdp);
        assert!(!rest.contains("candidate"), "{rest}");
        assert!(rest.contains("a=mid:0\r\n") && rest.contains("m=video"));
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0].candidate,
            "candidate:1 1 udp 2130706431 127.0.0.1 20000 typ host"
        );
        assert_eq!(
            (c[0].sdp_mid.as_deref(), c[0].sdp_mline_index),
            (Some("0"), Some(0))
        );
        assert_eq!(
            (c[1].sdp_mid.as_deref(), c[1].sdp_mline_index),
            (Some("1"), Some(1))
        );
    }

    const G722_FIRST: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 9\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n\
a=rtpmap:9 G722/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendrecv\r\na=rtcp-mux\r\n\
a=rtpmap:96 VP8/90000\r\n";

    /// What webrtc-rs answers to [`G722_FIRST`]: the audio section rejected, yet holding the
    /// candidates, and left out of the group.
    const RTC_ANSWER: &str = "v=0\r\no=- 9 9 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=fingerprint:sha-256 AA:BB\r\na=group:BUNDLE 1\r\n\
m=audio 0 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 20000 typ host\r\na=end-of-candidates\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=setup:active\r\na=mid:1\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:secretsecret\r\na=rtcp-mux\r\na=sendrecv\r\na=rtpmap:96 VP8/90000\r\n";

    fn section<'a>(sdp: &'a str, mid: &str) -> Vec<&'a str> {
        let sections: Vec<&str> = sdp.split("m=").skip(1).collect();
        sections
            .into_iter()
            .find(|s| s.contains(&format!("a=mid:{mid}\r\n")))
            .unwrap_or_else(|| panic!("no mid {mid} in {sdp}"))
            .lines()
            .collect()
    }

    #[test]
    fn a_refused_bundle_tag_stays_bundled_and_inactive() {
        let s = parse_offer(G722_FIRST).unwrap();
        assert!(s.audio.is_none() && s.video.is_some());
        assert_eq!(s.refused.len(), 1);
        assert_eq!(s.refused[0].mid, "0");
        assert_eq!(s.refused[0].kind, "audio");
        assert_eq!(s.refused[0].codecs, vec!["G722/8000".to_owned()]);
        let a = finish_answer(&s, G722_FIRST, RTC_ANSWER);
        assert!(a.contains("a=group:BUNDLE 0 1\r\n"), "{a}");
        let audio = section(&a, "0");
        assert_eq!(audio[0], "audio 9 UDP/TLS/RTP/SAVPF 9", "{a}");
        for want in [
            "a=inactive",
            "a=rtcp-mux",
            "a=rtpmap:9 G722/8000",
            "a=ice-ufrag:abcd",
            "a=setup:active",
        ] {
            assert!(audio.contains(&want), "{want} missing: {a}");
        }
        // The transport's candidates stay in the tag, and the video section is untouched.
        assert!(audio.iter().any(|l| l.starts_with("a=candidate:1 ")), "{a}");
        assert!(section(&a, "1").contains(&"a=sendrecv"));
        let (_, c) = take_candidates(&a);
        assert_eq!(c[0].sdp_mid.as_deref(), Some("0"));
    }

    #[test]
    fn other_refused_sections_get_port_zero_and_leave_the_group() {
        // Video first, then G.722 audio and a second video section: both refused.
        let offer = "v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 9\r\na=mid:1\r\na=rtpmap:9 G722/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:2\r\na=rtpmap:97 VP8/90000\r\n";
        let s = parse_offer(offer).unwrap();
        let mids: Vec<&str> = s.refused.iter().map(|r| r.mid.as_str()).collect();
        assert_eq!(mids, ["1", "2"]);
        let answer = "v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendrecv\r\n\
a=candidate:1 1 udp 1 127.0.0.1 20000 typ host\r\n\
m=audio 0 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:2\r\na=sendrecv\r\na=rtpmap:97 VP8/90000\r\n";
        let a = finish_answer(&s, offer, answer);
        assert!(a.contains("a=group:BUNDLE 0\r\n"), "{a}");
        assert_eq!(section(&a, "1")[0], "audio 0 UDP/TLS/RTP/SAVPF 9");
        assert_eq!(section(&a, "2")[0], "video 0 UDP/TLS/RTP/SAVPF 97");
        assert!(!section(&a, "2").contains(&"a=sendrecv"), "{a}");
        assert!(
            section(&a, "0")
                .iter()
                .any(|l| l.starts_with("a=candidate"))
        );
    }

    #[test]
    fn candidates_leave_a_rejected_first_section_without_bundle() {
        let offer = G722_FIRST.replace("a=group:BUNDLE 0 1\r\n", "");
        let s = parse_offer(&offer).unwrap();
        let a = finish_answer(&s, &offer, RTC_ANSWER);
        assert_eq!(section(&a, "0")[0], "audio 0 UDP/TLS/RTP/SAVPF 9");
        assert!(
            !section(&a, "0").iter().any(|l| l.contains("candidate")),
            "{a}"
        );
        assert!(
            section(&a, "1")
                .iter()
                .any(|l| l.starts_with("a=candidate:1"))
        );
        assert!(section(&a, "1").contains(&"a=end-of-candidates"));
    }

    #[test]
    fn an_answer_with_nothing_refused_is_unchanged_but_for_line_ends() {
        let s = parse_offer(BROWSER).unwrap();
        assert!(s.refused.is_empty());
        let answer = BROWSER.replace("a=sendrecv", "a=sendrecv\r\na=setup:active");
        assert_eq!(finish_answer(&s, BROWSER, &answer), answer);
    }

    #[test]
    fn g711_is_taken_and_static_payload_types_need_no_rtpmap() {
        let sip = "v=0\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 0 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n";
        let s = parse_offer(sip).unwrap();
        let audio = s.audio.as_ref().unwrap();
        assert_eq!(audio.audio_codecs(), [AudioCodec::Pcma, AudioCodec::Pcmu]);
        assert_eq!(s.audio_send_codec(), Some(AudioCodec::Pcma));
        let completed = complete_static_rtpmaps(sip);
        assert!(
            completed.contains("a=rtpmap:8 PCMA/8000\r\n"),
            "{completed}"
        );
        assert!(
            completed.contains("a=rtpmap:0 PCMU/8000\r\n"),
            "{completed}"
        );
        assert_eq!(completed.matches("a=rtpmap:101").count(), 1);
        // Opus wins whenever it is offered; a browser's offer is left alone.
        assert_eq!(
            parse_offer(BROWSER).unwrap().audio_send_codec(),
            Some(AudioCodec::Opus)
        );
        assert_eq!(complete_static_rtpmaps(BROWSER), BROWSER);
    }

    #[test]
    fn vp9_profile_0_and_h264_main_and_high_are_taken() {
        let video = |codecs: &str| {
            let offer = format!(
                "v=0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 100\r\na=mid:0\r\n{codecs}"
            );
            parse_offer(&offer)
                .ok()
                .and_then(|s| s.video)
                .map(|v| v.video_codecs())
                .unwrap_or_default()
        };
        use VideoCodec::*;
        assert_eq!(
            video("a=rtpmap:100 VP9/90000\r\n"),
            [Vp9],
            "Firefox: no profile-id"
        );
        assert_eq!(
            video("a=rtpmap:100 VP9/90000\r\na=fmtp:100 profile-id=0\r\n"),
            [Vp9]
        );
        assert!(video("a=rtpmap:100 VP9/90000\r\na=fmtp:100 profile-id=2\r\n").is_empty());
        for (fmtp, taken) in [
            ("packetization-mode=1;profile-level-id=42e01f", true),
            ("packetization-mode=1;profile-level-id=4d001f", true),
            ("packetization-mode=1;profile-level-id=640c1f", true),
            ("packetization-mode=1;profile-level-id=64001F", true),
            ("packetization-mode=1", true),
            ("packetization-mode=1;profile-level-id=f4001f", false),
            ("packetization-mode=0;profile-level-id=4d001f", false),
        ] {
            let v = video(&format!("a=rtpmap:100 H264/90000\r\na=fmtp:100 {fmtp}\r\n"));
            assert_eq!(v == [H264], taken, "{fmtp}");
        }
    }

    #[test]
    fn a_data_channel_section_is_noted() {
        let with_data = BROWSER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2")
            + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\na=sctp-port:5000\r\n";
        let s = parse_offer(&with_data).unwrap();
        assert_eq!(s.data_channel.as_deref(), Some("2"));
        assert!(s.refused.is_empty());
        assert_eq!(parse_offer(BROWSER).unwrap().data_channel, None);
    }
}
