//! The transport plane: one webrtc-rs peer connection per participant or viewer. The only
//! place that imports `webrtc` / `rtc`. It answers offers ([`PeerFactory::answer`]), pushes
//! received RTP into the sinks the room gives it, writes the room's encoded frames to the peer,
//! and reports what happens ([`SessionEvent`]) without ever deciding anything itself.

mod candidates;
mod keyframe_interceptor;
mod ports;
mod session;

pub use candidates::rewrite_candidates;
pub use ports::{PortLease, PortPool};
pub use session::{
    PeerSession, SessionEvent, SessionMedia, TrackKind, opus_params, sample_track,
    video_codec_params,
};

use crate::config::{Config, IceServer};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Attempts to bind a port before giving up (a port can be taken by another program).
const BIND_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("no free media port in {min}..={max}")]
    NoPort { min: u16, max: u16 },
    #[error("could not bind a media socket on {ip} after {BIND_ATTEMPTS} ports: {last}")]
    Bind { ip: IpAddr, last: String },
    #[error("the offer was refused: {0}")]
    Offer(String),
    #[error("could not negotiate: {0}")]
    Negotiation(String),
    #[error("ICE gathering did not complete")]
    Gathering,
    #[error("the candidate was refused: {0}")]
    Candidate(String),
}

#[derive(Debug, Clone)]
pub struct RtcSettings {
    pub bind_ip: IpAddr,
    pub public_ip: Option<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
    pub ice_servers: Vec<IceServer>,
    pub ice_timeout: Duration,
}

impl RtcSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            bind_ip: c.server.host,
            public_ip: c.rtc.public_ip,
            port_min: c.rtc.port_min,
            port_max: c.rtc.port_max,
            ice_servers: c.rtc.ice_servers.clone(),
            ice_timeout: Duration::from_secs(c.rtc.ice_timeout_s as u64),
        }
    }
}

/// Builds peer connections; shared by all rooms (it owns the port pool).
#[derive(Clone)]
pub struct PeerFactory {
    settings: Arc<RtcSettings>,
    ports: Arc<PortPool>,
}

impl PeerFactory {
    pub fn new(settings: RtcSettings) -> Self {
        let ports = PortPool::new(settings.port_min, settings.port_max);
        Self {
            settings: Arc::new(settings),
            ports,
        }
    }

    /// Media ports currently held by live peer connections.
    pub fn ports_in_use(&self) -> usize {
        self.ports.in_use()
    }
}
