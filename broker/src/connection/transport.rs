//! The byte streams a connection runs on: plain TCP, and any async stream
//! (TLS, WebSocket).

use super::*;

/// A byte stream carrying MQTT packets.
pub trait Transport: Send + 'static {
    /// Appends received bytes to `buf`; `Ok(0)` at end of stream. Must be
    /// cancel-safe (it is raced against other events).
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
    ) -> impl Future<Output = std::io::Result<usize>> + Send;
    /// Writes all of `data`.
    fn write_all(&mut self, data: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Closes the stream.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Plain TCP: waits for readability before allocating, so an idle
/// connection holds no read buffer. The wait polls the socket's readiness
/// directly: no waiter node is stored in the (long-lived) future.
impl Transport for tokio::net::TcpStream {
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
    ) -> impl Future<Output = std::io::Result<usize>> + Send {
        std::future::poll_fn(move |cx| loop {
            if self.poll_read_ready(cx)?.is_pending() {
                // About to wait: an idle connection holds no read buffer.
                // (Freed here rather than after every read, so a busy
                // connection does not reallocate it each time.)
                if buf.is_empty() && buf.capacity() > 0 {
                    *buf = BytesMut::new();
                }
                return std::task::Poll::Pending;
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            match self.try_read_buf(buf) {
                // Readiness was stale (now cleared): the next poll waits.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return std::task::Poll::Ready(r),
            }
        })
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        AsyncWriteExt::write_all(self, data).await
    }

    async fn close(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

/// A [`Transport`] over any async byte stream (TLS).
pub struct Stream<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for Stream<S> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        self.0.read_buf(buf).await
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all(data).await
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }
}
