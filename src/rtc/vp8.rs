//! VP8 RTP payloads (RFC 7741) cut once per frame for every receiver of an encode. The picture
//! ID comes from the frame's number in its stream, so whichever receiver's driver cuts a frame
//! first, every receiver sees the same, increasing picture IDs (webrtc-rs' own payloader keeps
//! a counter, which cutting once per frame cannot share). Pure.

use bytes::{BufMut, Bytes, BytesMut};

/// Descriptor bytes: X|S, I, and the 15-bit picture ID (M set).
const DESCRIPTOR: usize = 4;

/// `frame` cut into payloads of at most `max` bytes, each with a descriptor carrying
/// `picture_id` (15 bits), the first marked as the start of the frame.
pub fn payloads(frame: &[u8], picture_id: u16, max: usize) -> Vec<Bytes> {
    let chunk = max.saturating_sub(DESCRIPTOR).max(1);
    let pid = picture_id & 0x7fff;
    frame
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let mut b = BytesMut::with_capacity(DESCRIPTOR + part.len());
            // X=1 (extension), S=1 on the first packet, PID=0.
            b.put_u8(if i == 0 { 0x90 } else { 0x80 });
            b.put_u8(0x80); // I=1: a picture ID follows
            b.put_u16(0x8000 | pid); // M=1: 15 bits
            b.extend_from_slice(part);
            b.freeze()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rtc::rtp::codec::vp8::Vp8Packet;
    use ::rtc::rtp::packetizer::Depacketizer;

    #[test]
    fn a_depacketizer_reads_back_the_frame_and_its_picture_id() {
        let frame: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        for pid in [0u16, 1, 127, 128, 0x7fff, 0x8001] {
            let parts = payloads(&frame, pid, 1188);
            assert_eq!(parts.len(), 3);
            let mut back = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                assert!(p.len() <= 1188);
                let mut d = Vp8Packet::default();
                back.extend_from_slice(&d.depacketize(p).unwrap());
                assert_eq!(d.picture_id, pid & 0x7fff);
                assert_eq!(d.s, u8::from(i == 0));
            }
            assert_eq!(back, frame);
        }
        assert!(payloads(&[], 1, 1188).is_empty());
    }
}
