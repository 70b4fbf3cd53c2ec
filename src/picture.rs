//! The picture size a publisher announces, read from its RTP payloads before any decoder sees
//! them (pure): a VP8 keyframe's header (RFC 6386 §9.1) and an H.264 sequence parameter set
//! (ITU-T H.264 §7.3.2.1.1). A decoder fed a 16383x16383 keyframe would allocate gigabytes;
//! the room refuses such a publisher's video instead.

use crate::media::VideoCodec;

/// The width and height a payload announces, when it starts a VP8 keyframe or carries an
/// H.264 SPS (single NAL unit, STAP-A, or the first fragment of an FU-A).
pub fn announced_size(codec: VideoCodec, payload: &[u8]) -> Option<(u32, u32)> {
    match codec {
        VideoCodec::Vp8 => vp8_keyframe_size(payload),
        VideoCodec::H264 => h264_sps_in_payload(payload),
    }
}

/// The VP8 frame bytes of an RTP payload that starts partition 0 (after its RFC 7741
/// descriptor); `None` for any other packet.
pub fn vp8_frame_start(payload: &[u8]) -> Option<&[u8]> {
    let b0 = *payload.first()?;
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return None;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // Picture ID: 7 or 15 bits.
            i += if *payload.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    payload.get(i..)
}

/// A VP8 keyframe's start code and 14-bit sizes.
pub fn vp8_keyframe_size(payload: &[u8]) -> Option<(u32, u32)> {
    let frame = vp8_frame_start(payload)?;
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    Some((w, h))
}

fn h264_sps_in_payload(payload: &[u8]) -> Option<(u32, u32)> {
    let nal_type = payload.first()? & 0x1f;
    match nal_type {
        7 => h264_sps_size(payload),
        24 => {
            // STAP-A: 16-bit sizes, each followed by a NAL unit.
            let mut rest = payload.get(1..)?;
            while rest.len() > 2 {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let nal = rest.get(2..2 + n)?;
                if nal.first().is_some_and(|b| b & 0x1f == 7) {
                    return h264_sps_size(nal);
                }
                rest = &rest[2 + n..];
            }
            None
        }
        28 => {
            // FU-A: the start fragment of an SPS carries its first bytes (enough for the sizes
            // unless the scaling lists are long).
            let header = *payload.get(1)?;
            if header & 0x80 == 0 || header & 0x1f != 7 {
                return None;
            }
            let mut nal = vec![(payload[0] & 0xe0) | 7];
            nal.extend_from_slice(payload.get(2..)?);
            h264_sps_size(&nal)
        }
        _ => None,
    }
}

/// Exp-Golomb reader over an RBSP (emulation-prevention bytes removed).
struct Bits {
    data: Vec<u8>,
    pos: usize,
}

impl Bits {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(b))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// The coded size of an SPS NAL unit (header byte included), cropping ignored (an upper bound).
pub fn h264_sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    let mut data = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal.get(1..)? {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        data.push(b);
    }
    let mut r = Bits { data, pos: 0 };
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        let chroma = r.ue()?;
        if chroma == 3 {
            r.bit()?;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let w_mbs = u64::from(r.ue()?) + 1;
    let h_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    let w = w_mbs * 16;
    let h = h_units * 16 * (2 - frame_mbs_only);
    Some((
        u32::try_from(w).unwrap_or(u32::MAX),
        u32::try_from(h).unwrap_or(u32::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 keyframe start with an extended descriptor (15-bit picture id).
    fn vp8_key(w: u16, h: u16) -> Vec<u8> {
        let mut p = vec![0x90, 0x80, 0x80, 0x01];
        p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&w.to_le_bytes());
        p.extend_from_slice(&h.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        p
    }

    #[test]
    fn vp8_keyframes_announce_their_size() {
        assert_eq!(vp8_keyframe_size(&vp8_key(640, 360)), Some((640, 360)));
        assert_eq!(
            vp8_keyframe_size(&vp8_key(16383, 16383)),
            Some((16383, 16383))
        );
        // Scale bits are not part of the size.
        assert_eq!(
            vp8_keyframe_size(&vp8_key(0xc000 | 320, 240)),
            Some((320, 240))
        );
        let mut delta = vp8_key(640, 360);
        delta[4] |= 0x01; // P bit: an interframe
        assert_eq!(vp8_keyframe_size(&delta), None);
        let mut middle = vp8_key(640, 360);
        middle[0] &= !0x10; // not the start of a partition
        assert_eq!(vp8_keyframe_size(&middle), None);
        for n in 0..14 {
            assert_eq!(vp8_keyframe_size(&vp8_key(640, 360)[..n]), None);
        }
    }

    // SPS x264 wrote for 1280x720 (constrained baseline) and 1920x1080 (High: 1088 coded
    // lines, cropped to 1080 by the stream; the coded size is what a decoder allocates).
    const SPS_720P: [u8; 27] = [
        0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x6a, 0x02, 0x02, 0x02, 0x80,
        0x00, 0x00, 0x03, 0x00, 0x80, 0x00, 0x00, 0x1e, 0x47, 0x8c, 0x19, 0x24,
    ];
    const SPS_1080P_HIGH: [u8; 30] = [
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x5a, 0x80, 0x80,
        0x80, 0xa0, 0x00, 0x00, 0x03, 0x00, 0x20, 0x00, 0x00, 0x07, 0x91, 0xe3, 0x06, 0x32, 0xc0,
    ];

    #[test]
    fn h264_sps_sizes() {
        assert_eq!(h264_sps_size(&SPS_720P), Some((1280, 720)));
        assert_eq!(h264_sps_size(&SPS_1080P_HIGH), Some((1920, 1088)));
        // In a STAP-A beside a PPS, and as the start of an FU-A.
        let mut stap = vec![0x78, 0x00, SPS_720P.len() as u8];
        stap.extend_from_slice(&SPS_720P);
        stap.extend_from_slice(&[0x00, 0x02, 0x68, 0xce]);
        assert_eq!(announced_size(VideoCodec::H264, &stap), Some((1280, 720)));
        let mut fu = vec![0x7c, 0x87];
        fu.extend_from_slice(&SPS_720P[1..]);
        assert_eq!(announced_size(VideoCodec::H264, &fu), Some((1280, 720)));
        assert_eq!(announced_size(VideoCodec::H264, &[0x65, 0x88]), None);
        for n in 0..8 {
            assert_eq!(h264_sps_size(&SPS_720P[..n]), None, "{n}");
        }
    }
}
