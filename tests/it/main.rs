//! The one integration-test binary (linking GStreamer and webrtc into several is slow).

mod bench_smoke;
mod browser;
mod cluster;
mod codecs;
mod common;
mod container;
mod deploy;
mod e2e;
mod firefox;
mod http_api;
mod large_rooms;
mod latency;
mod outputs;
mod security;
mod signalling;
mod transport;
mod weak_links;
mod webapp;
