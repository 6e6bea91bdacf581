//! MQTT over WebSocket (RFC 6455, MQTT 5.0 section 6): the HTTP upgrade and
//! [`WsConn`], which carries the MQTT byte stream in binary frames.
//!
//! Packets and frames need not line up: the stream is the concatenation of
//! the binary frames' payloads, so one packet may span many frames and one
//! frame may hold many packets. Frame payloads are unmasked into the
//! caller's buffer as they arrive; no message is ever assembled, so a frame
//! costs no memory beyond the read-ahead buffer. Each write goes out as one
//! binary frame.
//!
//! | frame from the client       | answer                                  |
//! |-----------------------------|-----------------------------------------|
//! | binary, continuation        | payload into the MQTT stream            |
//! | text                        | error: the connection closes [MQTT-6.0.0-1] |
//! | larger than `ws_max_frame_bytes` | error: the connection closes       |
//! | unmasked, RSV bits, bad opcode | error: the connection closes         |
//! | ping                        | pong with the same payload              |
//! | pong                        | ignored                                 |
//! | close                       | close echoed, then end of stream        |
//!
//! The upgrade itself and the Sec-WebSocket-Accept key use tungstenite's
//! helpers; the framing is ours so that a resting connection keeps only
//! [`WsState`] and no buffer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};

use super::WriteWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes of an upgrade request, at most.
const MAX_REQUEST: usize = 8 * 1024;
/// Headers in an upgrade request, at most.
const MAX_HEADERS: usize = 32;
/// Read-ahead per read call.
const READ_CHUNK: usize = 4096;
/// Payload of one outgoing frame, at most; a larger write is split.
const MAX_OUT_FRAME: usize = 64 * 1024;
/// Bytes of replies (pongs, a close echo) waiting for the socket, at most
/// beyond one outgoing frame; a peer that keeps pinging without reading
/// past it is closed.
const MAX_UNSENT: usize = MAX_OUT_FRAME + 16 * 1024;
/// The subprotocols we answer, in order of preference [MQTT-6.0.0-3].
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Why an upgrade was refused (answered with an HTTP error).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("request larger than {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("bad HTTP request: {0}")]
    Malformed(String),
    #[error("path {0} is not the WebSocket path")]
    WrongPath(String),
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(&'static str),
}

/// Reads the HTTP upgrade request from `io`, answers it, and returns the
/// WebSocket stream (with any frame bytes the client sent early). Refusals
/// get an HTTP error status first. The caller bounds it in time.
pub async fn accept<IO>(
    mut io: IO,
    path: &str,
    max_frame: usize,
) -> Result<WsConn<IO>, UpgradeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let (head_len, answer) = loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        match parse_upgrade(&buf, path) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if buf.len() >= MAX_REQUEST => return Err(UpgradeError::TooLarge),
            Ok(None) => continue,
            Err(error) => {
                let status = match error {
                    UpgradeError::WrongPath(_) => "404 Not Found",
                    _ => "400 Bad Request",
                };
                let response =
                    format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
                let _ = io.write_all(response.as_bytes()).await;
                let _ = io.shutdown().await;
                return Err(error);
            }
        }
    };
    io.write_all(answer.as_bytes()).await?;
    io.flush().await?;
    buf.advance(head_len);
    let mut conn = WsConn::from_parts(io, WsState::default());
    conn.max_frame = max_frame as u64;
    if !buf.is_empty() {
        conn.inbuf = buf;
    }
    Ok(conn)
}

/// Parses an upgrade request: `None` while incomplete; the request's
/// length and the 101 answer when it is one we take.
fn parse_upgrade(buf: &[u8], path: &str) -> Result<Option<(usize, String)>, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(UpgradeError::Malformed(error.to_string())),
    };
    if request.method != Some("GET") {
        return Err(UpgradeError::NotUpgrade("method is not GET"));
    }
    let target = request.path.unwrap_or("");
    let target_path = target.split('?').next().unwrap_or("");
    if target_path != path {
        return Err(UpgradeError::WrongPath(target.to_string()));
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Err(UpgradeError::NotUpgrade("no Upgrade: websocket"));
    }
    if !has_token("connection", "upgrade") {
        return Err(UpgradeError::NotUpgrade("no Connection: upgrade"));
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(UpgradeError::NotUpgrade("Sec-WebSocket-Version is not 13"));
    }
    let key = header("sec-websocket-key")
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .ok_or(UpgradeError::NotUpgrade("no Sec-WebSocket-Key"))?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let offered: Vec<&str> = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let chosen = SUBPROTOCOLS
        .iter()
        .find(|ours| offered.iter().any(|o| o.eq_ignore_ascii_case(ours)));
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(protocol) = chosen {
        answer.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    answer.push_str("\r\n");
    Ok(Some((len, answer)))
}

/// Where the incoming frame stream stands; all a resting connection keeps.
#[derive(Debug, Default, Clone)]
pub struct WsState {
    /// Payload bytes of the current data frame still to come.
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes of the current frame unmasked so far (mod 4).
    mask_pos: u8,
    /// A fragmented binary message is open (continuations may follow).
    in_message: bool,
    /// Bytes in one frame, at most.
    max_frame: u64,
    /// Read-ahead that cannot be handed on until more arrives (part of a
    /// frame header, or of a control frame: at most 139 bytes), kept over a
    /// rest so that a client stopping there cannot keep its connection
    /// from resting. `None` in the usual case.
    held: Option<Box<[u8]>>,
    /// A pong or close echo the socket had no room for when the connection
    /// rested; sent with the next write after it wakes.
    unsent: Option<Box<[u8]>>,
}

/// MQTT over WebSocket binary frames, over `io`.
pub struct WsConn<IO> {
    io: IO,
    state: WsState,
    max_frame: u64,
    /// Bytes read ahead of the current frame: empty between reads at rest.
    inbuf: BytesMut,
    /// Framed bytes not yet written.
    out: BytesMut,
    /// A close frame came in (or went out): the stream has ended.
    closed: bool,
    /// The writer's waker, for the pongs and close echoes the read side
    /// writes.
    writer: WriteWaker,
}

impl<IO> std::fmt::Debug for WsConn<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("state", &self.state)
            .finish()
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// One parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
    header_len: usize,
}

/// Parses a client frame's header from `buf`: `None` until it is whole.
fn parse_header(buf: &[u8]) -> io::Result<Option<Header>> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(invalid("websocket: RSV bits set"));
    }
    if b1 & 0x80 == 0 {
        // RFC 6455 5.1: a client masks every frame.
        return Err(invalid("websocket: unmasked client frame"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
            Some(bytes) => (u64::from(u16::from_be_bytes(bytes)), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => (u64::from_be_bytes(bytes), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let Some(mask) = buf
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        mask,
        len,
        header_len: at + 4,
    }))
}

/// Appends a server frame (unmasked) to `out`.
fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.put_u8(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.put_u8(len as u8),
        len @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        len => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.extend_from_slice(payload);
}

fn unmask(bytes: &mut [u8], mask: [u8; 4], pos: &mut u8) {
    for byte in bytes {
        *byte ^= mask[usize::from(*pos & 3)];
        *pos = pos.wrapping_add(1) & 3;
    }
}

impl<IO> WsConn<IO> {
    pub fn from_parts(io: IO, mut state: WsState) -> WsConn<IO> {
        let inbuf = match state.held.take() {
            Some(held) => BytesMut::from(&held[..]),
            None => BytesMut::new(),
        };
        let out = match state.unsent.take() {
            Some(unsent) => BytesMut::from(&unsent[..]),
            None => BytesMut::new(),
        };
        WsConn {
            io,
            max_frame: state.max_frame,
            state,
            inbuf,
            out,
            closed: false,
            writer: WriteWaker::default(),
        }
    }

    /// The socket and the frame state. Called when
    /// [`WsConn::has_buffered_input`] is false, so what is read ahead is
    /// only the part of a frame header or control frame the state holds.
    pub fn into_parts(self) -> (IO, WsState) {
        let mut state = self.state;
        state.max_frame = self.max_frame;
        state.held = (!self.inbuf.is_empty()).then(|| Box::from(&self.inbuf[..]));
        state.unsent = (!self.out.is_empty()).then(|| Box::from(&self.out[..]));
        (self.io, state)
    }

    /// Whether bytes read ahead can be handed on (or found bad) without
    /// more input. Part of a frame header, or of a control frame, cannot:
    /// a connection holding only that may rest.
    pub fn has_buffered_input(&self) -> bool {
        if self.inbuf.is_empty() {
            return false;
        }
        if self.state.remaining > 0 {
            return true;
        }
        match parse_header(&self.inbuf) {
            // The reader finds the error.
            Err(_) => true,
            Ok(None) => false,
            Ok(Some(header)) => match header.opcode {
                OP_CLOSE | OP_PING | OP_PONG if header.fin && header.len <= 125 => {
                    self.inbuf.len() >= header.header_len + header.len as usize
                }
                _ => true,
            },
        }
    }

    pub fn inner(&self) -> &IO {
        &self.io
    }

    pub fn inner_mut(&mut self) -> &mut IO {
        &mut self.io
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> WsConn<IO> {
    /// Reads more bytes ahead; `Ok(0)` at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.inbuf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.inbuf)
    }

    /// Writes out what is framed, until done or the socket would block.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.out.advance(n),
            }
        }
        if self.out.capacity() > MAX_OUT_FRAME {
            // Do not keep a burst's buffer for the connection's life.
            self.out = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Handles one whole frame header at the front of `inbuf`. Returns
    /// `false` when more bytes are needed first.
    fn take_header(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let Some(header) = parse_header(&self.inbuf)? else {
            return Ok(false);
        };
        match header.opcode {
            OP_BINARY | OP_CONTINUATION => {
                let continuation = header.opcode == OP_CONTINUATION;
                if continuation != self.state.in_message {
                    return Err(invalid("websocket: fragments out of order"));
                }
                if header.len > self.max_frame {
                    return Err(invalid("websocket: frame larger than ws_max_frame_bytes"));
                }
                self.inbuf.advance(header.header_len);
                self.state.in_message = !header.fin;
                self.state.remaining = header.len;
                self.state.mask = header.mask;
                self.state.mask_pos = 0;
                Ok(true)
            }
            OP_TEXT => Err(invalid("websocket: text frame [MQTT-6.0.0-1]")),
            OP_CLOSE | OP_PING | OP_PONG => self.take_control(header, cx),
            _ => Err(invalid("websocket: unknown opcode")),
        }
    }

    /// A control frame: whole in `inbuf` before it is handled.
    fn take_control(&mut self, header: Header, cx: &mut Context<'_>) -> io::Result<bool> {
        if !header.fin || header.len > 125 {
            return Err(invalid("websocket: bad control frame"));
        }
        let total = header.header_len + header.len as usize;
        if self.inbuf.len() < total {
            return Ok(false);
        }
        if self.out.len() > MAX_UNSENT && header.opcode != OP_PONG {
            // A peer that sends pings but does not read the pongs.
            return Err(invalid("websocket: the peer does not read our replies"));
        }
        let mut payload = self.inbuf.split_to(total).split_off(header.header_len);
        let mut pos = 0;
        unmask(&mut payload, header.mask, &mut pos);
        match header.opcode {
            OP_PING => put_frame(&mut self.out, OP_PONG, &payload),
            OP_CLOSE => {
                // Echo the status code (if any) and end the stream.
                let code = payload.get(..2).unwrap_or(&[]);
                put_frame(&mut self.out, OP_CLOSE, code);
                self.closed = true;
            }
            _ => {}
        }
        // Best effort now, waking the writer too if the socket is full;
        // the writer's next flush finishes it.
        let waker = self.writer.with_reader(cx.waker());
        let mut both = Context::from_waker(&waker);
        if let Poll::Ready(Err(error)) = self.poll_drain(&mut both) {
            return Err(error);
        }
        Ok(true)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            if this.state.remaining > 0 && !this.inbuf.is_empty() {
                let n = (this.state.remaining.min(this.inbuf.len() as u64) as usize)
                    .min(buf.remaining());
                let mut chunk = this.inbuf.split_to(n);
                unmask(&mut chunk, this.state.mask, &mut this.state.mask_pos);
                buf.put_slice(&chunk);
                this.state.remaining -= n as u64;
                if this.inbuf.is_empty() {
                    // Nothing read ahead: give the buffer back.
                    this.inbuf = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.state.remaining == 0 && this.take_header(cx)? {
                continue;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writer.remember(cx);
        if this.closed {
            // RFC 6455 5.5.1: nothing after a close frame.
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if !this.out.is_empty() {
            ready!(this.poll_drain(cx))?;
        }
        let n = buf.len().min(MAX_OUT_FRAME);
        put_frame(&mut this.out, OP_BINARY, &buf[..n]);
        // Start writing now; poll_flush finishes what the socket refused.
        if let Poll::Ready(Err(error)) = this.poll_drain(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.writer.remember(cx);
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.writer.remember(cx);
        if !this.closed {
            // 1000: normal closure.
            this.closed = true;
            put_frame(&mut this.out, OP_CLOSE, &1000u16.to_be_bytes());
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
