//! Wiring: builds the shared state from the configuration, serves the router, and shuts every
//! room down cleanly on SIGINT/SIGTERM.

use crate::config::Config;
use crate::http::{AppState, router};
use crate::room::RoomRegistry;
use crate::rtc::{PeerFactory, RtcSettings};
use std::net::SocketAddr;

/// The shared state; binds the media port (so it needs a tokio runtime).
pub fn state(config: Config) -> anyhow::Result<AppState> {
    let peers = PeerFactory::bind(RtcSettings::from_config(&config))?;
    Ok(AppState {
        rooms: RoomRegistry::new(config, peers),
    })
}

/// A server bound to a socket, for `main` and for end-to-end tests.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    listener: tokio::net::TcpListener,
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
        Ok(Self {
            addr,
            state: state(config)?,
            listener,
        })
    }

    /// Serves until `shutdown` completes, then closes every room.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let rooms = self.state.rooms.clone();
        tracing::info!(addr = %self.addr, "listening: WHIP at /whip/{{room}}, WHEP at /whep/{{room}}");
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown)
            .await?;
        tracing::info!("shutting down: closing rooms");
        rooms.shutdown().await;
        Ok(())
    }
}

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
