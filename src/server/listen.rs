//! The HTTP listener: the router served over hyper connections with the
//! limits a server facing other people's clients needs. A connection gets
//! `header` to send each request's head, counted from when it opens or its
//! previous response ends (so an idle keep-alive connection closes after
//! it too); the chat handler gives a body `body` to arrive. On shutdown the
//! listener stops accepting, lets each connection finish its request in
//! flight, and closes what is still open after `grace`.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Bytes a connection buffers, for a request's head and for what is not
/// yet written to the socket.
const WRITE_BUFFER: usize = 64 << 10;

/// The socket's own send buffer (Linux doubles it, and would otherwise grow
/// it to megabytes for a client that does not read).
const SEND_BUFFER: libc::c_int = 32 << 10;

/// Bound what the kernel holds for a client, so one that stops reading is
/// soon behind by [`super::worker::EVENTS`] events and dropped.
fn limit_send_buffer(stream: &tokio::net::TcpStream) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid socket, and a c_int option value of its size
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &SEND_BUFFER as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// to send a request's head (and the keep-alive idle limit)
    pub header: Duration,
    /// to send a request's body
    pub body: Duration,
    /// for requests in flight at shutdown
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header: Duration::from_secs(10), body: Duration::from_secs(30), grace: Duration::from_secs(30) }
    }
}

/// Serve `router` on `listener` until `shutdown` resolves, then drain.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // out of file descriptors, say: wait, and keep serving the rest
                        eprintln!("cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                limit_send_buffer(&stream);
                let service = TowerToHyperService::new(router.clone());
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let mut builder = http1::Builder::new();
                    // (a small write buffer: a client that stops reading holds up
                    // its stream's events in the worker's bounded channel, not here)
                    builder.timer(TokioTimer::new()).header_read_timeout(limits.header).max_buf_size(WRITE_BUFFER);
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = stop.changed() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
                // forget finished connections, so the set holds only open ones
                while conns.try_join_next().is_some() {}
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        eprintln!("closing {} connections still open after the {:?} grace period", conns.len(), limits.grace);
        conns.abort_all();
    }
}
