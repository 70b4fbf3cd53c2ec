//! Pure SDP rewriting for 1:1 NAT: webrtc-rs 0.21 ignores its own NAT 1:1 setting, so the
//! answer's host candidates (and connection lines) are rewritten to the public address here.

use std::net::IpAddr;

/// Replaces `from` with `to` in every `a=candidate` address and `c=` line of `sdp`.
pub fn rewrite_candidates(sdp: &str, from: IpAddr, to: IpAddr) -> String {
    let from_s = from.to_string();
    let to_s = to.to_string();
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        if let Some(rest) = body.strip_prefix("a=candidate:") {
            let mut fields: Vec<&str> = rest.split(' ').collect();
            if fields.len() > 4 && fields[4] == from_s {
                fields[4] = &to_s;
            }
            out.push_str("a=candidate:");
            out.push_str(&fields.join(" "));
        } else if let Some(rest) = body.strip_prefix("c=IN ") {
            let mut fields: Vec<&str> = rest.split(' ').collect();
            if fields.len() == 2 && fields[1] == from_s {
                fields[0] = if to.is_ipv4() { "IP4" } else { "IP6" };
                fields[1] = &to_s;
            }
            out.push_str("c=IN ");
            out.push_str(&fields.join(" "));
        } else {
            out.push_str(body);
        }
        out.push_str(ending);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_bound_address() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.5\r\n\
a=candidate:1 1 udp 2130706431 10.0.0.5 20000 typ host\r\n\
a=candidate:2 1 udp 2130706431 192.168.1.9 20000 typ host\r\na=mid:0\r\n";
        let out = rewrite_candidates(
            sdp,
            "10.0.0.5".parse().unwrap(),
            "203.0.113.7".parse().unwrap(),
        );
        assert_eq!(
            out,
            "v=0\r\nc=IN IP4 203.0.113.7\r\n\
a=candidate:1 1 udp 2130706431 203.0.113.7 20000 typ host\r\n\
a=candidate:2 1 udp 2130706431 192.168.1.9 20000 typ host\r\na=mid:0\r\n"
        );
    }
}
