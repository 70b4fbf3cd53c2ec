//! VP9 RTP payloads (RFC 9628) cut once per frame for every receiver of an encode, in
//! non-flexible mode with one layer: no layer indices, no reference list. Pure.
//!
//! Why not webrtc-rs' own `Vp9Payloader`: it never sets the P bit and starts its picture IDs
//! at a random number per payloader. libwebrtc takes a frame's type from the P bit and, with
//! no layer indices, its references from consecutive picture IDs (the frame before), so a
//! receiver would take every frame for a keyframe. Here P is clear only on keyframes and the
//! picture ID comes from the frame's number in its stream, the same whichever receiver's driver
//! cuts the frame first (as in [`super::vp8`]).

use bytes::{BufMut, Bytes, BytesMut};

/// Descriptor bytes on every packet: I|P|L|F|B|E|V|Z and the 15-bit picture ID (M set).
const DESCRIPTOR: usize = 3;

/// The scalability structure a keyframe's first packet carries: N_S|Y|G (one spatial layer,
/// its size, no picture group), then the width and the height.
const SS: usize = 5;

/// `frame` (one encoded VP9 frame) cut into payloads of at most `max` bytes, each with a
/// descriptor carrying `picture_id` (15 bits) and P set unless `keyframe`; B marks the first
/// payload, E the last. The first payload of a keyframe also carries the scalability structure
/// with `size` (width, height; see [`frame_size`]) when it is known. Each payload carries at
/// least one byte of the frame, so a `max` smaller than the descriptor is exceeded rather than
/// looping forever. An empty frame gives no payload.
pub fn payloads(
    frame: &[u8],
    picture_id: u16,
    keyframe: bool,
    size: Option<(u16, u16)>,
    max: usize,
) -> Vec<Bytes> {
    let pid = picture_id & 0x7fff;
    let ss = size.filter(|_| keyframe);
    let mut out = Vec::with_capacity(frame.len() / max.saturating_sub(DESCRIPTOR).max(1) + 1);
    let mut rest = frame;
    while !rest.is_empty() {
        let first = out.is_empty();
        let ss = ss.filter(|_| first);
        let header = DESCRIPTOR + if ss.is_some() { SS } else { 0 };
        let (part, tail) = rest.split_at(max.saturating_sub(header).clamp(1, rest.len()));
        rest = tail;
        // I=1 (a picture ID follows); L=0, F=0, Z=0.
        let mut b0 = 0x80;
        if !keyframe {
            b0 |= 0x40; // P: inter-picture predicted
        }
        if first {
            b0 |= 0x08; // B: the start of the frame
        }
        if rest.is_empty() {
            b0 |= 0x04; // E: its end
        }
        if ss.is_some() {
            b0 |= 0x02; // V: a scalability structure follows
        }
        let mut b = BytesMut::with_capacity(header + part.len());
        b.put_u8(b0);
        b.put_u16(0x8000 | pid); // M=1: 15 bits
        if let Some((w, h)) = ss {
            b.put_u8(0x10); // N_S=0 (one spatial layer), Y=1 (its size follows), G=0
            b.put_u16(w);
            b.put_u16(h);
        }
        b.extend_from_slice(part);
        out.push(b.freeze());
    }
    out
}

/// The width and height a VP9 keyframe's uncompressed header gives, for the scalability
/// structure of [`payloads`]; `None` for any other frame, and for a width or height of 65536
/// (the largest VP9 can code, which the structure's 16 bits cannot carry).
pub fn frame_size(frame: &[u8]) -> Option<(u16, u16)> {
    let (w, h) = crate::picture::vp9_header_size(frame)?;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picture::{VP9_KEYFRAMES, vp9_keyframe_size};
    use ::rtc::rtp::codec::vp9::Vp9Packet;
    use ::rtc::rtp::packetizer::Depacketizer;

    #[test]
    fn a_depacketizer_reads_back_the_frame_and_its_descriptor() {
        let frame: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        for pid in [0u16, 1, 127, 128, 0x7fff, 0x8001] {
            for keyframe in [true, false] {
                for size in [None, Some((1280, 720))] {
                    let parts = payloads(&frame, pid, keyframe, size, 1188);
                    assert_eq!(parts.len(), 3);
                    let mut back = Vec::new();
                    for (i, p) in parts.iter().enumerate() {
                        assert!(p.len() <= 1188);
                        let mut d = Vp9Packet::default();
                        back.extend_from_slice(&d.depacketize(p).unwrap());
                        assert_eq!(d.picture_id, pid & 0x7fff);
                        assert!(d.i && !d.l && !d.f && !d.z);
                        assert_eq!(d.p, !keyframe);
                        assert_eq!(d.b, i == 0);
                        assert_eq!(d.e, i == parts.len() - 1);
                        let ss = keyframe && size.is_some() && i == 0;
                        assert_eq!(d.v, ss, "{pid} {keyframe} {size:?} {i}");
                        if ss {
                            assert_eq!((d.ns, d.y, d.g), (0, true, false));
                            assert_eq!(
                                (d.width.clone(), d.height.clone()),
                                (vec![1280], vec![720])
                            );
                        }
                    }
                    assert_eq!(back, frame);
                }
            }
        }
        assert!(payloads(&[], 1, true, Some((640, 360)), 1188).is_empty());
    }

    #[test]
    fn payloads_fill_up_to_max_and_always_make_progress() {
        let frame = [7u8; 20];
        // 3 + 5 bytes of header on the first packet, 3 on the others.
        let parts = payloads(&frame, 5, true, Some((2, 2)), 12);
        let lens: Vec<_> = parts.iter().map(Bytes::len).collect();
        assert_eq!(lens, [12, 12, 10]);
        let one = payloads(&frame, 5, false, None, 23);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0][0], 0xcc); // I|P|B|E
        // A max below the descriptor still carries a byte per payload.
        assert_eq!(payloads(&frame, 5, false, None, 2).len(), 20);
        assert_eq!(payloads(&frame, 5, true, Some((2, 2)), 0).len(), 20);
    }

    #[test]
    fn keyframes_from_vp9enc_announce_their_size_through_the_payloads() {
        for (what, w, h, bytes) in VP9_KEYFRAMES {
            let size = frame_size(&bytes);
            assert_eq!(size, Some((w as u16, h as u16)), "{what}");
            let parts = payloads(&bytes, 9, true, size, 10);
            assert_eq!(vp9_keyframe_size(&parts[0]), Some((w, h)), "{what}");
            assert!(parts[1..].iter().all(|p| vp9_keyframe_size(p).is_none()));
            // Without the scalability structure, from the frame header: not in 7 bytes of it.
            let parts = payloads(&bytes, 9, true, None, 10);
            assert_eq!(vp9_keyframe_size(&parts[0]), None, "{what}: header cut");
            let parts = payloads(&bytes, 9, true, None, 1200);
            assert_eq!(vp9_keyframe_size(&parts[0]), Some((w, h)), "{what}");
            let parts = payloads(&bytes, 9, false, size, 1200);
            assert_eq!(vp9_keyframe_size(&parts[0]), None, "{what}: P set");
        }
        // Width and height minus one of 0xffff: a size the structure cannot carry.
        let largest = [0x82, 0x49, 0x83, 0x42, 0x2f, 0xff, 0xff, 0xff, 0xf0];
        assert_eq!(frame_size(&largest), None);
    }
}
