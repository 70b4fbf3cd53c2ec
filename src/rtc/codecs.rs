//! The codecs Mixdown negotiates (one media engine for every peer connection) and a
//! sample-writing track for webrtc-rs clients (the load generator and the tests use it).

use super::{RtcError, TrackKind};
use crate::media::VideoCodec;
use ::rtc::media_stream::MediaStreamTrack;
use ::rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
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
/// packetization-mode 1), with NACK, PLI and FIR feedback.
pub fn video_codec_params(codec: VideoCodec) -> RTCRtpCodec {
    let (mime, fmtp) = match codec {
        VideoCodec::Vp8 => (MIME_TYPE_VP8, ""),
        VideoCodec::H264 => (
            MIME_TYPE_H264,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
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
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
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
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_params(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )
    .map_err(err)?;
    let mut baseline = video_codec_params(VideoCodec::H264);
    baseline.sdp_fmtp_line =
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f".to_owned();
    for (pt, codec) in [
        (96, video_codec_params(VideoCodec::Vp8)),
        (102, video_codec_params(VideoCodec::H264)),
        (108, baseline),
    ] {
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
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_OPUS) {
        Some(TrackKind::Audio)
    } else {
        None
    }
}
