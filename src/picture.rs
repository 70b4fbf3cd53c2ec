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
        VideoCodec::Vp9 => vp9_keyframe_size(payload),
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

/// The picture size a VP9 RTP payload (RFC 9628 descriptor, flexible or non-flexible mode)
/// announces when it starts a keyframe (B=1, P=0): the largest width and the largest height
/// among its scalability structure's spatial layers (V=1, Y=1) and the keyframe header that
/// follows the descriptor ([`vp9_header_size`]), so that a sender cannot hide a large frame
/// behind a small scalability structure. `None` for any other packet or when neither is there.
pub fn vp9_keyframe_size(payload: &[u8]) -> Option<(u32, u32)> {
    let b0 = *payload.first()?;
    // B (start of a frame) set, P (inter-picture predicted) clear.
    if b0 & 0x08 == 0 || b0 & 0x40 != 0 {
        return None;
    }
    let flexible = b0 & 0x10 != 0;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        // Picture ID: 7 or 15 bits.
        i += if *payload.get(i)? & 0x80 != 0 { 2 } else { 1 };
    }
    if b0 & 0x20 != 0 {
        // Layer indices, and TL0PICIDX in non-flexible mode. No P_DIFF follows: P is clear.
        i += if flexible { 1 } else { 2 };
    }
    let mut largest: Option<(u32, u32)> = None;
    let mut grow = |(w, h): (u32, u32)| {
        largest = Some(largest.map_or((w, h), |(lw, lh)| (lw.max(w), lh.max(h))));
    };
    if b0 & 0x02 != 0 {
        // Scalability structure: N_S|Y|G, then (N_S + 1) sizes when Y, then the picture group.
        let ss = *payload.get(i)?;
        i += 1;
        if ss & 0x10 != 0 {
            let layers = usize::from(ss >> 5) + 1;
            let sizes = payload.get(i..i + 4 * layers)?;
            for s in sizes.chunks_exact(4) {
                grow((
                    u32::from(u16::from_be_bytes([s[0], s[1]])),
                    u32::from(u16::from_be_bytes([s[2], s[3]])),
                ));
            }
            i += 4 * layers;
        }
        if ss & 0x08 != 0 {
            let groups = *payload.get(i)?;
            i += 1;
            for _ in 0..groups {
                // T|U|R: R reference P_DIFF octets follow.
                let r = usize::from((*payload.get(i)? >> 2) & 0x03);
                i += 1 + r;
            }
            if i > payload.len() {
                return None; // a cut structure: depayloaders drop the packet
            }
        }
    }
    if let Some(size) = payload.get(i..).and_then(vp9_header_size) {
        grow(size);
    }
    largest
}

/// The frame size in a VP9 keyframe's uncompressed header (VP9 bitstream specification
/// §6.2: profiles 0 to 3); `None` for any other frame (an inter frame, a shown existing frame)
/// or bytes that are not a VP9 frame. The frame bytes start with the header (the frame's
/// first bytes, or a superframe's first frame).
pub fn vp9_header_size(frame: &[u8]) -> Option<(u32, u32)> {
    const CS_RGB: u32 = 7;
    // The header up to the frame size fits in 10 bytes.
    let mut r = Bits {
        data: frame.get(..frame.len().min(10))?.to_vec(),
        pos: 0,
    };
    if r.bits(2)? != 2 {
        return None; // frame_marker
    }
    let profile = r.bit()? | (r.bit()? << 1);
    if profile == 3 {
        r.bit()?; // reserved_zero
    }
    if r.bit()? == 1 || r.bit()? == 1 {
        return None; // show_existing_frame, or frame_type: not a keyframe
    }
    r.bits(2)?; // show_frame, error_resilient_mode
    if r.bits(24)? != 0x49_83_42 {
        return None; // frame_sync_code
    }
    if profile >= 2 {
        r.bit()?; // ten_or_twelve_bit
    }
    let odd_profile = profile & 1 == 1;
    if r.bits(3)? != CS_RGB {
        r.bit()?; // color_range
        if odd_profile {
            r.bits(3)?; // subsampling_x, subsampling_y, reserved_zero
        }
    } else if odd_profile {
        r.bit()?; // reserved_zero
    }
    let w = r.bits(16)? + 1;
    let h = r.bits(16)? + 1;
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

/// The first bytes of keyframes vp9enc wrote (GStreamer 1.22, libvpx), one per profile, for
/// the tests here and in `rtc::vp9`: (format, width, height, bytes) from
/// `gst-launch-1.0 videotestsrc num-buffers=1 ! video/x-raw,format=FORMAT,width=W,height=H !
/// vp9enc ! filesink location=key.vp9`.
#[cfg(test)]
pub(crate) const VP9_KEYFRAMES: [(&str, u32, u32, [u8; 24]); 6] = [
    (
        "I420 (profile 0)",
        320,
        240,
        [
            0x82, 0x49, 0x83, 0x42, 0x20, 0x13, 0xf0, 0x0e, 0xf6, 0x08, 0x38, 0x24, 0x1c, 0x18,
            0x42, 0x00, 0x07, 0x50, 0x7f, 0xd9, 0xfa, 0x3c, 0x77, 0x18,
        ],
    ),
    (
        "I420 (profile 0)",
        1280,
        720,
        [
            0x82, 0x49, 0x83, 0x42, 0x40, 0x4f, 0xf0, 0x2c, 0xf6, 0x08, 0x38, 0x24, 0x1c, 0x19,
            0x54, 0x18, 0x02, 0xfc, 0x7f, 0xd1, 0xf9, 0xbe, 0x87, 0xe6,
        ],
    ),
    (
        "I420 (profile 0)",
        1,
        1,
        [
            0x82, 0x49, 0x83, 0x42, 0x20, 0x00, 0x00, 0x00, 0x06, 0x00, 0x38, 0x24, 0x1c, 0x19,
            0xc0, 0x00, 0x00, 0x20, 0x20, 0x00, 0x11, 0xbf, 0xa7, 0x60,
        ],
    ),
    (
        "Y444 (profile 1)",
        640,
        360,
        [
            0xa2, 0x49, 0x83, 0x42, 0x20, 0x04, 0xfe, 0x02, 0xce, 0xc2, 0x07, 0x04, 0x83, 0x83,
            0x15, 0x42, 0x00, 0x97, 0x7f, 0x8d, 0xf4, 0x7f, 0x3b, 0xb3,
        ],
    ),
    (
        "I420_10LE (profile 2)",
        320,
        240,
        [
            0x92, 0x49, 0x83, 0x42, 0x10, 0x09, 0xf8, 0x07, 0x7b, 0x01, 0x1c, 0x12, 0x0e, 0x0c,
            0x29, 0x00, 0x03, 0x78, 0x7f, 0xdd, 0xfa, 0x3c, 0x77, 0x18,
        ],
    ),
    (
        "Y444_10LE (profile 3)",
        320,
        240,
        [
            0xb1, 0x24, 0xc1, 0xa1, 0x08, 0x00, 0x9f, 0x80, 0x77, 0xb0, 0x11, 0xc1, 0x20, 0xe0,
            0xc2, 0x90, 0x00, 0x39, 0x00, 0x7f, 0xdd, 0xfa, 0x3c, 0x77,
        ],
    ),
];

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

    #[test]
    fn vp9_headers_of_vp9enc_keyframes() {
        for (what, w, h, key) in VP9_KEYFRAMES {
            assert_eq!(vp9_header_size(&key), Some((w, h)), "{what}");
            // Everything up to the frame size is needed (9 bytes, 10 in profile 3).
            for n in 0..9 {
                assert_eq!(vp9_header_size(&key[..n]), None, "{what} {n}");
            }
            let mut garbage = key;
            garbage[0] ^= 0x80; // frame_marker
            assert_eq!(vp9_header_size(&garbage), None, "{what}");
            let mut garbage = key;
            garbage[3] ^= 0x10; // frame_sync_code (profiles 0 to 2)
            if !what.ends_with("(profile 3)") {
                assert_eq!(vp9_header_size(&garbage), None, "{what}");
            }
        }
        let key = VP9_KEYFRAMES[0].3;
        let mut inter = key;
        inter[0] |= 0x04; // frame_type
        assert_eq!(vp9_header_size(&inter), None);
        let mut existing = key;
        existing[0] |= 0x08; // show_existing_frame
        assert_eq!(vp9_header_size(&existing), None);
        // Profile 1, RGB: a reserved bit instead of the colour range and subsampling.
        let rgb = [0xa2, 0x49, 0x83, 0x42, 0xe0, 0x13, 0xf0, 0x0e, 0xf0];
        assert_eq!(vp9_header_size(&rgb), Some((320, 240)));
        let largest = [0x82, 0x49, 0x83, 0x42, 0x2f, 0xff, 0xff, 0xff, 0xf0];
        assert_eq!(vp9_header_size(&largest), Some((65536, 65536)));
    }

    fn with_descriptor(descriptor: &[u8], frame: &[u8]) -> Vec<u8> {
        [descriptor, frame].concat()
    }

    #[test]
    fn vp9_keyframes_announce_their_size() {
        let (_, _, _, qvga) = VP9_KEYFRAMES[0];
        let (_, _, _, hd) = VP9_KEYFRAMES[1];
        // rtpvp9pay picture-id-mode=15-bit (GStreamer 1.22): I|B|V, the scalability structure
        // with Y and G and a one-frame picture group, then the frame.
        let gst = [
            0x8a, 0xe4, 0x8e, 0x18, 0x01, 0x40, 0x00, 0xf0, 0x01, 0x04, 0x01,
        ];
        assert_eq!(
            vp9_keyframe_size(&with_descriptor(&gst, &qvga)),
            Some((320, 240))
        );
        // Non-flexible mode without a structure: 7-bit picture ID; then with layer indices
        // and TL0PICIDX.
        assert_eq!(
            vp9_keyframe_size(&with_descriptor(&[0x88, 0x05], &hd)),
            Some((1280, 720))
        );
        let layered = [0xa8, 0x80, 0x01, 0x00, 0x07];
        assert_eq!(
            vp9_keyframe_size(&with_descriptor(&layered, &hd)),
            Some((1280, 720))
        );
        // Flexible mode (as Chrome sends) with layer indices and three spatial layers: the
        // largest, though this packet holds the smallest layer's frame.
        let svc = [
            0xba, 0x81, 0x02, 0x00, 0x58, 0x01, 0x40, 0x00, 0xb4, 0x02, 0x80, 0x01, 0x68, 0x05,
            0x00, 0x02, 0xd0, 0x01, 0x04, 0x01,
        ];
        assert_eq!(
            vp9_keyframe_size(&with_descriptor(&svc, &qvga)),
            Some((1280, 720))
        );
        // A structure smaller than the frame it comes with does not hide the frame's size.
        assert_eq!(
            vp9_keyframe_size(&with_descriptor(&gst, &hd)),
            Some((1280, 720))
        );
        // The structure alone, when the frame is not a keyframe's header (a superframe's
        // later frame, a spatial layer over the base).
        assert_eq!(
            vp9_keyframe_size(&with_descriptor(&gst, &[0x86, 0x00])),
            Some((320, 240))
        );
        // A structure without sizes (Y=0) but with a picture group: the frame's header.
        let no_sizes = [0x8a, 0xe4, 0x8e, 0x08, 0x02, 0x04, 0x01, 0x08, 0x01, 0x02];
        assert_eq!(
            vp9_keyframe_size(&with_descriptor(&no_sizes, &hd)),
            Some((1280, 720))
        );
        // Not the start of a keyframe: P set (flexible mode, one P_DIFF), B clear.
        assert_eq!(
            vp9_keyframe_size(&with_descriptor(&[0xd8, 0x81, 0x03, 0x02], &hd)),
            None
        );
        assert_eq!(
            vp9_keyframe_size(&with_descriptor(&[0x84, 0x05], &hd)),
            None
        );
        assert_eq!(vp9_keyframe_size(&[]), None);
        // Cut anywhere: nothing before the whole structure, its sizes after.
        for (p, size) in [
            (with_descriptor(&gst, &qvga), (320, 240)),
            (with_descriptor(&svc, &qvga), (1280, 720)),
        ] {
            let ss_end = p.len() - qvga.len();
            for n in 0..p.len() {
                let expected = (n >= ss_end).then_some(size);
                assert_eq!(vp9_keyframe_size(&p[..n]), expected, "{n}");
            }
        }
        for n in 0..14 {
            let cut = vp9_keyframe_size(&with_descriptor(&layered, &hd)[..n]);
            assert_eq!(cut, None, "{n}");
        }
    }

    #[test]
    fn vp9_garbage_never_panics() {
        // xorshift64: reproducible bytes without a dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (_, _, _, key) = VP9_KEYFRAMES[5];
        let mut found = 0;
        for _ in 0..200_000 {
            let len = (next() % 48) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(b0) = p.first_mut() {
                // Mostly starts of keyframes, so the parser goes past the first byte.
                if next() % 4 != 0 {
                    *b0 = (*b0 | 0x08) & !0x40;
                }
            }
            if next() % 4 == 0 {
                let at = (next() as usize) % (p.len() + 1);
                p.splice(at..at, key);
            }
            found += usize::from(vp9_keyframe_size(&p).is_some());
            vp9_header_size(&p);
        }
        assert!(found > 0);
    }
}
