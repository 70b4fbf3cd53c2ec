//! Pure SDP rewriting for 1:1 NAT: webrtc-rs 0.21 ignores its own NAT 1:1 setting, so the
//! answer's host candidates (and connection lines) are rewritten to the public address here.
//! With a wildcard bind every interface yields a host candidate on the same port; after the
//! rewrite they are identical, so only the first is kept. [`limit_candidates`] bounds how
//! many remote candidates an offer can make the server check.

use std::collections::HashSet;
use std::net::IpAddr;

/// Puts `public` in every host candidate and `c=` line of `sdp`.
pub fn rewrite_candidates(sdp: &str, public: IpAddr) -> String {
    let public_s = public.to_string();
    let family = if public.is_ipv4() { "IP4" } else { "IP6" };
    let mut seen = HashSet::new();
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        if let Some(rest) = body.strip_prefix("a=candidate:") {
            let mut fields: Vec<&str> = rest.split(' ').collect();
            // foundation component transport priority address port "typ" type ...
            if fields.len() > 7 && fields[6] == "typ" && fields[7] == "host" {
                fields[4] = &public_s;
                let key = (
                    fields[1].to_owned(),
                    fields[2].to_ascii_lowercase(),
                    fields[5].to_owned(),
                );
                if !seen.insert(key) {
                    continue;
                }
            }
            out.push_str("a=candidate:");
            out.push_str(&fields.join(" "));
        } else if body.starts_with("c=IN ") {
            out.push_str("c=IN ");
            out.push_str(family);
            out.push(' ');
            out.push_str(&public_s);
        } else {
            out.push_str(body);
        }
        out.push_str(ending);
    }
    out
}

/// Keeps the first `max` usable `a=candidate` lines of `sdp` and drops the rest (and those
/// with no port or no unicast address: one with port 0 makes sending fail with EINVAL); also
/// says how many it kept.
pub fn limit_candidates(sdp: &str, max: usize) -> (String, usize) {
    let mut kept = 0;
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        if let Some(c) = line.strip_prefix("a=") {
            if !c.starts_with("candidate:") {
                out.push_str(line);
                continue;
            }
            if kept == max || crate::limits::candidate_problem(c.trim_end()).is_some() {
                continue;
            }
            kept += 1;
        }
        out.push_str(line);
    }
    (out, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_keep_a_bounded_number_of_candidates() {
        let mut sdp = String::from("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
        for i in 0..100 {
            sdp.push_str(&format!(
                "a=candidate:{i} 1 udp 1 198.18.0.{} 5000 typ host\r\n",
                i % 250
            ));
        }
        sdp.push_str("a=mid:0\r\n");
        let (out, kept) = limit_candidates(&sdp, 16);
        assert_eq!(kept, 16);
        assert_eq!(out.matches("a=candidate:").count(), 16);
        assert!(out.starts_with("v=0\r\nm=audio") && out.ends_with("a=mid:0\r\n"));
        assert!(out.contains("a=candidate:15 ") && !out.contains("a=candidate:16 "));
        assert_eq!(limit_candidates("v=0\r\n", 16), ("v=0\r\n".to_owned(), 0));
    }

    #[test]
    fn host_candidates_get_the_public_address_once() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.5\r\n\
a=candidate:1 1 udp 2130706431 10.0.0.5 20000 typ host\r\n\
a=candidate:2 1 udp 2130706431 192.168.1.9 20000 typ host\r\n\
a=candidate:3 1 udp 1694498815 198.51.100.1 40000 typ srflx raddr 0.0.0.0 rport 20000\r\n\
a=mid:0\r\n";
        let out = rewrite_candidates(sdp, "203.0.113.7".parse().unwrap());
        assert_eq!(
            out,
            "v=0\r\nc=IN IP4 203.0.113.7\r\n\
a=candidate:1 1 udp 2130706431 203.0.113.7 20000 typ host\r\n\
a=candidate:3 1 udp 1694498815 198.51.100.1 40000 typ srflx raddr 0.0.0.0 rport 20000\r\n\
a=mid:0\r\n"
        );
    }

    #[test]
    fn malformed_candidates_pass_through() {
        let sdp = "a=candidate:1 1 udp\r\na=candidate:\r\n";
        assert_eq!(rewrite_candidates(sdp, "203.0.113.7".parse().unwrap()), sdp);
    }
}
