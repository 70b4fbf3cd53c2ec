//! ICE over TCP for clients whose network blocks UDP: a passive candidate (RFC 6544) on the
//! media port number, with RFC 4571 framing (a 16-bit length before each packet). A client
//! connects, its first frame must be a STUN check naming a session, and from then on its
//! frames go through the same [`Router`] as UDP datagrams: the same validation applies.
//! Writes to a connection go through a bounded queue; when it is full they are dropped, as a
//! full UDP socket buffer would.

use super::router::{Datagram, Router};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Open ICE-TCP connections the server accepts at once; more are refused at accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection must name a session within this long, and is closed after this long silent.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Framed packets waiting to be written to one connection (a frame of video for a
/// receiver is ~15 packets); beyond this they are dropped.
const WRITE_QUEUE: usize = 256;

/// RFC 4571 deframing, pure: bytes in, whole packets out.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, if one has arrived.
    pub fn next_packet(&mut self) -> Option<BytesMut> {
        if self.buf.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
        if self.buf.len() < 2 + len {
            return None;
        }
        self.buf.advance(2);
        Some(self.buf.split_to(len))
    }
}

/// `packet` with its RFC 4571 length prefix, or `None` if it is too long to frame.
pub fn frame(packet: &[u8]) -> Option<Bytes> {
    let len = u16::try_from(packet.len()).ok()?;
    let mut out = BytesMut::with_capacity(packet.len() + 2);
    out.put_u16(len);
    out.extend_from_slice(packet);
    Some(out.freeze())
}

/// The open connections, by the client's address, for the drivers to write to.
#[derive(Default)]
pub struct TcpConns {
    writers: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
}

impl TcpConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Bytes>>> {
        // Single inserts and removes: a poisoned map is still consistent.
        self.writers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Queues `packet` for the connection from `to`; false if there is none or it is full.
    pub fn send(&self, to: SocketAddr, packet: &[u8]) -> bool {
        let Some(framed) = frame(packet) else {
            return false;
        };
        self.lock()
            .get(&to)
            .is_some_and(|w| w.try_send(framed).is_ok())
    }
}

/// Accepts ICE-TCP connections on `listener` (whose address is the passive candidate's).
pub async fn accept_loop(listener: TcpListener, router: Arc<Router>, conns: Arc<TcpConns>) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                tracing::warn!(%local, "ICE-TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if conns.count() >= MAX_CONNECTIONS {
            tracing::debug!(%from, "ICE-TCP connection refused: {MAX_CONNECTIONS} open");
            continue;
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            from,
            local,
            Arc::clone(&router),
            Arc::clone(&conns),
        ));
    }
}

async fn connection(
    stream: TcpStream,
    from: SocketAddr,
    local: SocketAddr,
    router: Arc<Router>,
    conns: Arc<TcpConns>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    conns.lock().insert(from, tx);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 8192];
    let mut named = false;
    loop {
        let wait = if named {
            IDLE_TIMEOUT
        } else {
            FIRST_FRAME_TIMEOUT
        };
        let n = match tokio::time::timeout(wait, rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        decoder.extend(&buf[..n]);
        let mut refused = false;
        while let Some(packet) = decoder.next_packet() {
            let delivered = router.deliver(Datagram {
                data: packet,
                from,
                local,
                at: Instant::now(),
                tcp: true,
            });
            if !named && !delivered {
                refused = true;
                break;
            }
            named = true;
        }
        if refused {
            tracing::debug!(%from, "ICE-TCP connection named no session; closed");
            break;
        }
    }
    conns.lock().remove(&from);
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_join_anywhere() {
        let packets: Vec<Vec<u8>> = vec![vec![1; 5], vec![], vec![2; 1300], vec![3; 1]];
        let mut wire = Vec::new();
        for p in &packets {
            wire.extend_from_slice(&frame(p).unwrap());
        }
        for chunk in [1, 2, 3, 7, 100, wire.len()] {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                d.extend(c);
                while let Some(p) = d.next_packet() {
                    got.push(p.to_vec());
                }
            }
            assert_eq!(got, packets, "chunks of {chunk}");
        }
        assert!(frame(&vec![0; 70_000]).is_none());
    }
}
