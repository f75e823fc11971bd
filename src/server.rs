//! The HTTP/1.1 server loop. axum's own `serve` sets no header-read timeout
//! and no connection cap; this one does both, and a write timeout
//! (slow-client protection), and shuts down gracefully: stop accepting, let
//! requests in flight finish.
//!
//! What one connection can cost, whatever the client does:
//! - headers within `header_read_timeout`, also between requests (hyper
//!   restarts the timer whenever it waits for a request, so an idle
//!   keep-alive connection is closed after it);
//! - one request at a time: hyper reads pipelined requests only into its
//!   read buffer (at most 64 KiB) and stops reading while it answers;
//! - an answer the client does not read: a write that makes no progress for
//!   `write_timeout` closes the connection (the `TimeoutLayer` bounds
//!   building a response, not sending it).

use std::{future::Future, pin::pin, sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_io_timeout::TimeoutStream;

/// hyper's read buffer per connection, which also bounds pipelining: what a
/// client sends ahead of the request being answered stays in the kernel's
/// socket buffer beyond it.
pub const MAX_BUF_SIZE: usize = 64 * 1024;

pub struct Limits {
    pub header_read_timeout: Duration,
    /// A write that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    pub max_connections: usize,
    /// How long requests in flight get to finish at shutdown.
    pub shutdown_grace: Duration,
}

pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::HTTP_CONNECTIONS_REFUSED).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let header_read_timeout = limits.header_read_timeout;
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        tokio::spawn(async move {
            let _permit = permit;
            // HTTP/1.1 only: HTTP/2 detection would first wait for bytes
            // with no timeout (a silent client would hold its connection).
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_buf_size(MAX_BUF_SIZE);
            let conn = builder.serve_connection(TokioIo::new(Box::pin(stream)), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open at the end of the shutdown grace period");
    }
}
