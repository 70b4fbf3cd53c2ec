//! Pure reading of an SDP offer: which media it carries, in which direction, with which codecs.
//! The control plane uses it to reject an offer with a clear reason before any peer connection
//! exists, and to decide what a session publishes and receives. No webrtc-rs types here.

use crate::media::VideoCodec;

/// The codecs Mixdown accepts, as told to a client whose offer has none of them.
pub const ACCEPTED_CODECS: &str = "VP8, H264 (packetization-mode=1), opus";

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
            "H264" if fmtp_value(&self.fmtp, "packetization-mode") == Some("1") => {
                Some(VideoCodec::H264)
            }
            _ => None,
        }
    }

    pub fn is_opus(&self) -> bool {
        self.name == "OPUS" && self.clock_rate == 48000
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

    pub fn has_opus(&self) -> bool {
        self.codecs.iter().any(OfferedCodec::is_opus)
    }

    fn supported(&self) -> bool {
        match self.kind {
            MediaKind::Audio => self.has_opus(),
            MediaKind::Video => !self.video_codecs().is_empty(),
        }
    }
}

/// The usable media of an offer: the first audio and the first video section Mixdown supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSummary {
    pub audio: Option<MediaSection>,
    pub video: Option<MediaSection>,
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

/// Reads an offer. Accepts `\r\n` or `\n` line endings.
pub fn parse_offer(sdp: &str) -> Result<OfferSummary, OfferError> {
    let mut lines = sdp.lines().map(str::trim_end).enumerate().peekable();
    match lines.peek() {
        Some((_, l)) if *l == "v=0" => {}
        _ => return Err(OfferError::NotSdp),
    }
    let mut session_direction = Direction::SendRecv;
    // (kind, direction, codecs, (foreign kind, port zero))
    type Section = (
        MediaKind,
        Option<Direction>,
        Vec<OfferedCodec>,
        (bool, bool),
    );
    let mut sections: Vec<Section> = Vec::new();
    let mut any_media = false;
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
                any_media = true;
                let mut parts = value.split_whitespace();
                let (Some(media), Some(port), Some(_proto)) =
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
                let kind = match media {
                    "audio" => Some(MediaKind::Audio),
                    "video" => Some(MediaKind::Video),
                    _ => None,
                };
                // Sections of other kinds (application) are tracked as rejected audio so that the
                // attributes that follow do not attach to the previous section. Port 0 rejects
                // a section unless `a=bundle-only` follows (RFC 8843): max-bundle offerers
                // (webrtcbin, some WHIP clients) send every section but the first that way.
                sections.push((
                    kind.unwrap_or(MediaKind::Audio),
                    None,
                    Vec::new(),
                    (kind.is_none(), port == 0),
                ));
            }
            "a" => {
                let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                if let Some(d) = Direction::from_attribute(name) {
                    match sections.last_mut() {
                        Some(s) => s.1 = Some(d),
                        None => session_direction = d,
                    }
                    continue;
                }
                let Some(section) = sections.last_mut() else {
                    continue;
                };
                match name {
                    "bundle-only" => section.3.1 = false,
                    "rtpmap" => {
                        let codec = parse_rtpmap(arg).ok_or(OfferError::Malformed {
                            line: line_no,
                            reason: "a=rtpmap needs <pt> <name>/<clock>[/<channels>]",
                        })?;
                        section.2.push(codec);
                    }
                    "fmtp" => {
                        let (pt, params) = arg.split_once(' ').unwrap_or((arg, ""));
                        let pt: u8 = pt.parse().map_err(|_| OfferError::Malformed {
                            line: line_no,
                            reason: "a=fmtp payload type is not a number",
                        })?;
                        if let Some(c) = section.2.iter_mut().find(|c| c.payload_type == pt) {
                            c.fmtp = params.trim().to_owned();
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !any_media {
        return Err(OfferError::NoMedia);
    }
    let mut summary = OfferSummary {
        audio: None,
        video: None,
    };
    for (kind, direction, codecs, (foreign, port_zero)) in sections {
        if foreign || port_zero {
            continue;
        }
        let section = MediaSection {
            kind,
            direction: direction.unwrap_or(session_direction),
            codecs,
        };
        if !section.supported() {
            continue;
        }
        let slot = match kind {
            MediaKind::Audio => &mut summary.audio,
            MediaKind::Video => &mut summary.video,
        };
        if slot.is_none() {
            *slot = Some(section);
        }
    }
    if summary.audio.is_none() && summary.video.is_none() {
        return Err(OfferError::NoSupportedCodec);
    }
    Ok(summary)
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
}
