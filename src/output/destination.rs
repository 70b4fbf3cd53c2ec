//! Where an RTMP output may push the room: parsing an `rtmp://` / `rtmps://` URL, hiding its
//! stream key, and the address policy that keeps a caller from aiming the server at itself or
//! its private network (loopback, link-local metadata services, RFC 1918 ranges, …).
//!
//! Pure: no tokio, no GStreamer, no I/O. The HTTP edge resolves the host (at most
//! [`RESOLVE_TIMEOUT`]) and hands the addresses to [`Policy::check`] before anything starts.
//! Nothing here ever returns a GStreamer message or resolution details to a caller, and every
//! URL it puts in a message has passed through [`redact`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Longest URL accepted (the stream key included).
pub const MAX_URL_LEN: usize = 2048;
/// How long the HTTP edge waits for the destination's host to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// What a caller is told when an RTMP connection fails, whatever GStreamer said: its messages
/// (connection refused, reset, timed out, TLS failure …) would tell an open port from a closed
/// one. The details go to the debug log, scrubbed by [`scrub`].
pub const RTMP_UNREACHABLE: &str = "the RTMP server could not be reached or refused the stream";

/// What a well-formed destination looks like, for error messages.
const SHAPE: &str = "rtmp://host[:port]/app/stream or rtmps://…";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Rtmp,
    Rtmps,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Rtmp => 1935,
            Scheme::Rtmps => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Rtmp => "rtmp",
            Scheme::Rtmps => "rtmps",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    V4(Ipv4Addr),
    /// Written in brackets in the URL.
    V6(Ipv6Addr),
    /// A DNS name, as written.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// An RTMP destination, taken apart. `path` is empty or starts with `/`; `query` is what
/// follows the first `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    pub scheme: Scheme,
    pub userinfo: Option<String>,
    pub host: Host,
    pub port: u16,
    pub path: String,
    pub query: Option<String>,
}

fn not_rtmp(url: &str, why: &str) -> String {
    format!("{:?} is not an RTMP URL: {why} ({SHAPE})", redact(url))
}

/// RFC 3986 user-info characters (unreserved, percent-encoded, sub-delims and `:`).
fn userinfo_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()*+,;=:".contains(c)
}

/// Letters, digits, `-` and `_` in dot-separated labels of at most 63 characters, at most 253
/// in all, one trailing dot allowed, and not ending in a number: `127.1` or `2130706433`
/// would be read as IPv4 addresses by some resolvers and not by others.
fn valid_host_name(name: &str) -> bool {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = trimmed.split('.').collect();
    !trimmed.is_empty()
        && trimmed.len() <= 253
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        && labels
            .last()
            .is_some_and(|l| !l.chars().all(|c| c.is_ascii_digit()))
}

impl RtmpUrl {
    /// Takes an RTMP destination apart, refusing anything two URL parsers could read
    /// differently (`#`, `\`, a second `@`, an IPv6 zone, a numeric host that is not a
    /// dotted IPv4 address), so that the host checked is the host GStreamer connects to.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.len() > MAX_URL_LEN {
            return Err(format!(
                "an RTMP URL must be at most {MAX_URL_LEN} characters ({SHAPE})"
            ));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(not_rtmp(
                url,
                "it contains whitespace or control characters",
            ));
        }
        if url.contains(['#', '\\']) {
            return Err(not_rtmp(url, "it contains '#' or '\\'"));
        }
        let (scheme, rest) = if let Some(r) = url.strip_prefix("rtmp://") {
            (Scheme::Rtmp, r)
        } else if let Some(r) = url.strip_prefix("rtmps://") {
            (Scheme::Rtmps, r)
        } else {
            return Err(format!(
                "an RTMP URL must start with rtmp:// or rtmps:// ({SHAPE})"
            ));
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (tail, None),
        };
        if authority.is_empty() {
            return Err(not_rtmp(url, "it names no host"));
        }
        let (userinfo, host_port) = match authority.split_once('@') {
            Some((u, h)) => {
                if h.contains('@') {
                    return Err(not_rtmp(
                        url,
                        "its user-info contains '@' (write it as %40)",
                    ));
                }
                if u.is_empty() || !u.chars().all(userinfo_char) {
                    return Err(not_rtmp(url, "its user-info is malformed"));
                }
                (Some(u.to_owned()), h)
            }
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| not_rtmp(url, "an IPv6 host lacks its ']'"))?;
            let addr: Ipv6Addr = addr
                .parse()
                .map_err(|_| not_rtmp(url, "the IPv6 host is malformed (zones are refused)"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| not_rtmp(url, "a ':' must follow the IPv6 host"))?,
                ),
            };
            (Host::V6(addr), port)
        } else {
            let (h, port) = match host_port.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host_port, None),
            };
            let host = if let Ok(a) = h.parse::<Ipv4Addr>() {
                Host::V4(a)
            } else if valid_host_name(h) {
                Host::Name(h.to_owned())
            } else {
                return Err(not_rtmp(
                    url,
                    "its host is neither an IPv4 address, a bracketed IPv6 address nor a host name",
                ));
            };
            (host, port)
        };
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => n,
                _ => return Err(not_rtmp(url, "its port must be within 1..=65535")),
            },
        };
        Ok(Self {
            scheme,
            userinfo,
            host,
            port,
            path: path.to_owned(),
            query,
        })
    }

    /// `host:port` for the resolver (`[v6]:port` for IPv6).
    pub fn lookup_target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The URL with its secrets hidden, for the API and every log line: user-info
/// (`rtmp://…@host/…`), the path beyond its first segment, the application
/// (`rtmp://host/app/…`), and the query (`?…`). Works on any string: one without `://` is
/// hidden whole.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.is_empty() {
            String::new()
        } else {
            "…".into()
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = match authority.rsplit_once('@') {
        Some((_, h)) => format!("…@{h}"),
        None => authority.to_owned(),
    };
    let q = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, query) = tail.split_at(q);
    let mut out = format!("{scheme}://{host}");
    if let Some(segments) = path.strip_prefix('/') {
        out.push('/');
        match segments.split_once('/') {
            Some((app, key)) => {
                out.push_str(app);
                out.push('/');
                if !key.is_empty() {
                    out.push('…');
                }
            }
            None => out.push_str(segments),
        }
    }
    if let Some(sep) = query.chars().next() {
        out.push(sep);
        if query.len() > 1 {
            out.push('…');
        }
    }
    out
}

/// The parts of `url` that [`redact`] hides: user-info, the path beyond the application, the
/// query. Only those long enough to be recognised in a longer text.
fn secrets(url: &str) -> Vec<&str> {
    let Some((_, rest)) = url.split_once("://") else {
        return vec![url];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let mut found = Vec::new();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        found.push(userinfo);
        // The password alone, as a message might show it.
        if let Some((_, password)) = userinfo.split_once(':') {
            found.push(password);
        }
    }
    let q = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, query) = tail.split_at(q);
    if let Some((_, key)) = path.strip_prefix('/').and_then(|s| s.split_once('/')) {
        found.push(key);
    }
    if query.len() > 1 {
        found.push(&query[1..]);
    }
    found.retain(|s| s.len() >= 4);
    found
}

/// `text` (a GStreamer message, say) with `url` and each of its secrets replaced, for the
/// debug log.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = if url.is_empty() {
        text.to_owned()
    } else {
        text.replace(url, &redact(url))
    };
    let mut secrets = secrets(url);
    // Longest first, so a key is not half-replaced by a shorter secret inside it.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets {
        out = out.replace(s, "…");
    }
    out
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified address",
        (127, _, _) => "a loopback address",
        (10, _, _) | (192, 168, _) => "a private address",
        (172, 16..=31, _) => "a private address",
        (100, 64..=127, _) => "a shared (CGNAT) address",
        (169, 254, _) => "a link-local address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        _ if ip.is_broadcast() => "a broadcast address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved address",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    let embedded_v4 =
        || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // IPv4-compatible (deprecated, never routed).
    if s[..6] == [0; 6] {
        return Some(v4_reason(embedded_v4()).unwrap_or("a reserved address"));
    }
    // NAT64: reaches the IPv4 address it embeds.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_reason(embedded_v4());
    }
    Some(match s[0] {
        0xfe80..=0xfebf => "a link-local address",
        0xfec0..=0xfeff => "a site-local address",
        0xfc00..=0xfdff => "a private (unique local) address",
        0xff00..=0xffff => "a multicast address",
        0x2001 if s[1] == 0xdb8 => "a documentation address",
        0x3fff if s[1] <= 0x0fff => "a documentation address",
        0x0100 if s[1..4] == [0, 0, 0] => "a reserved (discard-only) address",
        _ => return None,
    })
}

/// Why an RTMP output may not connect to `ip` unless an operator lists it, or `None` for a
/// public address. IPv4-mapped (and NAT64) IPv6 addresses are judged by the IPv4 address
/// they reach.
pub fn refused_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => v4_reason(a),
        IpAddr::V6(a) => v6_reason(a),
    }
}

/// Why `prefix` cannot be an `rtmp.allow` entry, if it cannot. It must be an RTMP URL whose
/// host is closed by a `/` (`rtmp://ingest.example.com/`), so that it cannot also match
/// `rtmp://ingest.example.com.evil.net/…` or `rtmp://ingest.example.com@10.0.0.1/…`.
pub fn check_allow_prefix(prefix: &str) -> Result<(), String> {
    RtmpUrl::parse(prefix)?;
    let rest = prefix
        .strip_prefix("rtmp://")
        .or_else(|| prefix.strip_prefix("rtmps://"))
        .unwrap_or(prefix);
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Ok(()),
        _ => Err(format!(
            "{:?} must end its host with '/' (rtmp://host[:port]/…)",
            redact(prefix)
        )),
    }
}

/// Which RTMP destinations a caller may name: `rtmp.allow` from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// URL prefixes. Empty: any public address. Otherwise only URLs starting with one of them
    /// (which may then be private or loopback).
    pub allow: Vec<String>,
}

impl Policy {
    pub fn new(allow: Vec<String>) -> Self {
        Self { allow }
    }

    fn listed(&self, url: &str) -> bool {
        self.allow.iter().any(|p| url.starts_with(p.as_str()))
    }

    /// Whether [`Policy::check`] will look at the resolved addresses of `url` (only when no
    /// allow list decides): the caller can skip resolving otherwise.
    pub fn needs_addresses(&self, url: &str) -> bool {
        self.allow.is_empty() && !self.listed(url)
    }

    /// Whether an output may push to `url`, whose host resolved to `resolved` (empty: it did
    /// not resolve). A listed prefix allows whatever the address; a non-empty list refuses the
    /// rest; an empty list allows only public addresses, all of them.
    pub fn check(&self, url: &str, resolved: &[SocketAddr]) -> Result<(), String> {
        let parsed = RtmpUrl::parse(url)?;
        if self.listed(url) {
            return Ok(());
        }
        let refused = |why: String| format!("RTMP destination {} refused: {why}", redact(url));
        if !self.allow.is_empty() {
            return Err(refused("not in rtmp.allow".into()));
        }
        if resolved.is_empty() {
            return Err(refused(format!("cannot resolve host {}", parsed.host)));
        }
        for addr in resolved {
            if let Some(reason) = refused_reason(addr.ip()) {
                return Err(refused(format!(
                    "{} is {reason} (list it in rtmp.allow to permit it)",
                    addr.ip()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 1935)
    }

    #[test]
    fn urls_are_taken_apart() {
        let u = RtmpUrl::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh").unwrap();
        assert_eq!(u.scheme, Scheme::Rtmp);
        assert_eq!(u.userinfo, None);
        assert_eq!(u.host, Host::Name("a.rtmp.youtube.com".into()));
        assert_eq!(u.port, 1935);
        assert_eq!(u.path, "/live2/abcd-efgh");
        assert_eq!(u.query, None);

        let u = RtmpUrl::parse("rtmps://user:pa%40ss@[2001:db8::1]:8443/app/key?x=1&y").unwrap();
        assert_eq!(u.scheme, Scheme::Rtmps);
        assert_eq!(u.userinfo.as_deref(), Some("user:pa%40ss"));
        assert_eq!(u.host, Host::V6("2001:db8::1".parse().unwrap()));
        assert_eq!(u.port, 8443);
        assert_eq!(u.path, "/app/key");
        assert_eq!(u.query.as_deref(), Some("x=1&y"));
        assert_eq!(u.lookup_target(), "[2001:db8::1]:8443");

        let u = RtmpUrl::parse("rtmps://live.example?k").unwrap();
        assert_eq!((u.port, u.path.as_str()), (443, ""));
        assert_eq!(u.query.as_deref(), Some("k"));
        let u = RtmpUrl::parse("rtmp://127.0.0.1:1935/live/x").unwrap();
        assert_eq!(u.host, Host::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(u.lookup_target(), "127.0.0.1:1935");
        assert!(RtmpUrl::parse("rtmp://[::1]/live/x").is_ok());
        assert!(RtmpUrl::parse("rtmp://ingest_1.example.com./app/k").is_ok());
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for (bad, why) in [
            ("http://x/y", "rtmp:// or rtmps://"),
            ("file:///etc", "rtmp:// or rtmps://"),
            ("RTMP://host/app", "rtmp:// or rtmps://"),
            ("rtmp:/host/app", "rtmp:// or rtmps://"),
            ("rtmp://", "no host"),
            ("rtmp:///x", "no host"),
            ("rtmp://?x", "no host"),
            ("rtmp://a b/c", "whitespace"),
            ("rtmp://a/c\n", "whitespace"),
            ("rtmp://a/c\u{7}", "control"),
            ("rtmp://evil.com#@127.0.0.1/app", "'#'"),
            ("rtmp://evil.com\\@127.0.0.1/app", "'\\'"),
            ("rtmp://a@b@127.0.0.1/app", "'@'"),
            ("rtmp://@127.0.0.1/app", "user-info"),
            ("rtmp://us er@h/app", "whitespace"),
            ("rtmp://u<x>@h/app", "user-info"),
            ("rtmp://host:/app", "port"),
            ("rtmp://host:0/app", "port"),
            ("rtmp://host:65536/app", "port"),
            ("rtmp://host:+80/app", "port"),
            ("rtmp://host:80:81/app", "port"),
            ("rtmp://[::1/app", "']'"),
            ("rtmp://[fe80::1%25eth0]/app", "IPv6"),
            ("rtmp://[::1]x/app", "':'"),
            ("rtmp://[127.0.0.1]/app", "IPv6"),
            ("rtmp://2130706433/app", "host"),
            ("rtmp://127.1/app", "host"),
            ("rtmp://0x7f.1/app", "host"),
            ("rtmp://-a.com/app", "host"),
            ("rtmp://a..com/app", "host"),
            ("rtmp://ex%61mple.com/app", "host"),
        ] {
            let e = RtmpUrl::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("rtmp://host/app/{}", "k".repeat(MAX_URL_LEN));
        let e = RtmpUrl::parse(&long).unwrap_err();
        assert!(e.contains("at most") && !e.contains("kkkk"), "{e}");
        // The message never shows the key it refused.
        let e = RtmpUrl::parse("rtmp://host:99999/app/s3cret-key").unwrap_err();
        assert!(
            e.contains("rtmp://host:99999/app/…") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn every_form_of_stream_key_is_hidden() {
        for (url, shown) in [
            (
                "rtmp://a.rtmp.youtube.com/live2/abcd-efgh",
                "rtmp://a.rtmp.youtube.com/live2/…",
            ),
            ("rtmp://host/app", "rtmp://host/app"),
            ("rtmp://host", "rtmp://host"),
            ("rtmp://host/", "rtmp://host/"),
            ("rtmp://host/app/", "rtmp://host/app/"),
            ("rtmp://host:1935/app/a/b/c", "rtmp://host:1935/app/…"),
            ("rtmp://host/app?key=abc", "rtmp://host/app?…"),
            ("rtmp://host/app/k?key=abc", "rtmp://host/app/…?…"),
            ("rtmp://host?key=abc", "rtmp://host?…"),
            ("rtmp://host/app?", "rtmp://host/app?"),
            ("rtmp://user:pass@host/app/k", "rtmp://…@host/app/…"),
            ("rtmps://tok@[::1]:443/app", "rtmps://…@[::1]:443/app"),
            ("rtmp://a@b@host/app", "rtmp://…@host/app"),
            ("rtmp://host/app#frag", "rtmp://host/app#…"),
            ("http://x/y/z", "http://x/y/…"),
            ("no-scheme-secret", "…"),
            ("", ""),
        ] {
            assert_eq!(redact(url), shown, "{url}");
            assert_eq!(
                redact(shown),
                shown,
                "redacting twice changes nothing: {url}"
            );
        }
    }

    #[test]
    fn scrubbing_hides_the_url_and_its_parts() {
        let url = "rtmp://bob:hunter22@host/live/s3cret-key?token=abcdef";
        let text = format!(
            "Could not connect to {url}: stream s3cret-key rejected for bob:hunter22 (hunter22, token=abcdef)"
        );
        let s = scrub(&text, url);
        for secret in ["s3cret", "hunter22", "abcdef"] {
            assert!(!s.contains(secret), "{s}");
        }
        assert!(s.contains("rtmp://…@host/live/…?…"), "{s}");
        // Short parts are not replaced all over the text.
        assert_eq!(
            scrub("Connection refused", "rtmp://h/app/k"),
            "Connection refused"
        );
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.254", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.10", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.200", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("100::1", "reserved"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("::127.0.0.1", "loopback"),
            ("::8.8.8.8", "reserved"),
            ("64:ff9b::a00:1", "private"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let reason = refused_reason(ip).unwrap_or_else(|| panic!("{ip} is allowed"));
            assert!(reason.contains(kind), "{ip}: {reason}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "198.17.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "2a00:1450:4001:80b::200e",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2001:db9::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(refused_reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn the_policy_checks_every_address_unless_an_operator_listed_the_url() {
        let open = Policy::default();
        let public = [sock("8.8.8.8")];
        assert_eq!(open.check("rtmp://live.example/app/k", &public), Ok(()));

        let e = open
            .check("rtmp://127.0.0.1:1935/live/s3cret", &[sock("127.0.0.1")])
            .unwrap_err();
        assert_eq!(
            e,
            "RTMP destination rtmp://127.0.0.1:1935/live/… refused: 127.0.0.1 is a loopback \
             address (list it in rtmp.allow to permit it)"
        );
        // One bad address among good ones is enough (DNS could pick either).
        let e = open
            .check(
                "rtmp://mixed.example/app/s3cret",
                &[sock("8.8.8.8"), sock("169.254.169.254")],
            )
            .unwrap_err();
        assert!(e.contains("169.254.169.254 is a link-local address"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = open
            .check(
                "rtmp://u:pw@[::ffff:10.0.0.1]/a?key=s3cret",
                &[sock("::ffff:10.0.0.1")],
            )
            .unwrap_err();
        assert!(e.contains("rtmp://…@[::ffff:10.0.0.1]/a?…"), "{e}");
        assert!(
            e.contains("private") && !e.contains("s3cret") && !e.contains("pw"),
            "{e}"
        );
        let e = open
            .check("rtmp://nowhere.invalid/app/s3cret", &[])
            .unwrap_err();
        assert_eq!(
            e,
            "RTMP destination rtmp://nowhere.invalid/app/… refused: cannot resolve host nowhere.invalid"
        );
        assert!(open.check("http://8.8.8.8/x", &public).is_err());
        assert!(open.needs_addresses("rtmp://live.example/app/k"));

        let listed = Policy::new(vec![
            "rtmp://127.0.0.1:1935/".into(),
            "rtmps://live.example.com/app/".into(),
        ]);
        for url in [
            "rtmp://127.0.0.1:1935/live/key",
            "rtmps://live.example.com/app/key",
        ] {
            assert!(!listed.needs_addresses(url));
            // Whatever it resolved to.
            assert_eq!(listed.check(url, &[sock("127.0.0.1")]), Ok(()), "{url}");
            assert_eq!(listed.check(url, &[]), Ok(()), "{url}");
        }
        for url in [
            "rtmp://127.0.0.1:1936/live/s3cret",
            "rtmp://127.0.0.1/live/s3cret",
            "rtmps://live.example.com/other/s3cret",
            "rtmp://live.example.com/app/s3cret",
            "rtmp://8.8.8.8/live/s3cret",
        ] {
            let e = listed.check(url, &public).unwrap_err();
            assert!(e.ends_with("refused: not in rtmp.allow"), "{url}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        // Even a listed-looking garbage URL is refused by the parser first.
        assert!(
            listed
                .check("rtmp://127.0.0.1:1935/live/a b", &public)
                .is_err()
        );
    }

    #[test]
    fn allow_entries_must_close_their_host() {
        for ok in [
            "rtmp://127.0.0.1:1935/",
            "rtmps://live.example.com/app/",
            "rtmp://[::1]/live",
            "rtmp://ingest.example.com/",
        ] {
            assert_eq!(check_allow_prefix(ok), Ok(()), "{ok}");
        }
        for bad in [
            "rtmp://ingest.example.com",
            "rtmp://127.0.0.1:1935",
            "rtmp://host?x",
            "http://host/",
            "ingest.example.com/",
            "rtmp://",
        ] {
            assert!(check_allow_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_configuration_names_a_bad_allow_entry() {
        let e = crate::config::Config::from_toml(
            "[rtmp]\nallow = [\"rtmp://ok.example/\", \"http://bad.example/\"]\n",
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rtmp.allow") && e.contains("http://bad.example/"),
            "{e}"
        );
        let c =
            crate::config::Config::from_toml("[rtmp]\nallow = [\"rtmp://127.0.0.1:1935/\"]\n", "x")
                .unwrap();
        assert_eq!(c.rtmp.allow, ["rtmp://127.0.0.1:1935/"]);
    }
}
