//! Mixdown's load generator and benchmark harness, and the WebRTC client the integration
//! tests share with it: synthetic participants that join over WHIP/WHEP like any client.

pub mod client;
pub mod cluster;
pub mod flood;
pub mod janus;
pub mod measure;
pub mod media;
pub mod netns;
pub mod received;
pub mod report;
pub mod run;
pub mod transport;
pub mod weak;
