//! One MQTT connection of the load tool: a socket, one growing read buffer
//! with the protocol crate's [`Framer`], and one write buffer flushed with
//! one `write_all` per batch. No event loop and no channels: the task that
//! owns a `Client` (a publisher, a subscriber or an idle connection) drives
//! it directly, so the hot path is encode -> write and read -> decode.
//!
//! Only the handshake lives here (CONNECT/CONNACK, SUBSCRIBE/SUBACK), each
//! bounded by a timeout; the loops are in `publisher`, `subscriber` and
//! `conns`.

use std::time::Duration;

use bytes::BytesMut;
use tidemq_protocol::{Framer, PacketId, QoS, TopicFilter};
use tokio::time::{timeout, Instant};

use crate::error::BenchError;
use crate::transport::{Conn, Target};
use crate::wire::{self, ServerPacket, SessionMode, Version};

/// Bytes added to the read buffer when it runs low, until the owner asks
/// for more with [`Client::set_read_chunk`]: small, so that ten thousand
/// idle connections stay cheap.
const HANDSHAKE_READ_CHUNK: usize = 512;
/// What publishers and subscribers read at once.
pub const BULK_READ_CHUNK: usize = 64 * 1024;

pub struct Client {
    stream: Conn,
    read_buf: BytesMut,
    /// Packets waiting for [`Client::flush`].
    pub write_buf: BytesMut,
    read_chunk: usize,
    framer: Framer,
    pub version: Version,
    /// From CONNACK (MQTT 5): how many QoS 1/2 PUBLISHes the server accepts
    /// unacknowledged.
    pub receive_maximum: Option<u16>,
}

impl Client {
    /// Connects, sends CONNECT and waits for a successful CONNACK, all within
    /// `limit`.
    pub async fn connect(
        target: &Target,
        version: Version,
        client_id: &str,
        session: SessionMode,
        keep_alive: Duration,
        max_packet: usize,
        limit: Duration,
    ) -> Result<Client, BenchError> {
        timeout(
            limit,
            Client::handshake(target, version, client_id, session, keep_alive, max_packet),
        )
        .await
        .map_err(|_| BenchError::Timeout("CONNACK"))?
    }

    async fn handshake(
        target: &Target,
        version: Version,
        client_id: &str,
        session: SessionMode,
        keep_alive: Duration,
        max_packet: usize,
    ) -> Result<Client, BenchError> {
        let stream = target.connect().await?;
        let mut client = Client {
            stream,
            read_buf: BytesMut::with_capacity(256),
            write_buf: BytesMut::with_capacity(256),
            read_chunk: HANDSHAKE_READ_CHUNK,
            framer: Framer::new(max_packet),
            version,
            receive_maximum: None,
        };
        let keep_alive = u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX);
        wire::encode_connect(
            &mut client.write_buf,
            version,
            client_id,
            keep_alive,
            session,
        );
        client.flush().await?;
        match client.next_packet_blocking().await? {
            ServerPacket::ConnAck {
                code: 0,
                receive_maximum,
                ..
            } => {
                client.receive_maximum = receive_maximum;
                Ok(client)
            }
            ServerPacket::ConnAck { code, .. } => Err(BenchError::ConnectRefused(code)),
            other => Err(BenchError::Unexpected(format!("{other:?} before CONNACK"))),
        }
    }

    /// Subscribes to one filter and waits for a SUBACK granting it.
    pub async fn subscribe(
        &mut self,
        filter: &TopicFilter,
        qos: QoS,
        limit: Duration,
    ) -> Result<(), BenchError> {
        let id = PacketId::new(1).ok_or(BenchError::Unexpected("packet id".into()))?;
        wire::encode_subscribe(&mut self.write_buf, self.version, id, filter, qos);
        self.flush().await?;
        let suback = timeout(limit, self.next_packet_blocking())
            .await
            .map_err(|_| BenchError::Timeout("SUBACK"))??;
        match suback {
            ServerPacket::SubAck { codes, .. } => match codes.first() {
                Some(code) if *code < 0x80 => Ok(()),
                Some(code) => Err(BenchError::SubscribeRefused(*code)),
                None => Err(BenchError::SubscribeRefused(0x80)),
            },
            other => Err(BenchError::Unexpected(format!("{other:?} before SUBACK"))),
        }
    }

    /// Writes the write buffer out and empties it.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        Ok(())
    }

    /// Like [`Client::flush`], but gives up at `deadline`.
    pub async fn flush_until(&mut self, deadline: Instant) -> Result<(), BenchError> {
        tokio::time::timeout_at(deadline, self.flush())
            .await
            .map_err(|_| BenchError::Timeout("write"))?
            .map_err(BenchError::from)
    }

    /// Waits for bytes from the server; cancel safe. `Ok(false)` means the
    /// server closed the connection.
    pub async fn read(&mut self) -> std::io::Result<bool> {
        self.reserve();
        Ok(self.stream.read_buf(&mut self.read_buf).await? > 0)
    }

    /// Takes whatever the socket has without waiting. `Ok(false)` means the
    /// server closed the connection.
    pub fn try_read(&mut self) -> std::io::Result<bool> {
        self.reserve();
        match self.stream.try_read_buf(&mut self.read_buf) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads up to `bytes` at once from now on.
    pub fn set_read_chunk(&mut self, bytes: usize) {
        self.read_chunk = bytes.max(HANDSHAKE_READ_CHUNK);
    }

    fn reserve(&mut self) {
        if self.read_buf.capacity() - self.read_buf.len() < self.read_chunk / 4 {
            self.read_buf.reserve(self.read_chunk);
        }
    }

    /// The next whole packet already read, if any.
    pub fn next_packet(&mut self) -> Result<Option<ServerPacket>, BenchError> {
        match self.framer.next_frame(&mut self.read_buf)? {
            Some(frame) => Ok(Some(wire::decode(&frame, self.version)?)),
            None => Ok(None),
        }
    }

    /// Reads until one whole packet is there (handshake only).
    async fn next_packet_blocking(&mut self) -> Result<ServerPacket, BenchError> {
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(packet);
            }
            if !self.read().await? {
                return Err(BenchError::Closed);
            }
        }
    }

    /// Sends DISCONNECT, best effort, within `limit`.
    pub async fn disconnect(mut self, limit: Duration) {
        wire::encode_control(
            &mut self.write_buf,
            &tidemq_protocol::Packet::Disconnect(Default::default()),
        );
        let _ = timeout(limit, async {
            self.flush().await?;
            self.stream.shutdown().await
        })
        .await;
    }
}
