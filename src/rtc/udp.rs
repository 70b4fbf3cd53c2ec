//! The shared media sockets: on the one configured port, one UDP socket per local address and
//! shard, shared by every peer connection. Shards are sockets bound to the same address with
//! `SO_REUSEPORT`: the kernel hashes each remote address to one of them, so a peer's
//! datagrams always reach the same reader, and the readers of several shards run on several
//! cores. A reader task per socket takes datagrams in batches (`recvmmsg`) and hands each to
//! the [`Router`]; drivers send their packets in batches (`sendmmsg`), each session from one
//! shard. Linux only (the project's target); nothing here decides anything.

use super::router::{Datagram, Router};
use bytes::BytesMut;
use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams taken per `recvmmsg` call.
const RECV_BATCH: usize = 32;
/// Packets given to one `sendmmsg` call (a composite frame at 720p is 5–15 packets).
pub const SEND_BATCH: usize = 64;
/// Bytes of one receive slot; a larger datagram is truncated by the kernel and dropped here.
const SLOT: usize = 2048;
/// Kernel socket buffers asked for (a burst of keyframes to many receivers needs room).
const SOCKET_BUFFER: libc::c_int = 4 << 20;
/// Where received datagrams are copied: one allocation serves many datagrams.
const ARENA: usize = 256 << 10;

/// One bound media socket and the address ICE advertises for it.
pub struct MediaSocket {
    pub local: SocketAddr,
    socket: UdpSocket,
}

/// Every media socket of the process.
pub struct Sockets {
    list: Vec<Arc<MediaSocket>>,
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

impl Sockets {
    /// Binds `port` `shards` times on each of `ips` (port 0: the first socket picks a free
    /// port and the others take the same one).
    pub fn bind(ips: &[IpAddr], port: u16, shards: usize) -> io::Result<Self> {
        let mut list = Vec::new();
        let mut port = port;
        for &ip in ips {
            for _ in 0..shards.max(1) {
                let std = bind_one(SocketAddr::new(ip, port), shards > 1)?;
                grow_buffers(&std);
                let local = std.local_addr()?;
                port = local.port();
                list.push(Arc::new(MediaSocket {
                    local,
                    socket: UdpSocket::from_std(std)?,
                }));
            }
        }
        Ok(Self { list })
    }

    /// The local addresses (each once, however many shards it has).
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        // Shards of an address are bound one after another, so a change of address is new.
        let mut last = None;
        self.list.iter().filter_map(move |s| {
            let new = last != Some(s.local);
            last = Some(s.local);
            new.then_some(s.local)
        })
    }

    /// Sockets in all, shards included.
    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// Starts one reader per socket; they end when `router` is the last thing holding them.
    pub fn spawn_readers(&self, router: &Arc<Router>) -> Vec<tokio::task::AbortHandle> {
        self.list
            .iter()
            .map(|s| tokio::spawn(read_loop(Arc::clone(s), Arc::clone(router))).abort_handle())
            .collect()
    }

    /// A socket bound to `local` (the `shard`th of its shards, wrapping), or the first one.
    pub fn for_local(&self, local: SocketAddr, shard: usize) -> &MediaSocket {
        let n = self.list.iter().filter(|s| s.local == local).count();
        self.list
            .iter()
            .filter(|s| s.local == local)
            .nth(shard % n.max(1))
            .unwrap_or(&self.list[0])
    }
}

fn grow_buffers(s: &std::net::UdpSocket) {
    let fd = s.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let v = SOCKET_BUFFER;
        let len = size_of::<libc::c_int>() as libc::socklen_t;
        let p = &v as *const libc::c_int as *const libc::c_void;
        // SAFETY: a valid fd and a pointer to an int of the stated length. The FORCE variant
        // needs CAP_NET_ADMIN; without it the plain one is capped by net.core.*mem_max.
        unsafe {
            if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len);
            }
        }
    }
}

async fn read_loop(socket: Arc<MediaSocket>, router: Arc<Router>) {
    let mut slots = vec![[0u8; SLOT]; RECV_BATCH];
    // SAFETY: sockaddr_storage and mmsghdr are plain C structs for which all-zero is valid.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; RECV_BATCH];
    // Lengths and flags of the datagrams of the last call (the kernel's headers hold raw
    // pointers, so they live only inside the call, never across an await).
    let mut got_len = [(0usize, 0 as libc::c_int); RECV_BATCH];
    let mut arena = BytesMut::with_capacity(ARENA);
    let fd = socket.socket.as_raw_fd();
    loop {
        if let Err(e) = socket.socket.readable().await {
            tracing::error!(local = %socket.local, "media socket: {e}");
            return;
        }
        let got = socket.socket.try_io(Interest::READABLE, || {
            recvmmsg(fd, &mut slots, &mut names, &mut got_len)
        });
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ICMP errors (a peer's port closed) surface here as ECONNREFUSED and the like:
                // they concern one peer, never the socket.
                tracing::trace!(local = %socket.local, "media socket receive: {e}");
                continue;
            }
        };
        let at = Instant::now();
        let bytes: usize = got_len[..n].iter().map(|(len, _)| *len).sum();
        crate::metrics::add(&crate::metrics::METRICS.udp_datagrams_received, n as u64);
        crate::metrics::add(&crate::metrics::METRICS.udp_bytes_received, bytes as u64);
        for i in 0..n {
            let (len, flags) = got_len[i];
            if flags & libc::MSG_TRUNC != 0 || len == 0 {
                continue;
            }
            let Some(from) = to_socket_addr(&names[i]) else {
                continue;
            };
            if arena.capacity() < len {
                arena = BytesMut::with_capacity(ARENA);
            }
            arena.extend_from_slice(&slots[i][..len]);
            let data = arena.split();
            router.deliver(Datagram {
                data,
                from,
                local: socket.local,
                at,
                tcp: false,
            });
        }
    }
}

/// One `recvmmsg` into `slots`: how many datagrams came, with each one's length and flags in
/// `got` and its source in `names`.
fn recvmmsg(
    fd: libc::c_int,
    slots: &mut [[u8; SLOT]],
    names: &mut [libc::sockaddr_storage],
    got: &mut [(usize, libc::c_int); RECV_BATCH],
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid iovec and mmsghdr.
    let mut iovecs: [libc::iovec; RECV_BATCH] = unsafe { zeroed() };
    let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { zeroed() };
    let n = slots.len().min(names.len()).min(RECV_BATCH);
    for i in 0..n {
        iovecs[i] = libc::iovec {
            iov_base: slots[i].as_mut_ptr() as *mut libc::c_void,
            iov_len: SLOT,
        };
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
        h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_iov = &mut iovecs[i];
        h.msg_iovlen = 1;
    }
    // SAFETY: the first n headers point at live buffers of the stated sizes, borrowed for
    // the duration of the call.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = r as usize;
    for i in 0..r {
        got[i] = (msgs[i].msg_len as usize, msgs[i].msg_hdr.msg_flags);
    }
    Ok(r)
}

/// Sends `packets` (destination, bytes) from `socket`, as few `sendmmsg` calls as it takes.
/// A packet the kernel refuses (an unroutable or invalid destination) is skipped, not retried.
pub async fn send_batch(socket: &MediaSocket, packets: &[(SocketAddr, &[u8])]) {
    let mut done = 0;
    while done < packets.len() {
        let end = (done + SEND_BATCH).min(packets.len());
        let chunk = &packets[done..end];
        let result = socket
            .socket
            .async_io(Interest::WRITABLE, || sendmmsg(&socket.socket, chunk))
            .await;
        match result {
            Ok(sent) => {
                let sent = sent.min(chunk.len());
                let bytes: usize = chunk[..sent].iter().map(|(_, b)| b.len()).sum();
                crate::metrics::add(&crate::metrics::METRICS.udp_datagrams_sent, sent as u64);
                crate::metrics::add(&crate::metrics::METRICS.udp_bytes_sent, bytes as u64);
                done += sent.max(1);
            }
            Err(e) => {
                tracing::debug!(to = %chunk[0].0, "media send: {e}");
                done += 1;
            }
        }
    }
}

/// One `sendmmsg`: how many packets went, or the error of the first one (WouldBlock makes the
/// caller wait for the socket).
fn sendmmsg(socket: &UdpSocket, chunk: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
    let mut names: [MaybeUninit<libc::sockaddr_storage>; SEND_BATCH] =
        [const { MaybeUninit::uninit() }; SEND_BATCH];
    let mut lens = [0 as libc::socklen_t; SEND_BATCH];
    let mut iovecs: [MaybeUninit<libc::iovec>; SEND_BATCH] =
        [const { MaybeUninit::uninit() }; SEND_BATCH];
    // SAFETY: all-zero is a valid mmsghdr.
    let mut msgs: [libc::mmsghdr; SEND_BATCH] = unsafe { zeroed() };
    for (i, (to, data)) in chunk.iter().enumerate() {
        lens[i] = write_sockaddr(*to, &mut names[i]);
        iovecs[i].write(libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        });
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = names[i].as_mut_ptr() as *mut libc::c_void;
        h.msg_namelen = lens[i];
        h.msg_iov = iovecs[i].as_mut_ptr();
        h.msg_iovlen = 1;
    }
    // SAFETY: the first chunk.len() headers are initialised and point at live buffers; the
    // kernel only reads them (the data is never written through the cast pointers).
    let n = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            chunk.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_sockaddr(
    addr: SocketAddr,
    out: &mut MaybeUninit<libc::sockaddr_storage>,
) -> libc::socklen_t {
    // SAFETY: all-zero is a valid sockaddr_storage; the casts below write within its size.
    let storage = out.write(unsafe { zeroed() });
    match addr {
        SocketAddr::V4(a) => {
            let sin = storage as *mut _ as *mut libc::sockaddr_in;
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            }
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = storage as *mut _ as *mut libc::sockaddr_in6;
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_addr.s6_addr = a.ip().octets();
                (*sin6).sin6_flowinfo = a.flowinfo();
                (*sin6).sin6_scope_id = a.scope_id();
            }
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The addresses of this machine's interfaces, for binding the wildcard: IPv4 and global IPv6,
/// loopback included (a local client reaches the server there), link-local left out (it
/// needs a scope a candidate cannot carry).
pub fn interface_ips(v6: bool) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as libc::c_uint == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and at least as large as its family's sockaddr.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
        let storage = {
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut st: libc::sockaddr_storage = unsafe { zeroed() };
            let size = match family {
                libc::AF_INET => size_of::<libc::sockaddr_in>(),
                libc::AF_INET6 if v6 => size_of::<libc::sockaddr_in6>(),
                _ => continue,
            };
            // SAFETY: copies `size` bytes of the family's sockaddr into the larger storage.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    ifa.ifa_addr as *const u8,
                    &mut st as *mut _ as *mut u8,
                    size,
                )
            };
            st
        };
        let Some(addr) = to_socket_addr(&storage) else {
            continue;
        };
        let ip = addr.ip();
        let link_local = match ip {
            IpAddr::V4(v) => v.is_link_local(),
            IpAddr::V6(v) => v.segments()[0] & 0xffc0 == 0xfe80,
        };
        if !link_local && !out.contains(&ip) {
            out.push(ip);
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip() {
        for a in [
            "127.0.0.1:20000".parse::<SocketAddr>().unwrap(),
            "[2001:db8::7]:443".parse().unwrap(),
        ] {
            let mut st = MaybeUninit::uninit();
            write_sockaddr(a, &mut st);
            // SAFETY: write_sockaddr initialised it.
            assert_eq!(to_socket_addr(unsafe { st.assume_init_ref() }), Some(a));
        }
    }

    #[tokio::test]
    async fn batches_reach_the_router_and_invalid_destinations_are_skipped() {
        let sockets = Sockets::bind(&["127.0.0.1".parse().unwrap()], 0, 2).unwrap();
        assert_eq!(sockets.count(), 2);
        let local = sockets.addrs().next().unwrap();
        assert_eq!(sockets.addrs().count(), 1, "two shards of one address");
        let router = Arc::new(Router::default());
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        router.register(1, "ufrag", tx);
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = peer.local_addr().unwrap();
        router.validate(1, from);
        let tasks = sockets.spawn_readers(&router);
        // Port 0 is refused by the kernel (EINVAL); the rest still go.
        let port0: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let out = [0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let back: Vec<(SocketAddr, &[u8])> = (0..100)
            .map(|i| (if i == 3 { port0 } else { from }, &out[..]))
            .collect();
        send_batch(sockets.for_local(local, 1), &back).await;
        let mut buf = [0u8; 64];
        peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for _ in 0..99 {
            let (n, src) = peer.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], src), (&out[..], local));
        }
        for i in 0..10u8 {
            peer.send_to(&[0x80, 96, 0, i], local).unwrap();
        }
        for i in 0..10u8 {
            let d = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (&d.data[..], d.from, d.local),
                (&[0x80, 96, 0, i][..], from, local)
            );
        }
        for t in tasks {
            t.abort();
        }
    }
}
