//! Placeholder: a GStreamer webrtcbin client (a WebRTC stack other than webrtc-rs).
