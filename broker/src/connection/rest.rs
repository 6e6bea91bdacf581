//! Resting: a connection with nothing to do hands its socket and its
//! [`Client`] to the dormitory, and is woken from there (mail, a packet, its
//! keepalive deadline, a takeover, shutdown). A resting MQTT 5 connection
//! that ends where it rests (taken over) is still sent its DISCONNECT.

use super::*;

/// Hands a connection to the dormitory. It gives up its token too (a
/// takeover rings its alarm instead) and gets a new one when it wakes.
pub(super) fn rest<S: Transport>(client: Client, stream: S, leftover: ReadBuffer) {
    let (socket, parked) = match stream.park() {
        Ok(parts) => parts,
        Err(error) => {
            // The stream is gone; end the connection from a task of its own.
            let runtime = client.ctx.runtime.clone();
            runtime.spawn(close(client, End::Io(error)));
            return;
        }
    };
    Metrics::incr(&client.ctx.metrics.connections_rested);
    client.slot().release_owner(client.conn_id);
    let in_flight = client.state.outbound.in_flight();
    client.slot().set_in_flight(in_flight);
    // Keep a partial packet (with its deadline and its charge); an empty
    // buffer's room is not worth its bytes.
    let leftover = (!leftover.is_empty()).then(|| Box::new(leftover));
    let ctx = Arc::clone(&client.ctx);
    ctx.dormitory.admit(Box::new(Resting::<S> {
        client,
        socket,
        parked,
        leftover,
    }));
}

/// A connection in the dormitory.
struct Resting<S: Transport> {
    client: Client,
    socket: std::net::TcpStream,
    /// What the transport keeps besides the socket (a TLS session).
    parked: S::Parked,
    /// A partial packet read before the rest, if any.
    leftover: Option<Box<ReadBuffer>>,
}

impl<S: Transport> Sleeper for Resting<S> {
    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// The earlier of the keepalive's and the partial packet's deadlines;
    /// the woken read task ends a connection past the latter.
    fn deadline(&self) -> Option<std::time::Instant> {
        let keepalive = self
            .client
            .keepalive()
            .map(|keepalive| self.client.last_packet + keepalive);
        let packet_timeout = self.client.settings.packet_read_timeout();
        let partial = self
            .leftover
            .as_ref()
            .and_then(|buf| buf.deadline(packet_timeout));
        let deadline = match (keepalive, partial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        deadline.map(Instant::into_std)
    }

    fn install_alarm(&self, alarm: Alarm) -> bool {
        let slot = self.client.slot();
        let mail_waiting = slot.mailbox.install_alarm(alarm);
        // A claim or a kick made since the rest began found no alarm to
        // ring.
        mail_waiting || !slot.is_latest(self.client.conn_id) || slot.is_kicked()
    }

    fn wake(self: Box<Self>) {
        let runtime = self.client.ctx.runtime.clone();
        runtime.spawn(wake::<S>(self));
    }
}

/// Writes an MQTT 5 connection's DISCONNECT for `end` to a stream that has
/// no tasks (a resting connection ended where it rests), within `timeout`,
/// then shuts it down.
async fn farewell<S: Transport>(mut stream: S, end: &End, ctx: &Context, v5: &v5::V5Conn) {
    let timeout = ctx.live.get().write_timeout();
    let Some(disconnect) = end.disconnect(ctx) else {
        return;
    };
    let mut buf = bytes::BytesMut::new();
    v5.encode(Outgoing::Disconnect(disconnect), &mut buf);
    ctx.metrics.sent_packet(&buf);
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&buf).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

async fn wake<S: Transport>(resting: Box<Resting<S>>) {
    let Resting {
        client,
        socket,
        parked,
        leftover,
    } = *resting;
    let span = live_span(&client);
    async move {
        let token = client.ctx.shutdown.child_token();
        let stream = TcpStream::from_std(socket).and_then(|socket| S::unpark(socket, parked));
        if !client.slot().install_owner(client.conn_id, token.clone()) {
            if let (Some(v5), Ok(stream)) = (client.v5.as_deref(), stream) {
                farewell(stream, &End::TakenOver, &client.ctx, v5).await;
            }
            return close(client, End::TakenOver).await;
        }
        if client.slot().is_kicked() {
            // The admin API's kick rang the alarm (see `Registry::kick`).
            token.cancel();
            if let (Some(v5), Ok(stream)) = (client.v5.as_deref(), stream) {
                farewell(stream, &End::Kicked, &client.ctx, v5).await;
            }
            return close(client, End::Kicked).await;
        }
        match stream {
            Ok(stream) => {
                let leftover = match leftover {
                    Some(buf) => *buf,
                    None => ReadBuffer::new(bytes::BytesMut::new(), &client.ctx.budget),
                };
                live(client, token, stream, leftover, Vec::new(), false).await
            }
            Err(error) => close(client, End::Io(error)).await,
        }
    }
    .instrument(span)
    .await
}
