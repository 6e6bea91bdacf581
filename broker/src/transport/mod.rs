//! The byte streams a connection runs over, and how each rests.
//!
//! A connection's tasks see one [`Transport`]: a plain TCP stream, or a
//! [`Layered`] one (TLS, MQTT over WebSocket, or both). The layers are our
//! own thin adapters over rustls and the WebSocket framing so that a
//! resting connection can give up its socket and keep only the state it
//! must (see [`Transport::park`]):
//!
//! | transport | what rests besides the socket              |
//! |-----------|--------------------------------------------|
//! | TCP       | nothing                                    |
//! | TLS       | the rustls session (keys, sequence numbers) |
//! | WebSocket | where the current frame stands (a few bytes), and the part of a frame header or control frame the client stopped in |
//!
//! A stream that holds input it has read but not handed on (decrypted
//! bytes, frame bytes read ahead) cannot rest: the dormitory watches the
//! socket only, and would not see them. Bytes that cannot be handed on
//! before more arrive (part of a TLS record, of a frame header) do not
//! count: the parked state keeps them.

pub mod tls;
pub mod ws;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use tls::TlsConn;
pub use ws::WsConn;

/// A byte stream a connection can run over.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// What a resting connection keeps besides its socket.
    type Parked: Send + 'static;

    /// Whether the connection may rest in the dormitory.
    const CAN_REST: bool = false;

    /// Input already read from the socket but not yet handed on: such a
    /// stream must not rest now.
    fn has_buffered_input(&mut self) -> bool {
        false
    }

    /// Gives up the socket for the dormitory (only called when `CAN_REST`
    /// and nothing is buffered).
    fn park(self) -> io::Result<(std::net::TcpStream, Self::Parked)> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Builds the stream again around a woken socket.
    fn unpark(socket: TcpStream, parked: Self::Parked) -> io::Result<Self> {
        let _ = (socket, parked);
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl Transport for TcpStream {
    type Parked = ();
    const CAN_REST: bool = true;

    fn park(self) -> io::Result<(std::net::TcpStream, ())> {
        Ok((self.into_std()?, ()))
    }

    fn unpark(socket: TcpStream, _: ()) -> io::Result<TcpStream> {
        Ok(socket)
    }
}

impl Transport for tokio::io::DuplexStream {
    type Parked = ();
}

/// A TCP stream with TLS, WebSocket framing, or both on top.
#[derive(Debug)]
pub enum Layered {
    Tls(TlsConn<TcpStream>),
    Ws(WsConn<TcpStream>),
    Wss(WsConn<TlsConn<TcpStream>>),
}

/// What a resting [`Layered`] stream keeps.
pub enum ParkedLayers {
    Tls(tls::ParkedTls),
    Ws(ws::WsState),
    Wss(ws::WsState, tls::ParkedTls),
}

impl Transport for Layered {
    type Parked = ParkedLayers;
    const CAN_REST: bool = true;

    fn has_buffered_input(&mut self) -> bool {
        match self {
            Layered::Tls(tls) => tls.has_buffered_input(),
            Layered::Ws(ws) => ws.has_buffered_input(),
            Layered::Wss(ws) => ws.has_buffered_input() || ws.inner_mut().has_buffered_input(),
        }
    }

    fn park(self) -> io::Result<(std::net::TcpStream, ParkedLayers)> {
        match self {
            Layered::Tls(tls) => {
                let (tcp, parked) = tls.into_parts();
                Ok((tcp.into_std()?, ParkedLayers::Tls(parked)))
            }
            Layered::Ws(ws) => {
                let (tcp, state) = ws.into_parts();
                Ok((tcp.into_std()?, ParkedLayers::Ws(state)))
            }
            Layered::Wss(ws) => {
                let (tls, state) = ws.into_parts();
                let (tcp, parked) = tls.into_parts();
                Ok((tcp.into_std()?, ParkedLayers::Wss(state, parked)))
            }
        }
    }

    fn unpark(socket: TcpStream, parked: ParkedLayers) -> io::Result<Layered> {
        Ok(match parked {
            ParkedLayers::Tls(parked) => Layered::Tls(TlsConn::from_parts(socket, parked)),
            ParkedLayers::Ws(state) => Layered::Ws(WsConn::from_parts(socket, state)),
            ParkedLayers::Wss(state, parked) => {
                let tls = TlsConn::from_parts(socket, parked);
                Layered::Wss(WsConn::from_parts(tls, state))
            }
        })
    }
}

impl AsyncRead for Layered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Layered::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Layered::Ws(s) => Pin::new(s).poll_read(cx, buf),
            Layered::Wss(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Layered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Layered::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Layered::Ws(s) => Pin::new(s).poll_write(cx, buf),
            Layered::Wss(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Layered::Tls(s) => Pin::new(s).poll_flush(cx),
            Layered::Ws(s) => Pin::new(s).poll_flush(cx),
            Layered::Wss(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Layered::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Layered::Ws(s) => Pin::new(s).poll_shutdown(cx),
            Layered::Wss(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads from `io` into `buf` from within another stream's poll: `Pending`
/// becomes `WouldBlock`, as rustls's synchronous calls expect.
pub(crate) struct SyncIo<'a, 'b, IO> {
    pub io: &'a mut IO,
    pub cx: &'a mut Context<'b>,
}

impl<IO: AsyncRead + Unpin> io::Read for SyncIo<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> io::Write for SyncIo<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The write side's waker, remembered by a stream whose read side must
/// sometimes write (a pong, a TLS alert or key update). A TCP socket keeps
/// one waiting writer: a write from the read side that would block must
/// wake both tasks when the socket drains, or the writer, waiting on the
/// same socket, would never be woken.
#[derive(Debug, Default)]
pub(crate) struct WriteWaker(Option<Waker>);

impl WriteWaker {
    /// Remembers the waker of a write-side poll.
    pub fn remember(&mut self, cx: &Context<'_>) {
        match &mut self.0 {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }

    /// A waker for a write the read side makes: it wakes the reader and
    /// the writer (when there is one).
    pub fn with_reader(&self, reader: &Waker) -> Waker {
        match &self.0 {
            Some(writer) if !writer.will_wake(reader) => {
                Waker::from(Arc::new(WakeBoth(reader.clone(), writer.clone())))
            }
            _ => reader.clone(),
        }
    }
}

struct WakeBoth(Waker, Waker);

impl Wake for WakeBoth {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake_by_ref();
        self.1.wake_by_ref();
    }
}

/// `Poll::Pending` for an `io::Result` that says it would block.
pub(crate) fn pending_on_would_block<T>(result: io::Result<T>) -> Poll<io::Result<T>> {
    match result {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}
