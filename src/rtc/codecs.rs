//! The codecs Mixdown negotiates (one media engine for every peer connection) and a
//! sample-writing track for webrtc-rs clients (the load generator and the tests use it).

use super::{RtcError, TrackKind};
use crate::media::{AudioCodec, VideoCodec};
use ::rtc::media_stream::MediaStreamTrack;
use ::rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_PCMA, MIME_TYPE_PCMU, MIME_TYPE_VP8, MIME_TYPE_VP9,
    MediaEngine,
};
use ::rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use std::time::Instant;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;

fn rtcp_feedback() -> Vec<RTCPFeedback> {
    // goog-remb: publishers take the server's REMB as a ceiling (it asks hidden ones for a
    // trickle and visible ones for what their tile needs).
    [
        ("nack", ""),
        ("nack", "pli"),
        ("ccm", "fir"),
        ("goog-remb", ""),
    ]
    .into_iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    })
    .collect()
}

/// The codec parameters Mixdown negotiates for `codec` (H.264: constrained baseline,
/// packetization-mode 1; VP9: profile 0), with NACK, PLI and FIR feedback.
pub fn video_codec_params(codec: VideoCodec) -> RTCRtpCodec {
    let (mime, fmtp) = match codec {
        VideoCodec::Vp8 => (MIME_TYPE_VP8, ""),
        VideoCodec::H264 => (
            MIME_TYPE_H264,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
        VideoCodec::Vp9 => (MIME_TYPE_VP9, "profile-id=0"),
    };
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: rtcp_feedback(),
    }
}

/// Opus at 48 kHz, stereo-capable, with in-band FEC, as browsers offer it.
pub fn opus_params() -> RTCRtpCodec {
    audio_codec_params(AudioCodec::Opus)
}

/// The codec parameters Mixdown negotiates for `codec` (Opus as browsers offer it; G.711 at
/// 8 kHz, mono).
pub fn audio_codec_params(codec: AudioCodec) -> RTCRtpCodec {
    let (mime, channels, fmtp) = match codec {
        AudioCodec::Opus => (MIME_TYPE_OPUS, 2, "minptime=10;useinbandfec=1"),
        AudioCodec::Pcmu => (MIME_TYPE_PCMU, 0, ""),
        AudioCodec::Pcma => (MIME_TYPE_PCMA, 0, ""),
    };
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: codec.clock_rate(),
        channels,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: vec![],
    }
}

/// RFC 6464: the sender's audio level in every audio packet (browsers send it when it is
/// negotiated). The mixer chooses its speakers from it without decoding anyone.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

pub fn media_engine() -> Result<MediaEngine, RtcError> {
    let mut m = MediaEngine::default();
    let err = |e: ::rtc::shared::error::Error| RtcError::Negotiation(e.to_string());
    m.register_header_extension(
        ::rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )
    .map_err(err)?;
    for (pt, codec) in [
        (111, AudioCodec::Opus),
        (0, AudioCodec::Pcmu),
        (8, AudioCodec::Pcma),
    ] {
        m.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: audio_codec_params(codec),
                payload_type: pt,
            },
            RtpCodecKind::Audio,
        )
        .map_err(err)?;
    }
    let mut video = vec![
        (96, video_codec_params(VideoCodec::Vp8)),
        (98, video_codec_params(VideoCodec::Vp9)),
    ];
    for (pt, profile) in [102u8, 108, 123, 125, 127]
        .into_iter()
        .zip(crate::sdp::H264_PROFILES)
    {
        let mut h264 = video_codec_params(VideoCodec::H264);
        h264.sdp_fmtp_line =
            format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}");
        video.push((pt, h264));
    }
    for (pt, codec) in video {
        m.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: codec,
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )
        .map_err(err)?;
    }
    Ok(m)
}

/// A sample-writing track of one random SSRC, in stream `stream`, named `{stream}-{label}`.
pub fn sample_track(
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    stream: &str,
    label: &str,
) -> Result<TrackLocalStaticSample, RtcError> {
    TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            stream.to_owned(),
            format!("{stream}-{label}"),
            format!("{stream}-{label}"),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(rand::random::<u32>() | 1),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        ),
    )
    .map_err(|e| RtcError::Negotiation(e.to_string()))
}

pub fn track_kind(mime: &str) -> Option<TrackKind> {
    if mime.eq_ignore_ascii_case(MIME_TYPE_VP8) {
        Some(TrackKind::Video(VideoCodec::Vp8))
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_H264) {
        Some(TrackKind::Video(VideoCodec::H264))
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_VP9) {
        Some(TrackKind::Video(VideoCodec::Vp9))
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_OPUS) {
        Some(TrackKind::Audio(AudioCodec::Opus))
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_PCMU) {
        Some(TrackKind::Audio(AudioCodec::Pcmu))
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_PCMA) {
        Some(TrackKind::Audio(AudioCodec::Pcma))
    } else {
        None
    }
}
