//! The shared media port: many sessions on one socket, and only what passed ICE gets in.

use crate::browser::{assert_decoded_the_mix, chromium_report};
use crate::common::client::{Client, ClientOptions, whip_exchange};
use crate::common::netns::NetNs;
use crate::common::{TestServer, init_logging, test_config, udp_sockets_on_port, wait_for};
use crate::e2e::{BLUE, GREEN, RED, TONES, assert_hears, assert_tiles};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Hang guard only.
const LIMIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_peers_and_two_viewers_share_one_udp_socket() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = format!("http://{}", server.addr);
    let port = server.state.rooms.peers().media_addrs()[0].port();
    let room = "crowd";
    let quiet = |colour| ClientOptions {
        decode: false,
        tone_hz: None,
        ..ClientOptions::participant(colour, 0.0)
    };
    let loud = |(colour, _): (u32, [u8; 3]), tone| ClientOptions {
        decode: false,
        ..ClientOptions::participant(colour, tone)
    };
    let mut peers = vec![
        Client::join(&base, room, loud(RED, TONES[0])).await,
        Client::join(&base, room, loud(GREEN, TONES[1])).await,
        Client::join(&base, room, loud(BLUE, TONES[2])).await,
    ];
    for _ in 3..20 {
        peers.push(Client::join(&base, room, quiet(0xff808080)).await);
    }
    let viewers = [
        Client::join(&base, room, ClientOptions::viewer()).await,
        Client::join(&base, room, ClientOptions::viewer()).await,
    ];
    assert_eq!(server.state.rooms.peers().sessions_open(), 22);
    wait_for("every peer receives the composite", LIMIT, || async {
        peers.iter().all(|p| {
            p.received.rtp_frames.lock().unwrap().len() > 5 && p.received.audio_packet_count() > 5
        })
    })
    .await;
    for v in &viewers {
        wait_for("the viewer decodes", LIMIT, || async {
            v.received.frame_count() > 10
        })
        .await;
        let who: Vec<(&str, [u8; 3])> = peers[..3]
            .iter()
            .zip([RED.1, GREEN.1, BLUE.1])
            .map(|(p, c)| (p.location.as_str(), c))
            .collect();
        assert_tiles(&server, room, &v.received, &who).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_hears("viewer", &v.received, &TONES, &[]);
    }
    // One socket per shard serves them all: what `ss -uan` lists on the media port.
    let shards = server.state.rooms.config().rtc.udp_shards();
    assert_eq!(server.state.rooms.peers().media_addrs().len(), 1);
    assert_eq!(server.state.rooms.peers().udp_sockets(), shards);
    assert_eq!(
        udp_sockets_on_port(port),
        shards,
        "one UDP socket per shard on port {port}, for 22 sessions"
    );
    let stats = server.state.rooms.peers().transport_stats();
    assert_eq!(stats.queue_full, 0, "{stats:?}");

    for p in peers {
        p.leave().await;
    }
    for v in viewers {
        v.leave().await;
    }
    let rooms = server.state.rooms.clone();
    wait_for("every session ends", LIMIT, || async {
        rooms.peers().sessions_open() == 0 && rooms.room_count() == 0
    })
    .await;
    assert_eq!(
        udp_sockets_on_port(port),
        shards,
        "the media sockets stay for the next room"
    );
    server.stop().await;
}

/// Counts what the man in the middle did.
#[derive(Default)]
struct Relay {
    /// RTP packets from the client forwarded once each.
    rtp: AtomicU64,
    /// Copies of SRTP/SRTCP datagrams sent again from the validated address.
    replayed: AtomicU64,
    /// Copies sent from an address that never did ICE.
    spoofed: AtomicU64,
}

/// A UDP relay between one client and the server: everything passes, every SRTP/SRTCP datagram
/// from the client is sent twice (a replay from the address ICE validated), and every fifth is
/// also sent from a second socket (an address that did no ICE).
async fn relay(sock: Arc<UdpSocket>, spoof: UdpSocket, server: SocketAddr, counts: Arc<Relay>) {
    let mut client: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 2048];
    let mut media = 0u64;
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let d = &buf[..n];
        if from == server {
            if let Some(c) = client {
                let _ = sock.send_to(d, c).await;
            }
            continue;
        }
        client = Some(from);
        let _ = sock.send_to(d, server).await;
        if (128..=191).contains(&d[0]) {
            if !(192..=223).contains(&d[1]) {
                counts.rtp.fetch_add(1, Ordering::Relaxed);
            }
            let _ = sock.send_to(d, server).await;
            counts.replayed.fetch_add(1, Ordering::Relaxed);
            media += 1;
            if media.is_multiple_of(5) {
                let _ = spoof.send_to(d, server).await;
                counts.spoofed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The answer's candidates, pointed at `port` instead of the server's.
fn via_port(answer: &str, server_port: u16, port: u16) -> String {
    answer.replace(
        &format!(" {server_port} typ host"),
        &format!(" {port} typ host"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_only_from_the_address_that_passed_ice_and_never_twice() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = format!("http://{}", server.addr);
    let media = server.state.rooms.peers().media_addrs()[0];
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let relay_port = sock.local_addr().unwrap().port();
    let spoof = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let counts = Arc::new(Relay::default());
    let task = tokio::spawn(relay(Arc::clone(&sock), spoof, media, Arc::clone(&counts)));

    let url = format!("{base}/whip/guarded");
    let client = Client::connect(
        &base,
        ClientOptions::participant(RED.0, TONES[0]),
        async move |offer: String| {
            // The server learns the client only through the relay (a peer-reflexive address).
            let offer: String = offer
                .split_inclusive('\n')
                .filter(|l| !l.starts_with("a=candidate:"))
                .collect();
            let (location, answer) = whip_exchange(&url, offer).await?;
            Ok((location, via_port(&answer, media.port(), relay_port)))
        },
    )
    .await
    .expect("joins through the relay");
    wait_for("the client decodes the composite", LIMIT, || async {
        client.received.frame_count() > 30
    })
    .await;
    // Media from the real peer carries on: its own colour is in its tile, its tone in the mix.
    assert_tiles(
        &server,
        "guarded",
        &client.received,
        &[(client.location.as_str(), RED.1)],
    )
    .await;
    let viewer = Client::join(&base, "guarded", ClientOptions::viewer()).await;
    wait_for("the viewer decodes", LIMIT, || async {
        viewer.received.frame_count() > 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_hears("viewer", &viewer.received, &[TONES[0]], &[]);

    task.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = server.state.rooms.peers().transport_stats();
    let (rtp, replayed, spoofed) = (
        counts.rtp.load(Ordering::Relaxed),
        counts.replayed.load(Ordering::Relaxed),
        counts.spoofed.load(Ordering::Relaxed),
    );
    eprintln!(
        "relay: {rtp} RTP forwarded, {replayed} replayed, {spoofed} spoofed; server: {stats:?}"
    );
    assert!(rtp > 100 && spoofed > 20, "the relay carried media");
    assert!(
        stats.unvalidated >= spoofed,
        "every datagram from the unvalidated address is dropped and counted: {stats:?}"
    );
    // Every packet arrived twice from the validated address; SRTP let each in once. (The
    // viewer's own RTP does not count: it publishes nothing.)
    assert!(
        stats.rtp_received <= rtp,
        "replays were accepted: {} RTP decrypted for {rtp} sent",
        stats.rtp_received
    );
    assert!(
        stats.rtp_received * 10 >= rtp * 9,
        "media was lost: {} of {rtp}",
        stats.rtp_received
    );
    client.leave().await;
    viewer.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_reaches_only_tcp_connects_over_ice_tcp() {
    init_logging();
    if let Some(why) = crate::common::netns::unavailable() {
        eprintln!("SKIPPED: network namespaces unavailable here: {why}");
        return;
    }
    // Chromium lives behind a link where UDP to the media port is dropped.
    let ns = NetNs::create(&format!("mdtcp{}", std::process::id() % 100_000), 77)
        .expect("test namespace");
    let mut config = test_config();
    config.server.host = ns.host_ip.into();
    let port = config.rtc.udp_port;
    let server = TestServer::start(config).await;
    let port_s = port.to_string();
    let host_s = ns.host_ip.to_string();
    ns.exec(&[
        "iptables", "-A", "OUTPUT", "-p", "udp", "-d", &host_s, "--dport", &port_s, "-j", "DROP",
    ])
    .expect("iptables rule in the namespace");

    let room = "tcp-only";
    let tone = Client::join(
        &server.url(""),
        room,
        ClientOptions {
            bind_ip: ns.host_ip.into(),
            ..ClientOptions::participant(RED.0, 700.0)
        },
    )
    .await;
    let (report, joined) = chromium_report(&server, room, ns.host_ip.into(), Some(&ns), "").await;
    assert!(report.get("error").is_none(), "page error: {report}");
    assert!(joined, "the server never decoded Chromium's camera");
    let last = assert_decoded_the_mix(&report);
    assert_eq!(last["protocol"], "tcp", "Chromium's selected pair: {last}");
    let stats = server.state.rooms.peers().transport_stats();
    assert!(stats.delivered > 100, "{stats:?}");
    tone.leave().await;
    server.stop().await;
    drop(ns);
}

/// This process's open file descriptors, by what they point at ("socket:[123]", a path…).
fn open_fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd").map_or(Vec::new(), |d| {
        d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .collect()
    })
}

/// "socket:[inode]" with the `/proc/net` table and line it appears in.
fn describe_socket(fd: &str) -> String {
    let Some(inode) = fd
        .strip_prefix("socket:[")
        .and_then(|r| r.strip_suffix(']'))
    else {
        return fd.to_owned();
    };
    for table in ["tcp", "tcp6", "udp", "udp6", "unix", "netlink"] {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == inode))
        {
            return format!(
                "{table}: {}",
                line.split_whitespace()
                    .take(4)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    fd.to_owned()
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_come_and_go_200_times_and_leave_nothing_behind() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = format!("http://{}", server.addr);
    let peers = server.state.rooms.peers().clone();
    let room = "churn";
    // One participant keeps the room (and its pipeline) open throughout.
    let anchor = Client::join(
        &base,
        room,
        ClientOptions {
            decode: false,
            ..ClientOptions::participant(RED.0, TONES[0])
        },
    )
    .await;
    let viewer = || ClientOptions {
        decode: false,
        ..ClientOptions::viewer()
    };
    let cycle = async |i: usize| {
        let v = Client::join(&base, room, viewer()).await;
        if i.is_multiple_of(20) {
            // Now and then all the way to media, so DTLS and SRTP come and go too.
            wait_for("the viewer receives", LIMIT, || async {
                v.received.rtp_frames.lock().unwrap().len() > 2
            })
            .await;
        }
        assert_eq!(v.leave().await, 200);
    };
    for i in 0..10 {
        cycle(i).await;
    }
    let settle = async || {
        wait_for("only the anchor is left", LIMIT, || async {
            peers.sessions_open() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    settle().await;
    let (fds0, rss0) = (open_fds(), rss_mib());
    for i in 0..200 {
        cycle(i).await;
    }
    settle().await;
    // The clients' webrtc-rs drivers close their sockets on their own time.
    let inet = |fds: &[String]| {
        fds.iter()
            .filter(|f| {
                let d = describe_socket(f);
                d.starts_with("tcp") || d.starts_with("udp")
            })
            .count()
    };
    let mut fds = open_fds();
    for _ in 0..50 {
        if inet(&fds) <= inet(&fds0) + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        fds = open_fds();
    }
    let rss = rss_mib();
    let new: Vec<String> = fds
        .iter()
        .filter(|f| !fds0.contains(f))
        .map(|f| describe_socket(f))
        .collect();
    eprintln!(
        "200 sessions later: fds {} -> {} (new: {new:?}), RSS {rss0:.0} -> {rss:.0} MiB",
        fds0.len(),
        fds.len()
    );
    // Network sockets come back (two for an HTTP keep-alive connection at most); other
    // descriptors may grow by a constant (GStreamer's and tokio's own), never per session.
    assert!(
        inet(&fds) <= inet(&fds0) + 2,
        "sockets leak: {} -> {} UDP/TCP: {new:?}",
        inet(&fds0),
        inet(&fds)
    );
    assert!(
        fds.len() <= fds0.len() + 10,
        "file descriptors leak: {} -> {}: {new:?}",
        fds0.len(),
        fds.len()
    );
    // 200 sessions leaking even 250 KB each would show.
    assert!(rss < rss0 + 50.0, "memory grows: {rss0:.0} -> {rss:.0} MiB");
    let stats = peers.transport_stats();
    assert_eq!(stats.sessions, 1, "{stats:?}");
    // The room still works for the one who stayed.
    wait_for("the anchor still receives", LIMIT, || async {
        anchor.received.audio_packet_count() > 100
    })
    .await;
    anchor.leave().await;
    server.stop().await;
}

/// A remote candidate line for `port` on loopback.
fn loopback_candidate(i: usize, port: u16) -> String {
    format!(
        "candidate:{} 1 udp 2130706431 127.0.0.1 {port} typ host",
        100 + i
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_and_its_trickle_make_the_server_check_at_most_16_candidates() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = format!("http://{}", server.addr);
    let room = "candidates";
    // Forty sockets stand in for remote candidates; each counts the checks it is sent.
    let mut socks = Vec::new();
    for _ in 0..40 {
        socks.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let ports: Vec<u16> = socks
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    let checked: Vec<Arc<AtomicU64>> = (0..40).map(|_| Arc::default()).collect();
    let listeners: Vec<_> = socks
        .into_iter()
        .zip(checked.clone())
        .map(|(s, n)| {
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while let Ok((len, _)) = s.recv_from(&mut buf).await {
                    if len >= 20 && buf[0] < 4 {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // An offer naming the first ten as its candidates (the client's own are removed, and it
    // never answers checks: only the server's sending is watched).
    let url = format!("{base}/whip/{room}");
    let offer_candidates: String = ports[..10]
        .iter()
        .enumerate()
        .map(|(i, p)| format!("a={}\r\n", loopback_candidate(i, *p)))
        .collect();
    let location = Arc::new(std::sync::Mutex::new(None));
    let seen = Arc::clone(&location);
    let _ = Client::connect(
        &base,
        ClientOptions::participant(RED.0, TONES[0]),
        async move |offer: String| {
            let mut out = String::new();
            for line in offer.split_inclusive('\n') {
                if line.starts_with("a=candidate:") {
                    continue;
                }
                out.push_str(line);
                if line.starts_with("a=mid:0") {
                    out.push_str(&offer_candidates);
                }
            }
            let (loc, _answer) = whip_exchange(&url, out).await?;
            *seen.lock().unwrap() = Some(loc);
            Err("the test stops the client here".to_owned())
        },
    )
    .await;
    let location = location
        .lock()
        .unwrap()
        .clone()
        .expect("the server answered");
    let session = mixdown::ids::SessionId::parse(
        mixdown::ids::SessionId::public_in_location(&location).unwrap(),
    )
    .unwrap();
    let room_id = mixdown::ids::RoomId::parse(room).unwrap();
    // Thirty more trickled: six fit the budget of sixteen, the rest are refused.
    let mut refused = 0;
    for (i, p) in ports[10..].iter().enumerate() {
        let c = mixdown::signal::CandidateInit {
            candidate: loopback_candidate(10 + i, *p),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        };
        if let Err(e) = server.state.rooms.add_candidate(&room_id, session, c).await {
            assert!(e.to_string().contains("at most 16"), "{e}");
            refused += 1;
        }
    }
    assert_eq!(refused, 24, "the offer's ten and six trickled are taken");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reached: Vec<usize> = (0..40)
        .filter(|&i| checked[i].load(Ordering::Relaxed) > 0)
        .collect();
    eprintln!("candidates checked by the server: {reached:?}");
    assert!(
        reached.len() <= 16,
        "checks went to {} addresses: {reached:?}",
        reached.len()
    );
    assert!(
        reached.iter().all(|&i| i < 16),
        "a refused candidate was checked: {reached:?}"
    );
    assert!(
        reached.len() >= 8,
        "the server checks what it took: {reached:?}"
    );
    for l in listeners {
        l.abort();
    }
    server.stop().await;
}
