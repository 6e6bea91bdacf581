//! The byte streams the load tool can speak MQTT over: plain TCP, TLS
//! (rustls, trusting a CA file given with `--tls-ca`), WebSocket (binary
//! frames on `--ws-path`), and WebSocket over TLS. The client side of the
//! WebSocket framing is a few lines here: frames are masked on the way out
//! and unwrapped on the way in, and the read side hands the MQTT bytes to
//! the client's own read buffer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    ws_path: Option<String>,
}

impl Target {
    /// `ca`: a PEM file of the CA that signed the broker's certificate.
    pub fn new(
        addr: SocketAddr,
        ca: Option<&std::path::Path>,
        ws_path: Option<String>,
    ) -> Result<Target, String> {
        let tls = match ca {
            Some(ca) => Some((client_config(ca)?, ServerName::IpAddress(addr.ip().into()))),
            None => None,
        };
        Ok(Target { addr, tls, ws_path })
    }

    pub async fn connect(&self) -> io::Result<Conn> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let stream = match &self.tls {
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                Stream::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
            }
            None => Stream::Tcp(tcp),
        };
        let mut conn = Conn { stream, ws: None };
        if let Some(path) = &self.ws_path {
            conn.upgrade(path, self.addr).await?;
        }
        Ok(conn)
    }
}

fn client_config(ca: &std::path::Path) -> Result<Arc<ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// One connection's stream, with the WebSocket framing state if any.
pub struct Conn {
    stream: Stream,
    /// Raw bytes read ahead (WebSocket only) and the current frame's
    /// remaining payload.
    ws: Option<(BytesMut, u64)>,
}

/// The mask of every frame we send: masking is required, not secret.
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x8e];

impl Conn {
    async fn upgrade(&mut self, path: &str, addr: SocketAddr) -> io::Result<()> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGlkZW1xLWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        self.raw_write(request.as_bytes()).await?;
        let mut head = BytesMut::with_capacity(512);
        let end = loop {
            if self.raw_read(&mut head).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if head.len() > 8192 {
                return Err(io::Error::other("upgrade answer too long"));
            }
        };
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(io::Error::other("WebSocket upgrade refused"));
        }
        head.advance(end);
        self.ws = Some((head, 0));
        Ok(())
    }

    async fn raw_write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    async fn raw_read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        read_stream(&mut self.stream, buf).await
    }

    /// Writes MQTT bytes (as one binary frame over WebSocket).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.ws.is_none() {
            return self.raw_write(bytes).await;
        }
        let mut frame = BytesMut::with_capacity(bytes.len() + 14);
        frame.put_u8(0x82);
        match bytes.len() {
            len @ 0..=125 => frame.put_u8(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                frame.put_u8(0x80 | 126);
                frame.put_u16(len as u16);
            }
            len => {
                frame.put_u8(0x80 | 127);
                frame.put_u64(len as u64);
            }
        }
        frame.put_slice(&MASK);
        frame.extend(bytes.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        self.raw_write(&frame).await
    }

    /// Reads MQTT bytes into `buf`; 0 at the end of the stream. Cancel
    /// safe: bytes read ahead stay in the framing state.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let Conn { stream, ws } = self;
        let Some((raw, remaining)) = ws else {
            return read_stream(stream, buf).await;
        };
        loop {
            let moved = unwrap_frames(raw, remaining, buf)?;
            if moved > 0 {
                return Ok(moved);
            }
            if read_stream(stream, raw).await? == 0 {
                return Ok(0);
            }
        }
    }

    /// Takes what is there without waiting: `Ok(0)` when nothing is.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if self.ws.is_none() {
            if let Stream::Tcp(s) = &mut self.stream {
                return match s.try_read_buf(buf) {
                    Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
        }
        // Layered streams: poll a read once.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let read = std::pin::pin!(self.read_buf(buf));
        match std::future::Future::poll(read, &mut cx) {
            std::task::Poll::Ready(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => Ok(0),
        }
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }
}

async fn read_stream(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<usize> {
    match stream {
        Stream::Tcp(s) => s.read_buf(buf).await,
        Stream::Tls(s) => s.read_buf(buf).await,
    }
}

/// Moves the payload of whole or partial server frames from `raw` into
/// `out`; returns how many bytes it moved. Control frames are skipped.
fn unwrap_frames(raw: &mut BytesMut, remaining: &mut u64, out: &mut BytesMut) -> io::Result<usize> {
    let mut moved = 0;
    loop {
        if *remaining > 0 {
            let n = (*remaining).min(raw.len() as u64) as usize;
            if n == 0 {
                return Ok(moved);
            }
            out.put_slice(&raw[..n]);
            raw.advance(n);
            *remaining -= n as u64;
            moved += n;
            continue;
        }
        let Some((opcode, len, header)) = frame_header(raw) else {
            return Ok(moved);
        };
        match opcode {
            0x0 | 0x2 => {
                raw.advance(header);
                *remaining = len;
            }
            0x8 => {
                return if moved > 0 {
                    Ok(moved)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                }
            }
            _ => {
                // Control frames (ping, pong): skip once whole.
                let total = header + len as usize;
                if raw.len() < total {
                    return Ok(moved);
                }
                raw.advance(total);
            }
        }
    }
}

/// A server frame's opcode, payload length and header length.
fn frame_header(raw: &[u8]) -> Option<(u8, u64, usize)> {
    let (b0, b1) = (*raw.first()?, *raw.get(1)?);
    let (len, at) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?])),
            4,
        ),
        127 => (u64::from_be_bytes(raw.get(2..10)?.try_into().ok()?), 10),
        short => (u64::from(short), 2),
    };
    Some((b0 & 0x0F, len, at))
}
