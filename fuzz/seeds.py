#!/usr/bin/env python3
"""Writes the hand-built seed inputs of the fuzz targets into fuzz/corpus/<target>/seed-*.

The committed corpora started from these seeds, three offers captured from Chromium 156
(`createOffer` on a page: audio+video sendrecv, recvonly, and sendonly with a data channel and
simulcast), docs/signalling.md and mixdown.example.toml, then grew under `make fuzz` and were
minimised with `cargo fuzz cmin`. Running this again only adds files; run cmin after it.

    python3 fuzz/seeds.py
"""

import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def crlf(text):
    return "".join(line.strip() + "\r\n" for line in text.strip().splitlines())


# --- SDP offers -----------------------------------------------------------------------------

# The unit tests' browser offer (src/sdp.rs).
BROWSER = crlf("""
v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
m=audio 9 UDP/TLS/RTP/SAVPF 111 0
c=IN IP4 0.0.0.0
a=mid:0
a=sendrecv
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:0 PCMU/8000
m=video 9 UDP/TLS/RTP/SAVPF 96 102 127
c=IN IP4 0.0.0.0
a=mid:1
a=sendrecv
a=rtpmap:96 VP8/90000
a=rtpmap:102 H264/90000
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:127 H264/90000
a=fmtp:127 packetization-mode=0;profile-level-id=42e01f
""")

# OBS 30 publishing over WHIP: sendonly, H.264 only, no trickle.
OBS = crlf("""
v=0
o=rtc 3432461375 0 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=group:LS 0 1
a=msid-semantic:WMS *
a=setup:actpass
a=ice-ufrag:Xr8f
a=ice-pwd:3sEcOlj2kTYp1WmdXQGb3o
a=ice-options:ice2,trickle
a=fingerprint:sha-256 3C:7A:1B:55:0E:9D:AB:21:4F:09:6C:1E:88:72:DD:90:4B:3A:55:E0:12:9F:C4:07:61:AA:8E:3D:B2:F0:1C:45
m=audio 55555 UDP/TLS/RTP/SAVPF 111
c=IN IP4 192.0.2.7
a=mid:0
a=sendonly
a=ssrc:2912318171 cname:obs
a=ssrc:2912318171 msid:obs audio
a=msid:obs audio
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1
a=candidate:1 1 UDP 2122317823 192.0.2.7 55555 typ host
a=end-of-candidates
m=video 55555 UDP/TLS/RTP/SAVPF 96
c=IN IP4 192.0.2.7
a=mid:1
a=sendonly
a=ssrc:3184172190 cname:obs
a=msid:obs video
a=rtcp-mux
a=rtpmap:96 H264/90000
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtcp-fb:96 goog-remb
a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1
""")

# GStreamer webrtcbin with max-bundle: every section but the first has port 0 and
# a=bundle-only.
WEBRTCBIN = crlf("""
v=0
o=- 6187323462365497424 0 IN IP4 0.0.0.0
s=-
t=0 0
a=ice-options:trickle
a=group:BUNDLE video0 audio1
m=video 9 UDP/TLS/RTP/SAVPF 96
c=IN IP4 0.0.0.0
a=setup:actpass
a=ice-ufrag:cTcTCpYg8zI3ZcJ4mhvqy8ivl3wDzIiB
a=ice-pwd:bcqVQLDcvt0LgrT7ZCZfYEtRD2EJqeRz
a=rtcp-mux
a=rtcp-rsize
a=sendrecv
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 nack pli
a=framerate:30
a=ssrc:1557356543 msid:user2210958298@host-6b2b3e87 webrtctransceiver0
a=ssrc:1557356543 cname:user2210958298@host-6b2b3e87
a=mid:video0
a=fingerprint:sha-256 1E:5F:0B:2D:9C:70:B2:6E:2C:67:3D:04:84:C2:3B:75:5E:92:7C:61:0A:27:AD:C6:91:3B:21:0B:0E:33:4C:7A
m=audio 0 UDP/TLS/RTP/SAVPF 97
c=IN IP4 0.0.0.0
a=bundle-only
a=setup:actpass
a=rtcp-mux
a=sendrecv
a=rtpmap:97 OPUS/48000/2
a=rtcp-fb:97 nack pli
a=fmtp:97 sprop-maxcapturerate=48000;sprop-stereo=0
a=mid:audio1
""")

# A WHEP viewer: recvonly, both codecs, session-level direction.
WHEP = crlf("""
v=0
o=- 2 2 IN IP4 127.0.0.1
s=-
t=0 0
a=recvonly
m=audio 9 UDP/TLS/RTP/SAVPF 111
a=mid:0
a=rtpmap:111 opus/48000/2
m=video 9 UDP/TLS/RTP/SAVPF 102 96 97
a=mid:1
a=rtpmap:102 H264/90000
a=fmtp:102 profile-level-id=42001f;packetization-mode=1
a=rtpmap:96 VP8/90000
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
a=mid:2
a=sctp-port:5000
""")

for name, sdp in [("browser", BROWSER), ("obs", OBS), ("webrtcbin", WEBRTCBIN),
                  ("whep", WHEP)]:
    write("sdp_offer", name + ".sdp", sdp)
write("sdp_offer", "lf-only.sdp", BROWSER.replace("\r\n", "\n"))
write("sdp_offer", "no-codec.sdp", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
      "a=rtpmap:0 PCMU/8000\r\nm=video 9 UDP/TLS/RTP/SAVPF 45\r\na=rtpmap:45 AV1/90000\r\n")
write("sdp_offer", "malformed.sdp", "v=0\r\nm=video\r\n")

# --- signalling ---------------------------------------------------------------------------

CANDIDATE = "candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0"
MESSAGES = {
    "join": {"type": "join", "room": "standup", "name": "Ada Lovelace"},
    "join-unicode": {"type": "join", "room": "team-42_a", "name": "Zoë 🎧"},
    "offer": {"type": "offer", "sdp": BROWSER},
    "offer-webrtcbin": {"type": "offer", "sdp": WEBRTCBIN},
    "candidate": {"type": "candidate",
                  "candidate": {"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0}},
    "candidate-mdns": {"type": "candidate", "candidate": {
        "candidate": "candidate:2 1 udp 2122260223 5c4e.local 60000 typ host",
        "sdpMid": "1"}},
    "candidate-end": {"type": "candidate", "candidate": None},
    "candidate-empty": {"type": "candidate", "candidate": {"candidate": ""}},
    "mute": {"type": "mute", "audio": True, "video": False},
    "mute-video": {"type": "mute", "video": None, "audio": False},
    "chat": {"type": "chat", "text": "hello room"},
    "leave": {"type": "leave"},
    "unknown": {"type": "dance"},
}
for name, msg in MESSAGES.items():
    write("signal_json", name + ".json", json.dumps(msg, ensure_ascii=False))
write("signal_json", "not-object.json", "[1, 2.5e3, \"x\", null, true]")
write("signal_json", "escapes.json",
      '{"type":"chat","text":"\\u00e9\\ud83c\\udfa7\\n\\"q\\"","extra":{"a":[]}}')

# --- configuration ------------------------------------------------------------------------

with open(os.path.join(ROOT, "..", "mixdown.example.toml")) as f:
    write("config", "example.toml", f.read())
write("config", "empty.toml", "")
write("config", "small.toml", """
[server]
host = "0.0.0.0"
http_port = 8443
[rtc]
udp_port = 0
udp_shards = 2
public_ip = "203.0.113.7"
[[rtc.ice_servers]]
urls = ["stun:stun.example.org:3478", "turn:turn.example.org?transport=tcp"]
username = "u"
credential = "p"
[video]
width = 640
height = 360
send_codecs = ["h264"]
tiers = []
[recording]
auto_format = "mp4"
""")
write("config", "tiers.toml", """
[video]
width = 1920
height = 1080
bitrate_kbps = 3000
tiers = [{ width = 960, height = 540, framerate = 30, bitrate_kbps = 900 },
         { width = 480, height = 270, framerate = 15, bitrate_kbps = 200 }]
""")
write("config", "invalid.toml", "[video]\nwidth = 63\n[nope]\nx = 1\n")

# --- URLs and names -----------------------------------------------------------------------

for i, s in enumerate([
    "rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl-mnop",
    "rtmps://live-api-s.facebook.com:443/rtmp/FB-1234567890-0-Abc?s_bl=1&s_sw=0",
    "rtmp://127.0.0.1:1935/live/x",
    "rtmp://user:pa%40ss@[2001:db8::1]:1935/app/key?token=abc",
    "rtmp://ingest.example.com/",
    "rtmp://host",
    "rtmp://evil.com#@127.0.0.1/app",
    "http://x/y",
    "team-42_a",
    "standup-2024-05-01.final",
    "Ada Lovelace",
    "0123456789abcdef",
    "webm",
]):
    write("rtmp_url", "%02d" % i, s)

# --- datagrams, RTP and RTCP --------------------------------------------------------------

SSRC = 0x1A2B3C4D


def rtp(pt, seq, ts, payload, marker=False, ext=None, csrcs=(), padding=0):
    first = 0x80 | (0x20 if padding else 0) | (0x10 if ext else 0) | len(csrcs)
    h = struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq, ts, SSRC)
    for c in csrcs:
        h += struct.pack("!I", c)
    if ext:
        profile, body = ext
        body += b"\0" * (-len(body) % 4)
        h += struct.pack("!HH", profile, len(body) // 4) + body
    pad = b"\0" * (padding - 1) + bytes([padding]) if padding else b""
    return h + payload + pad


def one_byte(*elements):
    """RFC 8285 one-byte header extension elements: (id, value)."""
    return 0xBEDE, b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)


def two_byte(*elements):
    return 0x1000, b"".join(bytes([i, len(v)]) + v for i, v in elements)


LEVEL = (1, bytes([0x80 | 30]))  # voice, -30 dBov
ABS_SEND_TIME = (2, b"\x12\x34\x56")
TWCC = (3, b"\x00\x2a")
MID = (4, b"1")

VP8_KEY = (bytes([0x90, 0x80, 0x80, 0x01])  # X S, I, 15-bit picture id
           + bytes([0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01]) + bytes(range(40)))
VP8_DELTA = bytes([0x90, 0x80, 0x80, 0x02, 0x31, 0x05, 0x00]) + bytes(range(30))
VP8_CONT = bytes([0x80, 0x80, 0x80, 0x01]) + bytes(range(50))
SPS = bytes([0x67, 0x42, 0xE0, 0x1F, 0xDA, 0x01, 0x40, 0x16, 0xEC, 0x04, 0x40])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65, 0x88, 0x84, 0x00, 0x33, 0xFF]) + bytes(range(40))
STAP_A = bytes([0x78]) + struct.pack("!H", len(SPS)) + SPS + struct.pack("!H", len(PPS)) + PPS
FU_START = bytes([0x7C, 0x85]) + bytes(range(60))
FU_MID = bytes([0x7C, 0x05]) + bytes(range(60, 120))
FU_END = bytes([0x7C, 0x45]) + bytes(range(120, 150))
NON_IDR = bytes([0x41, 0x9A, 0x02]) + bytes(range(20))
OPUS = bytes([0x78, 0x0B, 0xE4, 0xC1, 0x36, 0xEC, 0xC5, 0x80, 0xBE, 0xEF])

packets = {
    "vp8-key": rtp(96, 1000, 90000, VP8_KEY, ext=one_byte(ABS_SEND_TIME, TWCC, MID)),
    "vp8-cont": rtp(96, 1001, 90000, VP8_CONT, marker=True, ext=one_byte(TWCC)),
    "vp8-delta": rtp(96, 1002, 93000, VP8_DELTA, marker=True),
    "h264-stap-a": rtp(102, 5, 180000, STAP_A, ext=one_byte(TWCC, MID)),
    "h264-idr": rtp(102, 6, 180000, IDR, marker=True),
    "h264-fu-a-start": rtp(102, 7, 183000, FU_START),
    "h264-fu-a-mid": rtp(102, 8, 183000, FU_MID),
    "h264-fu-a-end": rtp(102, 9, 183000, FU_END, marker=True),
    "h264-non-idr": rtp(102, 10, 186000, NON_IDR, marker=True, csrcs=(7, 8)),
    "opus-level": rtp(111, 40000, 960, OPUS, marker=True, ext=one_byte(LEVEL, TWCC)),
    "opus-level-two-byte": rtp(111, 40001, 1920, OPUS, ext=two_byte(LEVEL, (5, b""))),
    "opus-padding": rtp(111, 40002, 2880, OPUS, ext=one_byte(LEVEL), padding=4),
    "padding-only": rtp(96, 1003, 93000, b"", padding=200 % 256),
}
for name, p in packets.items():
    write("rtp", name, p)


def rtcp(count, pt, body):
    body += b"\0" * (-len(body) % 4)
    return struct.pack("!BBH", 0x80 | count, pt, len(body) // 4) + body


MEDIA = 0x0BADCAFE
report_block = struct.pack("!IIIIII", MEDIA, (25 << 24) | 3, 0x0001_0203, 40, 0x1234_5678, 655)
rr = rtcp(1, 201, struct.pack("!I", SSRC) + report_block)
sr = rtcp(1, 200, struct.pack("!IIIIII", SSRC, 0xE8D4_A510, 0x8000_0000, 90000, 50, 50_000)
          + report_block)
sdes = rtcp(1, 202, struct.pack("!I", SSRC) + bytes([1, 4]) + b"abcd" + b"\0")
pli = rtcp(1, 206, struct.pack("!II", SSRC, MEDIA))
fir = rtcp(4, 206, struct.pack("!IIIB3x", SSRC, 0, MEDIA, 7))
remb = rtcp(15, 206, struct.pack("!II", SSRC, 0) + b"REMB" + bytes([1, (3 << 2) | 0x01, 0x86, 0xA0])
            + struct.pack("!I", MEDIA))
nack = rtcp(1, 205, struct.pack("!IIHH", SSRC, MEDIA, 1000, 0b101))
twcc = rtcp(15, 205, struct.pack("!IIHHI", SSRC, MEDIA, 10, 3, (1 << 8) | 0)
            + struct.pack("!HH", 0x2003, 0) + bytes([4, 8, 12]))
bye = rtcp(1, 203, struct.pack("!I", SSRC))
for name, p in {"rtcp-rr-pli": rr + pli, "rtcp-sr-sdes": sr + sdes, "rtcp-fir": rr + fir,
                "rtcp-remb": rr + remb, "rtcp-nack": nack, "rtcp-twcc": twcc,
                "rtcp-bye": rr + bye}.items():
    write("rtp", name, p)

MAGIC = b"\x21\x12\xa4\x42"


def stun(msg_type, attrs):
    body = b""
    for t, v in attrs:
        body += struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)
    return struct.pack("!HH", msg_type, len(body)) + MAGIC + bytes(range(12)) + body


request = stun(0x0001, [(0x0006, b"srvUfrag:cliUfrag"), (0x0024, b"\x6e\x00\x1e\xff"),
                        (0x802A, bytes(8)), (0x0025, b""), (0x0008, bytes(20)),
                        (0x8028, b"\x5a\x1b\x2c\x3d")])
success = stun(0x0101, [(0x0020, b"\x00\x01\xa1\x47\xe1\x12\xa6\x43"), (0x0008, bytes(20))])
write("rtp", "stun-binding-request", request)
write("rtp", "stun-binding-success", success)
write("rtp", "dtls-client-hello", bytes([22, 254, 253, 0, 0]) + bytes(6) + b"\x00\x10"
      + bytes([1, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 4, 254, 253, 0, 0]))


def framed(*ps):
    """RFC 4571: what an ICE-TCP connection carries."""
    return b"".join(struct.pack("!H", len(p)) + p for p in ps)


write("rtp", "tcp-stream", framed(request, packets["vp8-key"], packets["vp8-cont"],
                                  packets["vp8-delta"], rr + pli))
write("rtp", "tcp-stream-audio", framed(*(rtp(111, 100 + i, 960 * i, OPUS, ext=one_byte(LEVEL))
                                          for i in (0, 1, 3, 2, 2, 5000))))
