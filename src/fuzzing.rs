//! Fuzzing entry points (issue 14): one plain function per cargo-fuzz target in `fuzz/`
//! (`fuzz/fuzz_targets/<name>.rs` is a two-line call into the function of the same name). Each
//! takes arbitrary bytes and runs them through Mixdown's own parsers of network and operator
//! input: SDP offers, signalling JSON, the TOML configuration, URLs and names from the API,
//! and the datagram, RTP and RTCP reading of the transport. They must never panic on any
//! input: a panic here is a bug in the code they call (or a broken invariant asserted below).
//!
//! Text inputs are read with `String::from_utf8_lossy`: every real input is UTF-8 already
//! (HTTP bodies and WebSocket text frames are checked before parsing), and the replacement
//! characters give the fuzzer multi-byte characters to break byte slicing with.
//!
//! `cargo test --lib fuzzing` replays the committed corpora (`fuzz/corpus/<name>/`) and the
//! inputs of past crashes (`fuzz/regressions/<name>/`) through the same functions, on stable.
//! To add a target: a function here, its name in [`TARGETS`], `fuzz/fuzz_targets/<name>.rs`,
//! a `[[bin]]` in `fuzz/Cargo.toml` and a seed corpus in `fuzz/corpus/<name>/`.

use crate::media::VideoCodec;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A fuzz target: arbitrary bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// Every target, by the name of its cargo-fuzz binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("sdp_offer", sdp_offer),
    ("signal_json", signal_json),
    ("config", config),
    ("rtmp_url", rtmp_url),
    ("rtp", rtp),
    ("token", token),
];

const CODEC_SETS: [&[VideoCodec]; 4] = [
    &[],
    &[VideoCodec::Vp8],
    &[VideoCodec::H264],
    &[VideoCodec::Vp8, VideoCodec::H264],
];
const PREFERENCES: [&[VideoCodec]; 4] = [
    &[VideoCodec::Vp8, VideoCodec::H264],
    &[VideoCodec::H264, VideoCodec::Vp8],
    &[VideoCodec::Vp8],
    &[VideoCodec::H264],
];

/// An SDP offer as WHIP, WHEP and the WebSocket receive it: [`crate::sdp::parse_offer`], what
/// the control plane reads from its summary, the send-codec choice, and the transport's
/// candidate rewriting and limiting.
pub fn sdp_offer(data: &[u8]) {
    use crate::sdp::{choose_send_codec, parse_offer, take_candidates};
    let text = String::from_utf8_lossy(data);
    if let Ok(summary) = parse_offer(&text) {
        let _ = (
            summary.publishes_audio(),
            summary.publishes_video(),
            summary.receives_audio(),
        );
        let receivable = summary.receivable_video_codecs();
        assert!(receivable.is_empty() || summary.receives_video());
        // Only usable sections are kept.
        assert!(
            summary
                .audio
                .as_ref()
                .is_none_or(|a| !a.audio_codecs().is_empty())
        );
        assert_eq!(
            summary.audio_send_codec().is_some(),
            summary.receives_audio()
        );
        // The answer rewriting, with the offer standing in for webrtc-rs' answer.
        let finished = crate::sdp::finish_answer(&summary, &text, &text);
        for r in &summary.refused {
            assert!(finished.contains(&format!("a=mid:{}", r.mid)), "{finished}");
        }
        assert!(
            summary
                .video
                .as_ref()
                .is_none_or(|v| !v.video_codecs().is_empty())
        );
        for section in summary.audio.iter().chain(&summary.video) {
            let codecs = section.video_codecs();
            for (i, c) in codecs.iter().enumerate() {
                assert!(!codecs[..i].contains(c), "repeated codec {c}");
            }
            for c in &section.codecs {
                let _ = (c.video_codec(), c.audio_codec(), c.is_opus());
                let kind = if c.is_opus() { "audio" } else { "video" };
                let _ = crate::rtc::codecs::track_kind(&format!("{kind}/{}", c.name));
            }
        }
        for active in CODEC_SETS {
            for preference in PREFERENCES {
                if let Some(c) = choose_send_codec(&receivable, active, preference) {
                    assert!(receivable.contains(&c) && preference.contains(&c));
                }
            }
        }
    }
    let completed = crate::sdp::complete_static_rtpmaps(&text);
    assert!(completed.lines().count() >= text.lines().count());
    let max = crate::rtc::MAX_REMOTE_CANDIDATES;
    let (limited, kept) = crate::rtc::limit_candidates(&text, max);
    assert!(kept <= max);
    assert!(limited.len() <= text.len());
    let public = if data.len().is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))
    };
    let _ = crate::rtc::rewrite_candidates(&text, public);
    let (rest, candidates) = take_candidates(&text);
    assert!(!rest.lines().any(|l| l.starts_with("a=candidate:")));
    assert!(
        candidates
            .iter()
            .all(|c| c.candidate.starts_with("candidate:"))
    );
}

/// One WebSocket text message: [`crate::signal::parse`], the offer it may carry, and the
/// error the server would send back.
pub fn signal_json(data: &[u8]) {
    use crate::signal::{ClientMessage, MAX_CHAT_CHARS, ServerMessage, check_name, parse};
    let text = String::from_utf8_lossy(data);
    match parse(&text) {
        Ok(ClientMessage::Join { room, name, .. }) => {
            assert!(crate::ids::RoomId::parse(room.as_str()).is_ok());
            assert_eq!(
                check_name(&name).as_ref(),
                Ok(&name),
                "names are kept checked"
            );
        }
        Ok(ClientMessage::Offer { sdp }) => {
            let _ = crate::sdp::parse_offer(&sdp);
        }
        Ok(ClientMessage::Candidate(Some(c))) => {
            assert!(!c.candidate.is_empty() && c.candidate.len() <= 1024);
            assert!(!c.candidate.contains(['\r', '\n']));
        }
        Ok(ClientMessage::Chat { text }) => {
            assert!(text.chars().count() <= MAX_CHAT_CHARS);
        }
        Ok(ClientMessage::Mute { audio, video }) => assert!(audio.is_some() || video.is_some()),
        Ok(ClientMessage::Candidate(None) | ClientMessage::Leave) => {}
        Err(e) => {
            let _ = serde_json::to_string(&ServerMessage::from(e));
        }
    }
}

/// A configuration file: [`crate::config::Config::from_toml`] (parse, then `validate()`) and
/// the values the server derives from a valid one without touching the system.
pub fn config(data: &[u8]) {
    use crate::room::tiers::{Rung, TierChoice, link_ceiling_bps};
    let text = String::from_utf8_lossy(data);
    let Ok(c) = crate::config::Config::from_toml(&text, "fuzz") else {
        return;
    };
    c.validate().expect("a loaded configuration stays valid");
    let ladder = c.video.ladder();
    let _ = link_ceiling_bps(c.video.bitrate_kbps);
    let kbps: Vec<u32> = ladder.iter().map(|t| t.bitrate_kbps).collect();
    for top in 0..=ladder.len() {
        let choice = TierChoice::with_top(kbps.clone(), top);
        for i in 0..ladder.len() {
            let _ = choice.need(Rung::Tier(i));
        }
        let _ = choice.current();
    }
}

/// The key and secret the `token` target verifies against (its seeds are signed with them).
pub const TOKEN_KEY: &str = "fuzzkey";
pub const TOKEN_SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret!";

/// An access token as it arrives (an `Authorization` header value or a bare token): the
/// bearer split, the JWT checks and the grants' decisions. A token that verifies must carry
/// the key it was checked against, and a forged one (its payload re-signed by another secret)
/// must never verify.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let keys = [(TOKEN_KEY.to_owned(), TOKEN_SECRET.to_owned())];
    let auth = crate::auth::Auth::new(keys.iter().map(|(k, s)| (k, s)));
    let token = crate::auth::bearer(&text).unwrap_or(&text);
    // Within the seeds' validity, and far beyond it.
    for now in [1_800_000_000, u64::MAX / 2] {
        if let Ok(claims) = auth.verify(token, now) {
            assert_eq!(claims.iss, TOKEN_KEY);
            let grants = auth
                .grants(Some(token), now)
                .expect("a verified token has grants");
            for action in [
                crate::auth::Action::Join,
                crate::auth::Action::Publish,
                crate::auth::Action::Record,
                crate::auth::Action::Admin,
                crate::auth::Action::List,
            ] {
                let _ = grants.allow(&claims.video.room, action);
                let _ = grants.allow("other-room", action);
            }
            let forged = crate::auth::mint(&claims, "not-the-secret-not-the-secret-not-it");
            assert!(
                auth.verify(&forged, now).is_err(),
                "a forged token verified"
            );
        }
    }
    let _ = crate::auth::parse_duration(&text);
}

/// Strings from the HTTP API and the signalling: an RTMP destination (taken apart, checked
/// against the address policy, redacted and scrubbed for the logs), an `rtmp.allow` entry, a
/// recording name, a room name, a display name and a session id.
pub fn rtmp_url(data: &[u8]) {
    use crate::output::destination::{Policy, RtmpUrl, check_allow_prefix, redact, scrub};
    use std::net::SocketAddr;
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();
    let public = [SocketAddr::from(([8, 8, 8, 8], 1935))];
    let loopback = [SocketAddr::from(([127, 0, 0, 1], 1935))];
    match RtmpUrl::parse(s) {
        Ok(url) => {
            assert!(url.port != 0);
            assert!(url.path.is_empty() || url.path.starts_with('/'));
            let _ = url.lookup_target();
            let open = Policy::default();
            assert!(open.needs_addresses(s));
            assert_eq!(open.check(s, &public), Ok(()));
            assert!(open.check(s, &loopback).is_err());
            assert!(open.check(s, &[]).is_err());
        }
        Err(_) => {
            assert!(check_allow_prefix(s).is_err());
            assert!(Policy::default().check(s, &public).is_err());
        }
    }
    let _ = redact(s);
    let _ = scrub(&format!("could not connect to {s}: refused"), s);
    if check_allow_prefix(s).is_ok() {
        let listed = Policy::new(vec![s.to_owned()]);
        assert!(!listed.needs_addresses(s));
        assert_eq!(listed.check(s, &loopback), Ok(()));
    }
    if let Ok(name) = crate::output::spec::check_name(s) {
        assert!(!name.contains('/') && !name.starts_with('.'));
    }
    if let Ok(room) = crate::ids::RoomId::parse(s) {
        assert_eq!(room.as_str(), s);
    }
    if let Ok(name) = crate::signal::check_name(s) {
        assert!(name.chars().count() <= crate::signal::MAX_NAME_CHARS);
    }
    if let Some(id) = crate::ids::SessionId::parse(s) {
        assert_eq!(crate::ids::SessionId::parse(&id.to_string()), Some(id));
    }
    let _ = crate::output::spec::RecordFormat::parse(s);
}

/// Datagrams and media: the shared socket's demultiplexing and STUN username reading, RFC 4571
/// deframing (ICE-TCP), Mixdown's RTP header reader and the audio mixer's sequence tracking,
/// the video path's frame batching, the RFC 6464 audio level and the RTCP keyframe requests
/// and reports read from packets the `rtc` stack parsed, and VP8 payload cutting.
///
/// The whole input is one datagram; it is also read as an RFC 4571 byte stream (fed in chunks
/// whose size the first byte picks) whose packets go through the per-packet paths in order.
pub fn rtp(data: &[u8]) {
    datagram(data);

    let mut tracker = crate::mixer::dsp::SeqTracker::default();
    let mut batch = crate::mixer::batch::FrameBatch::default();
    let mut decoder = crate::rtc::tcp::FrameDecoder::default();
    let chunk = usize::from(data.first().copied().unwrap_or(0)).max(1);
    let (mut pushed, mut released) = (0usize, 0usize);
    for part in data.chunks(chunk) {
        decoder.extend(part);
        while let Some(packet) = decoder.next_packet() {
            datagram(&packet);
            let framed = crate::rtc::tcp::frame(&packet).expect("a deframed packet fits a frame");
            assert_eq!(&framed[2..], &packet[..]);
            if let Some(view) = crate::media::parse_rtp(&packet) {
                let _ = tracker.handle(view.sequence);
                pushed += 1;
                for group in batch.push(view.sequence, view.timestamp, view.marker) {
                    assert!(!group.is_empty());
                    assert!(group.len() <= crate::mixer::batch::MAX_FRAME_PACKETS);
                    released += group.len();
                }
            }
        }
    }
    assert!(released <= pushed);
}

fn datagram(d: &[u8]) {
    use crate::rtc::stun::{DatagramKind, classify, local_ufrag};
    use ::rtc::shared::marshal::Unmarshal;
    // As the router reads a datagram: the username only of what demultiplexes as STUN.
    let kind = classify(d);
    if kind == DatagramKind::Stun {
        assert!(d.len() >= 20);
        if let Some(ufrag) = local_ufrag(d) {
            assert!(!ufrag.contains(&b':'));
        }
    } else {
        let _ = local_ufrag(d);
    }

    let view = crate::media::parse_rtp(d);
    if let Some(v) = view {
        assert!(v.payload.len() + 12 <= d.len());
        let max = 16 + usize::from(v.sequence % 1200);
        let parts = crate::rtc::vp8::payloads(v.payload, v.sequence, max);
        let back: usize = parts.iter().map(|p| p.len() - 4).sum();
        assert_eq!(back, v.payload.len());
        assert!(parts.iter().all(|p| p.len() <= max));
    }

    // What webrtc-rs hands the driver: a parsed RTP packet (its audio level read) and
    // compound RTCP (keyframe requests and reports picked out).
    if let Ok(packet) = ::rtc::rtp::Packet::unmarshal(&mut &d[..]) {
        if let Some(v) = view {
            assert_eq!(
                (v.sequence, v.timestamp, v.marker),
                (
                    packet.header.sequence_number,
                    packet.header.timestamp,
                    packet.header.marker
                )
            );
        }
        for id in packet.header.get_extension_ids().into_iter().chain([1]) {
            if let Some(level) = crate::rtc::driver::audio_level(&packet.header, Some(id)) {
                assert!(level <= 127);
            }
        }
        assert_eq!(crate::rtc::driver::audio_level(&packet.header, None), None);
    }
    if let Ok(packets) = ::rtc::rtcp::packet::unmarshal(&mut &d[..]) {
        for p in &packets {
            let request = crate::rtc::keyframe_interceptor::is_keyframe_request(p.as_ref());
            let forwarded = crate::rtc::keyframe_interceptor::is_for_application(p.as_ref());
            assert!(!request || forwarded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every file of `dir` (none if it does not exist), through `target`.
    fn replay(dir: &Path, target: Target) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut n = 0;
        for entry in entries {
            let path = entry.expect("readable directory").path();
            if !path.is_file() {
                continue;
            }
            let data = std::fs::read(&path).expect("readable corpus file");
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{} panics", path.display());
            n += 1;
        }
        n
    }

    /// The committed corpora and regression inputs of every target pass (`make fuzz` grows
    /// them; a missing corpus fails here).
    #[test]
    fn the_token_seeds_reach_the_verified_path() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/token");
        let keys = [(TOKEN_KEY.to_owned(), TOKEN_SECRET.to_owned())];
        let auth = crate::auth::Auth::new(keys.iter().map(|(k, s)| (k, s)));
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        // The valid seeds verify (so the target's checks on verified tokens run); the bad
        // ones do not.
        for good in ["seed-valid", "seed-admin-any-room", "seed-livekit-layout"] {
            assert!(auth.verify(&read(good), 1_800_000_000).is_ok(), "{good}");
        }
        for bad in [
            "seed-expired",
            "seed-alg-none",
            "seed-bad-signature",
            "seed-key-as-secret",
        ] {
            assert!(auth.verify(&read(bad), 1_800_000_000).is_err(), "{bad}");
        }
    }

    #[test]
    fn fuzzing_corpora_and_regressions_replay() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        for (name, target) in TARGETS {
            let corpus = replay(&root.join("corpus").join(name), *target);
            assert!(corpus > 0, "fuzz/corpus/{name}/ is missing or empty");
            replay(&root.join("regressions").join(name), *target);
        }
    }

    #[test]
    fn fuzzing_targets_take_empty_and_odd_inputs() {
        for (_, target) in TARGETS {
            for input in [&b""[..], b"\0", b"\xff\xfe", b"v=0\r\n", b"{}", b"\x80"] {
                target(input);
            }
        }
    }
}
