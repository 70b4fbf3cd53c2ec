//! Mixdown: a WebRTC MCU. Every participant of a room is decoded, composed into one picture and
//! one audio mix, re-encoded once, and sent back as a single downstream.
//!
//! Three planes talk through typed messages:
//! - control ([`http`], [`room`]): rooms, participants, layout, signalling;
//! - transport ([`rtc`]): one webrtc-rs peer connection per participant or viewer;
//! - media ([`mixer`]): the GStreamer composite pipeline and the audio mixer.
//!
//! [`media`] and [`sdp`] hold the plain types and pure parsing the planes share.

pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod limits;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod mixer;
pub mod output;
pub mod picture;
pub mod room;
pub mod rtc;
pub mod sdp;
pub mod signal;
pub mod tls;
pub mod turn;
