//! Closing idle gRPC connections. A connection is idle when no call has been open on it for the
//! idle timeout: calls are counted per connection (`TrackCalls`, a layer around every service;
//! a call lasts until its response body ends), and the connection's I/O (`IdleTimeout`) closes
//! it once none has been open for that long. HTTP/2 PINGs and other frames do not count, so a
//! client whose keepalive pings keep the socket busy is still closed when it makes no calls.
//! The same I/O closes a connection at the end of the grace that follows its maximum age (tonic
//! sends the GOAWAY at the age itself; given a grace too, it would skip the GOAWAY and only cut
//! the connection at age + grace).
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// Calls open on one connection, and when the last one ended.
struct Activity {
    open: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
        }
    }

    /// When the connection becomes idle if nothing happens: the timeout after the last call
    /// ended, or a full timeout from now while a call is open.
    fn idle_at(&self, timeout: Duration) -> Instant {
        if self.open.load(Ordering::SeqCst) > 0 {
            return Instant::now() + timeout;
        }
        let last = *self.last_end.lock().unwrap_or_else(|p| p.into_inner());
        last + timeout
    }
}

/// Holds a call open until dropped (when its response body is done).
struct CallGuard(Arc<Activity>);

impl CallGuard {
    fn new(activity: Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::SeqCst);
        Self(activity)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What tonic puts in every request's extensions for a connection accepted here.
#[derive(Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

/// A connection's socket, closed once no call has been open on it for `timeout`.
pub struct IdleTimeout {
    stream: TcpStream,
    timeout: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    activity: Arc<Activity>,
    on_close: Option<Box<dyn Fn() + Send + Sync>>,
    close_at: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeout {
    /// `on_close` runs once if the connection is closed for idleness (a metric).
    pub fn new(
        stream: TcpStream,
        timeout: Option<Duration>,
        on_close: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self {
            stream,
            timeout,
            sleep: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            activity: Arc::new(Activity::new()),
            on_close: Some(Box::new(on_close)),
            close_at: None,
        }
    }

    /// Closes the connection `after` from now whatever it is doing (the end of the grace that
    /// follows the maximum connection age: calls still open then end UNAVAILABLE).
    pub fn close_after(mut self, after: Option<Duration>) -> Self {
        self.close_at = after.map(|after| Box::pin(tokio::time::sleep(after)));
        self
    }

    /// Whether the hard deadline has passed; registers a wake-up otherwise.
    fn past_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        self.close_at
            .as_mut()
            .is_some_and(|at| at.as_mut().poll(cx).is_ready())
    }

    /// Whether the connection has been idle for the timeout; registers a wake-up otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(timeout), Some(sleep)) = (self.timeout, self.sleep.as_mut()) else {
            return false;
        };
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let idle_at = self.activity.idle_at(timeout);
            if idle_at <= Instant::now() {
                if let Some(on_close) = self.on_close.take() {
                    on_close();
                }
                return true;
            }
            // Calls happened since: sleep until the new idle time (polled again to register).
            sleep.as_mut().reset(idle_at);
        }
    }
}

impl Connected for IdleTimeout {
    type ConnectInfo = ConnectionInfo;
    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            tcp: self.stream.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle timeout")
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.past_deadline(cx) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection past its maximum age and grace",
            )));
        }
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The layer that counts every call on its connection.
#[derive(Clone, Copy, Default)]
pub(crate) struct TrackCalls;

impl<S> tower::Layer<S> for TrackCalls {
    type Service = Tracked<S>;
    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked(inner)
    }
}

#[derive(Clone)]
pub(crate) struct Tracked<S>(S);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Tracked<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<GuardedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let extensions = req.extensions();
        let activity = extensions
            .get::<ConnectionInfo>()
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<ConnectionInfo>>()
                    .map(TlsConnectInfo::get_ref)
            })
            .map(|info| info.activity.clone());
        let guard = activity.map(CallGuard::new);
        let response = self.0.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| GuardedBody {
                inner: Box::pin(body),
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its call counted as open until it is done.
pub(crate) struct GuardedBody<B> {
    inner: Pin<Box<B>>,
    _guard: Option<CallGuard>,
}

impl<B: Body> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_means_no_call_open_for_the_timeout() {
        let t = Duration::from_secs(10);
        let created = Instant::now();
        let activity = Arc::new(Activity::new());
        assert!(activity.idle_at(t) >= created + t);
        assert!(activity.idle_at(t) <= Instant::now() + t);
        let call = CallGuard::new(activity.clone());
        std::thread::sleep(Duration::from_millis(30));
        let during = Instant::now();
        assert!(
            activity.idle_at(t) >= during + t,
            "a call is open: idle only from now on"
        );
        drop(call);
        let ended = Instant::now();
        assert!(activity.idle_at(t) >= during + t && activity.idle_at(t) <= ended + t);
    }

    #[tokio::test]
    async fn a_connection_is_cut_at_its_deadline_even_while_busy() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut conn =
            IdleTimeout::new(server, None, || {}).close_after(Some(Duration::from_millis(300)));
        let started = Instant::now();
        let mut buf = [0u8; 16];
        // Before the deadline the connection reads what the client writes.
        client.write_all(b"ping").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 4);
        // A call open (no idle timeout at all) does not keep it past the deadline.
        let _call = CallGuard::new(conn.activity.clone());
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
