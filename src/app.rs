//! Wiring: builds the shared state from the configuration, serves the router, and shuts every
//! room down cleanly on SIGINT/SIGTERM.

use crate::config::Config;
use crate::http::{AppState, router};
use crate::limits::Counters;
use crate::room::RoomRegistry;
use crate::rtc::{PeerFactory, RtcSettings};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The shared state; binds the media port (so it needs a tokio runtime).
pub fn state(config: Config) -> anyhow::Result<AppState> {
    let peers = PeerFactory::bind(RtcSettings::from_config(&config))?;
    let auth = std::sync::Arc::new(crate::auth::Auth::new(&config.auth.keys));
    let cluster = crate::cluster::Cluster::new(&config.cluster)?;
    Ok(AppState {
        rooms: RoomRegistry::new(config, peers),
        auth,
        cluster,
    })
}

/// A server bound to a socket, for `main` and for end-to-end tests.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    listener: tokio::net::TcpListener,
    /// HTTPS when set.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The self-signed certificate's PEM, when `server.self_signed` made one.
    pub self_signed_pem: Option<String>,
}

impl Server {
    /// Checks GStreamer, binds HTTP (port 0 picks a free one).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        crate::mixer::init()?;
        let addr = SocketAddr::new(config.server.host, config.server.http_port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr()?;
        let (tls, self_signed_pem) = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => (Some(crate::tls::from_files(cert, key)?), None),
            _ if config.server.self_signed => {
                let (tls, pem) = crate::tls::self_signed(config.server.host, &[])?;
                (Some(tls), Some(pem))
            }
            _ => (None, None),
        };
        if let Some(t) = &tls {
            tracing::info!(
                fingerprint = %t.fingerprint,
                spki_sha256 = %t.spki_sha256,
                self_signed = self_signed_pem.is_some(),
                "HTTPS: certificate loaded"
            );
        }
        Ok(Self {
            addr,
            state: state(config)?,
            listener,
            tls: tls.map(Arc::new),
            self_signed_pem,
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves until `shutdown` completes, then closes every room.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let rooms = self.state.rooms.clone();
        tracing::info!(addr = %self.addr, "listening: WHIP at /whip/{{room}}, WHEP at /whep/{{room}}");
        if self.state.auth.is_open() {
            tracing::warn!(
                addr = %self.addr,
                "no [auth] keys: Mixdown is open, anyone who reaches it can join, watch, record and stream any room"
            );
        }
        // Recordings past recording.retention_days go, now and every hour.
        let recording = self.state.rooms.config().recording.clone();
        let retention = (recording.retention_days > 0).then(|| {
            tokio::spawn(async move {
                loop {
                    let (dir, days) = (recording.dir.clone(), recording.retention_days);
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::output::storage::apply_retention(&dir, days)
                    })
                    .await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            })
        });
        let limits = self.state.rooms.config().limits.clone();
        let registry = self.state.rooms.clone();
        // The cluster's directory entry and room claims, renewed every third of their expiry.
        // Connecting here puts Redis' connection task on this runtime (the HTTP one stops
        // first at shutdown, and the heartbeat outlives it).
        let cluster = self.state.cluster.clone();
        let heartbeat = match &cluster {
            Some(c) => {
                c.warm_up().await;
                tracing::info!(node = %c.id(), url = %c.url(), "cluster: joining through Redis");
                let registry = registry.clone();
                let cpu = Arc::new(std::sync::Mutex::new(None));
                Some(c.spawn_heartbeat(move || node_load(registry.clone(), Arc::clone(&cpu))))
            }
            None => None,
        };
        // A shutdown drains first: joins refused, calls told, up to `server.drain_s` for
        // them to end by themselves; then the accept loop stops and every room closes.
        let shutdown = {
            let registry = registry.clone();
            let drain = Duration::from_secs(registry.config().server.drain_s.into());
            async move {
                shutdown.await;
                drain_rooms(&registry, drain).await;
            }
        };
        let app = router(self.state);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // The connection cap: an accept waits for a free permit (the kernel's backlog holds
        // the rest), so a flood of idle connections cannot take every file descriptor.
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.http_connections));
        let header_timeout = Duration::from_secs(limits.http_header_timeout_s.into());
        let tls = self
            .tls
            .map(|t| tokio_rustls::TlsAcceptor::from(Arc::clone(&t.config)));
        // HTTP (requests and WebSockets) runs on its own runtime: a flood of requests then
        // competes with media for CPU through the kernel's scheduler, thread against thread,
        // instead of queueing ahead of the media tasks on the same workers (measured: 8 855
        // refused requests/s made 82 % of composite frames late when they shared them).
        let http_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(http_threads())
            .thread_name("mixdown-http")
            .enable_all()
            .build()?;
        let http_rt = http_runtime.handle().clone();
        // The listener too: accepting is HTTP work, and its sockets are then driven by the
        // HTTP runtime's reactor.
        let std_listener = self.listener.into_std()?;
        std_listener.set_nonblocking(true)?;
        let accepting = http_rt.clone().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            tokio::pin!(shutdown);
            loop {
                let permit = tokio::select! {
                    _ = &mut shutdown => break,
                    p = Arc::clone(&permits).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let (tcp, peer) = tokio::select! {
                    _ = &mut shutdown => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors, or a connection reset before accept: go on.
                            tracing::debug!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        tower::ServiceExt::oneshot(app.clone(), req)
                    },
                );
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let mut stop = stop_rx.clone();
                let tls = tls.clone();
                let registry = registry.clone();
                http_rt.spawn(async move {
                    let _permit = permit;
                    let timed_out = || Counters::bump(&registry.counters().http_header_timeouts);
                    let io: Box<dyn Io> = match tls {
                        None => Box::new(tcp),
                        Some(acceptor) => {
                            match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => Box::new(stream),
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                                    return;
                                }
                                Err(_) => return timed_out(),
                            }
                        }
                    };
                    let conn = http
                        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                        .with_upgrades();
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        if e.is_timeout() {
                            timed_out();
                        }
                        tracing::debug!(%peer, "HTTP connection: {e}");
                    }
                });
            }
            // Requests in flight finish (up to 5 s); WebSockets were upgraded and end with
            // their rooms.
            let _ = stop_tx.send(true);
            let all = u32::try_from(limits.http_connections).unwrap_or(u32::MAX);
            if tokio::time::timeout(Duration::from_secs(5), permits.acquire_many(all))
                .await
                .is_err()
            {
                tracing::debug!("some HTTP connections did not finish in time");
            }
            anyhow::Ok(())
        });
        let served = accepting.await;
        // WebSocket tasks still open end with the runtime (their rooms close below).
        http_runtime.shutdown_background();
        if let Some(r) = retention {
            r.abort();
        }
        tracing::info!("shutting down: closing rooms");
        let names = rooms.room_names();
        rooms.shutdown().await;
        if let (Some(c), Some(h)) = (cluster, heartbeat) {
            h.abort();
            // The other nodes may take these rooms at once, not after the claims lapse.
            c.leave(&names).await;
        }
        served.map_err(|e| anyhow::anyhow!("the HTTP server failed: {e}"))?
    }
}

/// This node's entry in the cluster directory, and the rooms it serves.
/// The process' CPU time at the last heartbeat, for the cores used since.
type CpuMark = Arc<std::sync::Mutex<Option<(std::time::Instant, f64)>>>;

async fn node_load(
    registry: RoomRegistry,
    mark: CpuMark,
) -> (crate::cluster::NodeInfo, Vec<(String, String)>) {
    use crate::output::{OutputKind, OutputState};
    let infos = registry.room_infos().await;
    let participants: usize = infos.iter().map(|r| r.participants.len()).sum();
    let c = registry.config();
    let capacity = c.limits.max_rooms * c.room.max_participants;
    let mut names = registry.room_names();
    names.sort();
    // Each room's running recordings, for the node that takes the room over if this one dies.
    let rooms: Vec<(String, String)> = names
        .into_iter()
        .map(|name| {
            let running: Vec<crate::output::OutputInfo> = crate::ids::RoomId::parse(&name)
                .map(|id| registry.outputs().list(&id, OutputKind::Recording))
                .unwrap_or_default()
                .into_iter()
                .filter(|o| !matches!(o.state, OutputState::Finished | OutputState::Failed))
                .collect();
            let json = serde_json::to_string(&running).unwrap_or_else(|_| "[]".into());
            (name, json)
        })
        .collect();
    (
        crate::cluster::NodeInfo {
            id: String::new(),
            url: String::new(),
            rooms: rooms.len(),
            participants,
            cpu: cores_since(&mark),
            free: capacity.saturating_sub(participants),
        },
        rooms,
    )
}

/// Cores this process used since the last call (0 the first time).
fn cores_since(mark: &CpuMark) -> f64 {
    let now = std::time::Instant::now();
    let Some(cpu) = crate::metrics::ProcessStats::read().map(|p| p.cpu_seconds) else {
        return 0.0;
    };
    let Ok(mut last) = mark.lock() else {
        return 0.0;
    };
    let cores = match *last {
        Some((t, c)) if now > t => (cpu - c) / now.duration_since(t).as_secs_f64(),
        _ => 0.0,
    };
    *last = Some((now, cpu));
    (cores * 100.0).round() / 100.0
}

/// Refuses joins from now on and waits up to `limit` for the rooms to empty.
async fn drain_rooms(rooms: &RoomRegistry, limit: Duration) {
    rooms.begin_drain();
    let open = rooms.room_count();
    tracing::info!(
        rooms = open,
        drain_s = limit.as_secs(),
        "shutting down: draining (joins refused, calls told)"
    );
    let deadline = tokio::time::Instant::now() + limit;
    // A second signal (Ctrl-C again) cuts the drain short.
    let again = shutdown_signal();
    tokio::pin!(again);
    while rooms.room_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut again => {
                tracing::info!("second signal: closing the rooms now");
                break;
            }
        }
    }
}

/// HTTP worker threads: a quarter of the cores, at least one (signalling is light; media is
/// not).
fn http_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1))
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    server.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
