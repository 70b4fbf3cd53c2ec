//! The transport plane: every peer connection of the process on one UDP port. The only place
//! that imports `webrtc` / `rtc`. It binds the shared media sockets, routes each datagram to
//! its session ([`router`]), drives one sans-IO `rtc` peer connection per participant or
//! viewer ([`driver`]), pushes received RTP into the sinks the room gives it, writes the
//! room's encoded frames to the peer, and reports what happens ([`SessionEvent`]) without
//! ever deciding anything itself.
//!
//! Why sans-IO: the async `webrtc` crate binds a socket per connection and has no UDP mux;
//! its core crate `rtc` takes datagrams and gives datagrams, so one socket loop can serve
//! every connection.

mod candidates;
pub(crate) mod codecs;
pub(crate) mod driver;
pub mod estimate;
pub mod keyframe_interceptor;
mod retransmit;
mod router;
mod session;
pub(crate) mod stun;
pub(crate) mod tcp;
mod udp;
pub(crate) mod vp8;
pub mod vp9;

pub use candidates::{limit_candidates, rewrite_candidates};
pub use codecs::{
    AUDIO_LEVEL_URI, audio_codec_params, opus_params, sample_track, video_codec_params,
};
pub use router::TransportStats;
pub use session::{
    DATA_CHANNEL_LABEL, DataIn, DataPipe, MAX_REMOTE_CANDIDATES, PeerSession, SessionEvent,
    SessionMedia, TrackKind,
};

use crate::config::Config;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("cannot bind the media port {port} on {ip}: {reason}")]
    Bind {
        ip: IpAddr,
        port: u16,
        reason: String,
    },
    #[error("no address to bind media on (no interface is up)")]
    NoAddress,
    #[error("the offer was refused: {0}")]
    Offer(String),
    #[error("could not negotiate: {0}")]
    Negotiation(String),
    #[error("the answer has no local description")]
    Gathering,
    #[error("the candidate was refused: {0}")]
    Candidate(String),
}

#[derive(Debug, Clone)]
pub struct RtcSettings {
    /// Datagrams one session may send per second (`limits.packets_per_second`).
    pub packets_per_second: u32,
    pub bind_ip: IpAddr,
    pub public_ip: Option<IpAddr>,
    pub udp_port: u16,
    /// Sockets per address on the port (`SO_REUSEPORT`), each with its own reader.
    pub udp_shards: usize,
    pub ice_timeout: Duration,
    /// The most a receiver's link is credited with (bit/s): what its top tier needs with
    /// room to spare. Receivers start there.
    pub link_ceiling_bps: f64,
}

impl RtcSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            bind_ip: c.server.host,
            public_ip: c.rtc.public_ip,
            udp_port: c.rtc.udp_port,
            udp_shards: c.rtc.udp_shards(),
            ice_timeout: Duration::from_secs(c.rtc.ice_timeout_s as u64),
            link_ceiling_bps: crate::room::tiers::link_ceiling_bps(c.video.bitrate_kbps),
            packets_per_second: c.limits.packets_per_second,
        }
    }
}

/// The shared sockets, their readers, the ICE-TCP listeners and the routing table. Dropping
/// the last reference stops the readers and closes the sockets.
pub(crate) struct Transport {
    sockets: udp::Sockets,
    /// The ICE-TCP passive candidates' addresses (the media addresses, TCP).
    tcp_addrs: Vec<SocketAddr>,
    tcp: Arc<tcp::TcpConns>,
    router: Arc<router::Router>,
    readers: Vec<tokio::task::AbortHandle>,
}

impl Drop for Transport {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// Builds peer connections; shared by all rooms (it owns the media sockets).
#[derive(Clone)]
pub struct PeerFactory {
    settings: Arc<RtcSettings>,
    transport: Arc<Transport>,
}

impl PeerFactory {
    /// Binds the media port (on every interface address when the host is a wildcard) and
    /// starts the socket readers. Needs a tokio runtime.
    pub fn bind(settings: RtcSettings) -> Result<Self, RtcError> {
        let ips = if settings.bind_ip.is_unspecified() {
            udp::interface_ips(settings.bind_ip.is_ipv6())
        } else {
            vec![settings.bind_ip]
        };
        if ips.is_empty() {
            return Err(RtcError::NoAddress);
        }
        let shards = settings.udp_shards;
        let sockets =
            udp::Sockets::bind(&ips, settings.udp_port, shards).map_err(|e| RtcError::Bind {
                ip: settings.bind_ip,
                port: settings.udp_port,
                reason: e.to_string(),
            })?;
        let router = Arc::new(router::Router::default());
        let conns = Arc::new(tcp::TcpConns::default());
        let mut readers = sockets.spawn_readers(&router);
        let mut tcp_addrs = Vec::new();
        for a in sockets.addrs().collect::<Vec<_>>() {
            // ICE-TCP on the same port number, for clients whose network blocks UDP.
            let bind_err = |e: std::io::Error| RtcError::Bind {
                ip: a.ip(),
                port: a.port(),
                reason: format!("TCP: {e}"),
            };
            let std = std::net::TcpListener::bind(a).map_err(bind_err)?;
            std.set_nonblocking(true).map_err(bind_err)?;
            let listener = tokio::net::TcpListener::from_std(std).map_err(bind_err)?;
            tcp_addrs.push(a);
            readers.push(
                tokio::spawn(tcp::accept_loop(
                    listener,
                    Arc::clone(&router),
                    Arc::clone(&conns),
                ))
                .abort_handle(),
            );
            tracing::info!(addr = %a, shards, "media port bound (UDP, and TCP for ICE-TCP)");
        }
        Ok(Self {
            settings: Arc::new(settings),
            transport: Arc::new(Transport {
                sockets,
                tcp_addrs,
                tcp: conns,
                router,
                readers,
            }),
        })
    }

    /// The local addresses media is served on (one port).
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.transport.sockets.addrs().collect()
    }

    /// UDP sockets on the media port: addresses × shards.
    pub fn udp_sockets(&self) -> usize {
        self.transport.sockets.count()
    }

    /// Sessions registered on the media sockets and what the router did with datagrams.
    pub fn transport_stats(&self) -> TransportStats {
        self.transport.router.snapshot()
    }

    /// Peer connections still alive (their drivers have not ended).
    pub fn sessions_open(&self) -> usize {
        self.transport.router.snapshot().sessions
    }
}
