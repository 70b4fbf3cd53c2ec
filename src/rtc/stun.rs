//! Pure datagram classification for the shared media socket: which protocol a datagram
//! carries (RFC 7983 demultiplexing by first byte) and, for a STUN request, whose ICE
//! username fragment it names. Never allocates and never panics on any input.

/// STUN's magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// STUN (ICE connectivity checks and their answers).
    Stun,
    /// DTLS records (the handshake, alerts).
    Dtls,
    /// SRTP or SRTCP.
    Media,
    /// Anything else (TURN channel data, garbage): never accepted.
    Other,
}

/// RFC 7983 §7: the first byte tells STUN (0–3), DTLS (20–63) and RTP/RTCP (128–191) apart.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(0..=3) if is_stun(datagram) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        Some(128..=191) => DatagramKind::Media,
        _ => DatagramKind::Other,
    }
}

fn is_stun(d: &[u8]) -> bool {
    d.len() >= HEADER_LEN && d[4..8] == MAGIC_COOKIE && d[0] & 0xc0 == 0
}

/// The local (server's) username fragment of a STUN request's USERNAME attribute
/// (`"<receiver ufrag>:<sender ufrag>"` in ICE checks, RFC 8445 §7.2.2), or `None` when the
/// message is not a request or is malformed. Responses are left out on purpose: some stacks
/// (libnice) echo the request's USERNAME, whose first part is then the *peer's* ufrag.
pub fn local_ufrag(d: &[u8]) -> Option<&[u8]> {
    if !is_stun(d) {
        return None;
    }
    // The class bits (RFC 5389 §6): C1 is bit 8 and C0 bit 4 of the type; 00 is a request.
    if d[0] & 0x01 != 0 || d[1] & 0x10 != 0 {
        return None;
    }
    let declared = u16::from_be_bytes([d[2], d[3]]) as usize;
    let body = d.get(HEADER_LEN..HEADER_LEN + declared)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = body.get(at + 4..at + 4 + len)?;
        if typ == ATTR_USERNAME {
            let colon = value.iter().position(|&b| b == b':')?;
            return Some(&value[..colon]);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A binding request with the given USERNAME (and a trailing attribute after it).
    pub(crate) fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        attrs.extend_from_slice(&[0x80, 0x28, 0, 4, 1, 2, 3, 4]); // FINGERPRINT-shaped
        let mut d = vec![0x00, 0x01];
        d.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        d.extend_from_slice(&MAGIC_COOKIE);
        d.extend_from_slice(&[7; 12]);
        d.extend_from_slice(&attrs);
        d
    }

    #[test]
    fn demultiplexes_by_first_byte() {
        assert_eq!(classify(&binding_request("a:b")), DatagramKind::Stun);
        assert_eq!(classify(&[22, 254, 253, 0]), DatagramKind::Dtls);
        assert_eq!(classify(&[0x80, 96, 0, 1]), DatagramKind::Media);
        assert_eq!(classify(&[0x81, 200, 0, 1]), DatagramKind::Media);
        assert_eq!(classify(&[64, 0, 0, 0]), DatagramKind::Other);
        assert_eq!(classify(&[]), DatagramKind::Other);
        // A first byte of 0 without the magic cookie is not STUN.
        assert_eq!(classify(&[0u8; 20]), DatagramKind::Other);
    }

    #[test]
    fn finds_the_local_ufrag() {
        assert_eq!(
            local_ufrag(&binding_request("srvUfrag:cliUfrag")),
            Some(&b"srvUfrag"[..])
        );
        // Odd lengths are padded; the parser follows the padding.
        assert_eq!(local_ufrag(&binding_request("abc:d")), Some(&b"abc"[..]));
    }

    #[test]
    fn responses_name_no_session_even_with_a_username() {
        let mut d = binding_request("peerUfrag:srvUfrag");
        d[0..2].copy_from_slice(&[0x01, 0x01]); // success response
        assert_eq!(classify(&d), DatagramKind::Stun);
        assert_eq!(local_ufrag(&d), None);
        d[0..2].copy_from_slice(&[0x01, 0x11]); // error response
        assert_eq!(local_ufrag(&d), None);
        d[0..2].copy_from_slice(&[0x00, 0x11]); // indication
        assert_eq!(local_ufrag(&d), None);
    }

    #[test]
    fn malformed_messages_give_nothing() {
        assert_eq!(local_ufrag(&binding_request("no-colon")), None);
        let mut d = binding_request("a:b");
        d[3] = 200; // declared length beyond the datagram
        assert_eq!(local_ufrag(&d), None);
        let mut d = binding_request("a:b");
        d[22..24].copy_from_slice(&[0xff, 0xff]); // attribute longer than the body
        assert_eq!(local_ufrag(&d), None);
        assert_eq!(local_ufrag(&[0u8; 19]), None);
        // Every truncation of a valid request is handled.
        let full = binding_request("server:client");
        for n in 0..full.len() {
            let _ = local_ufrag(&full[..n]);
            let _ = classify(&full[..n]);
        }
    }
}
