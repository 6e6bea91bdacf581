//! TLS with rustls: the server configuration built from a listener's PEM
//! files, the handshake, and [`TlsConn`], the stream a connection's tasks
//! read and write after it.
//!
//! tokio-rustls runs the handshake; afterwards its stream is taken apart
//! and the rustls session driven by [`TlsConn`], a small adapter of our
//! own, because a resting connection must hand its socket to the
//! dormitory and keep only the session, and tokio-rustls cannot rebuild a
//! stream from those parts. TLS 1.2 and 1.3 are offered; the crypto is
//! ring's.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, ServerConnection};

use super::{pending_on_would_block, SyncIo, WriteWaker};
use crate::config::TlsConfig;

/// Why a listener's TLS configuration cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("tls: {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("tls: {path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("tls: {path}: {source}")]
    Rejected {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("tls: client_ca {path}: {problem}")]
    ClientCa { path: PathBuf, problem: String },
}

/// Builds the rustls configuration of one listener.
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs(&config.cert)?;
    let key = load_key(&config.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rejected {
            path: config.cert.clone(),
            source,
        })?;
    let builder = match &config.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|source| TlsError::Rejected {
                    path: path.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match config.require_certificate {
                true => verifier,
                false => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|error| TlsError::ClientCa {
                path: path.clone(),
                problem: error.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None if config.require_certificate => {
            return Err(TlsError::ClientCa {
                path: PathBuf::from("(none)"),
                problem: "require_certificate needs client_ca".to_string(),
            })
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rejected {
            path: config.key.clone(),
            source,
        })?;
    Ok(Arc::new(server))
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// The PEM certificates of `path`; at least one. The bridge's client side
/// reads its files with this too.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first PEM private key of `path`.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match rustls_pemfile::private_key(&mut open(path)?) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(TlsError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(TlsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs the TLS handshake on `io`. The caller bounds it in time.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<TlsConn<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = tokio_rustls::TlsAcceptor::from(config).accept(io).await?;
    let (io, conn) = stream.into_inner();
    Ok(TlsConn {
        io,
        conn: Box::new(conn),
        eof: false,
        closing: false,
        writer: WriteWaker::default(),
    })
}

/// The client certificate's identity: its subject's Common Name, or
/// without one its first DNS or e-mail Subject Alternative Name.
pub fn peer_identity<IO>(tls: &TlsConn<IO>) -> Option<String> {
    let cert = tls.conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let common_name = parsed
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_string));
    common_name.or_else(|| {
        let san = parsed.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            x509_parser::extensions::GeneralName::RFC822Name(mail) => Some(mail.to_string()),
            _ => None,
        })
    })
}

/// A rustls server session over `io`, after the handshake.
pub struct TlsConn<IO> {
    io: IO,
    /// Boxed: the session is large, and moves with the stream.
    conn: Box<ServerConnection>,
    /// The peer closed the TCP stream.
    eof: bool,
    /// close_notify is queued.
    closing: bool,
    /// The writer's waker, for writes the read side makes.
    writer: WriteWaker,
}

impl<IO> std::fmt::Debug for TlsConn<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").field("eof", &self.eof).finish()
    }
}

/// A resting TLS connection's session.
pub struct ParkedTls(Box<ServerConnection>);

impl<IO> TlsConn<IO> {
    /// Whether decrypted bytes wait to be read.
    pub fn has_buffered_input(&mut self) -> bool {
        match self.conn.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0,
            // Let the reader find the error.
            Err(_) => true,
        }
    }

    pub fn into_parts(self) -> (IO, ParkedTls) {
        (self.io, ParkedTls(self.conn))
    }

    pub fn from_parts(io: IO, parked: ParkedTls) -> TlsConn<IO> {
        TlsConn {
            io,
            conn: parked.0,
            eof: false,
            closing: false,
            writer: WriteWaker::default(),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsConn<IO> {
    /// Reads TLS records from the socket into the session; `Ok(0)` at EOF.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut io = SyncIo {
            io: &mut self.io,
            cx,
        };
        pending_on_would_block(self.conn.read_tls(&mut io))
    }

    /// Writes what the session has for the socket, until it has nothing or
    /// the socket would block.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut io = SyncIo {
                io: &mut self.io,
                cx: &mut *cx,
            };
            match ready!(pending_on_would_block(self.conn.write_tls(&mut io)))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                _ => continue,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: an end like any other.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()))
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_read_tls(cx))? == 0 {
                this.eof = true;
            }
            let processed = this.conn.process_new_packets();
            // The alert rustls queued for an error, or the answer to a
            // post-handshake message (a key update), goes out now if the
            // socket takes it, waking the writer too if it has to wait.
            if this.conn.wants_write() {
                let waker = this.writer.with_reader(cx.waker());
                let mut both = Context::from_waker(&waker);
                if let Poll::Ready(Err(error)) = this.poll_write_tls(&mut both) {
                    return Poll::Ready(Err(error));
                }
            }
            if let Err(error) = processed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writer.remember(cx);
        // rustls buffers up to its limit (64 KiB); past it, write out first.
        let written = this.conn.writer().write(buf)?;
        let flushed = this.poll_write_tls(cx)?;
        if written == 0 && !buf.is_empty() {
            ready!(flushed);
            return Poll::Ready(this.conn.writer().write(buf));
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.writer.remember(cx);
        this.conn.writer().flush()?;
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.writer.remember(cx);
        if !this.closing {
            this.closing = true;
            this.conn.send_close_notify();
        }
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
