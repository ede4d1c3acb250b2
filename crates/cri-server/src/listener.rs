//! The accept loop and connection limits shared by criusd's HTTP servers
//! (streaming and `/metrics`): a cap on open connections (more are closed
//! at once, so that idle or slow clients cannot use up the daemon's file
//! descriptors), a time limit on reading a request head (idle keep-alive
//! connections included) and on a connection's HTTP phase as a whole, and
//! an exponential back-off when `accept` fails (e.g. out of fds) instead
//! of a busy loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long a client has to send its request head (also the idle time of
/// a keep-alive connection between requests).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections a server keeps open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Longest HTTP phase of a connection (requests and responses, up to an
/// upgrade): a client that stops reading a response is cut off.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(5 * 60);

/// Limits of an HTTP server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`DEFAULT_MAX_CONNECTION_AGE`].
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
        }
    }
}

impl Limits {
    /// An HTTP/1 connection builder with the header read timeout.
    pub fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        b
    }
}

/// The delay after a failed `accept`: 5 ms, doubling up to 1 s (as Go's
/// net/http), back to nothing after a success.
#[derive(Debug, Default)]
pub struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The delay after one more failure.
    pub fn fail(&mut self) -> Duration {
        let d = match self.next {
            None => Self::FIRST,
            Some(d) => (d * 2).min(Self::MAX),
        };
        self.next = Some(d);
        d
    }

    /// A success: the next failure starts over.
    pub fn reset(&mut self) {
        self.next = None;
    }
}

/// Accepts connections on `listener` until `shutdown` turns true (or its
/// sender goes) and runs `serve` on each in a task of its own, within
/// `limits`: over `max_connections` a new connection is closed at once;
/// `serve` is cut off after `max_connection_age` (what it spawned itself,
/// e.g. an upgraded session, goes on). `name` labels the logs.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut backoff = Backoff::default();
    let mut refused: u64 = 0;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(s) => {
                backoff.reset();
                s
            }
            Err(e) => {
                let delay = backoff.fail();
                tracing::warn!(server = name, error = %e, ?delay, "accept failed");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            // Every one would flood the log: the first and then every 1000th.
            if refused % 1000 == 1 {
                tracing::warn!(
                    server = name,
                    %peer,
                    max = limits.max_connections,
                    refused,
                    "too many connections: closing new ones"
                );
            }
            drop(stream);
            continue;
        };
        let conn = serve(stream, peer);
        let age = limits.max_connection_age;
        tokio::spawn(async move {
            if tokio::time::timeout(age, conn).await.is_err() {
                tracing::debug!(server = name, %peer, "connection closed: too old");
            }
            drop(slot);
        });
    }
    tracing::info!(server = name, "server stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.fail().as_millis()).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(5));
    }

    /// A server answering `ok` with the given limits; returns its address.
    async fn server(
        limits: Limits,
    ) -> (
        SocketAddr,
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(accept_loop("test", listener, limits, rx, move |s, _| {
            let builder = limits.http1();
            async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(hyper::body::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            }
        }));
        (addr, tx, task)
    }

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Reads until EOF or error; true if the peer closed within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn idle_connections_are_capped_and_time_out() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            max_connections: 4,
            max_connection_age: Duration::from_secs(60),
        };
        let (addr, tx, task) = server(limits).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server take them all, then one more is closed at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut extra, Duration::from_millis(200)).await);
        // The idle ones are closed after the header read timeout...
        for s in &mut idle {
            assert!(closed_within(s, Duration::from_secs(5)).await);
        }
        // ... and the server answers again.
        let resp = get(addr).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_is_cut_off_at_its_age() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(60),
            max_connections: 4,
            max_connection_age: Duration::from_millis(300),
        };
        let (addr, tx, task) = server(limits).await;
        // A head that never ends: the (long) header timeout alone would
        // not close it within the test.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
