//! A connection that is cut once it is older than its maximum age plus grace
//! (`--max-connection-age-ms` + `--max-connection-age-grace-ms`).

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Sleep,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection that fails every read and write once it is older than its
/// deadline (`--max-connection-age-ms` + `--max-connection-age-grace-ms`), so the server
/// drops it even while calls (e.g. a StreamEvents follower) are still open on it.
pub(crate) struct AgedConnection {
    stream: TcpStream,
    deadline: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl AgedConnection {
    pub(crate) fn new(stream: TcpStream, lifetime: Option<Duration>) -> AgedConnection {
        AgedConnection {
            stream,
            deadline: lifetime.map(|d| Box::pin(tokio::time::sleep(d))),
            expired: false,
        }
    }

    /// Err once the deadline has passed; otherwise registers for it, so a connection
    /// waiting to read is woken and cut on time.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.expired {
            let Some(deadline) = &mut self.deadline else {
                return Ok(());
            };
            if deadline.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            self.expired = true;
            tracing::debug!(
                peer = ?self.stream.peer_addr().ok(),
                "closing a connection older than its maximum age plus grace"
            );
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection older than --max-connection-age-ms + --max-connection-age-grace-ms",
        ))
    }
}

impl AsyncRead for AgedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for AgedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}
