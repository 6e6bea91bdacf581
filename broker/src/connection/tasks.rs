//! The read and write tasks of one run of a connection, the channels to
//! them, and how a run stops: for good (the writer flushing first after a
//! graceful end, or writing an MQTT 5 client's DISCONNECT under a deadline)
//! or for a rest (the reader stopping between reads, the stream joined
//! again).

use super::*;

/// Longest wait for the writer to flush after DISCONNECT or at shutdown.
const GRACEFUL_FLUSH: Duration = Duration::from_secs(5);

/// How a run of the tasks stopped.
pub(super) enum Outcome<S> {
    Ended(End),
    /// The session rested; the stream is whole again.
    Rested {
        stream: S,
        leftover: ReadBuffer,
        /// Decoded while the reader was stopping.
        pending: Vec<Inbound>,
    },
}

pub(super) struct Stopped<S> {
    pub(super) outcome: Outcome<S>,
    pub(super) client: Client,
}

/// The read and write tasks of one connection and the channels to them.
pub(super) struct Tasks<S> {
    reader: JoinHandle<(ReadHalf<S>, ReadBuffer, Option<ReadError>)>,
    writer: JoinHandle<(WriteHalf<S>, WriterEnd)>,
    inbound: mpsc::Receiver<Inbound>,
    pub(super) outgoing: mpsc::Sender<Bytes>,
    /// Whether the writer is in the middle of a batch.
    pub(super) writing: Arc<AtomicBool>,
    /// Stops the reader at its next read (rest), or at once with `token`.
    reader_stop: CancellationToken,
    /// The writer has its own token so that a graceful end (DISCONNECT,
    /// shutdown, rest) can let it flush before it is stopped.
    writer_token: CancellationToken,
    token: CancellationToken,
}

impl<S: Transport> Tasks<S> {
    pub(super) fn spawn(
        stream: S,
        client: &Client,
        token: &CancellationToken,
        leftover: ReadBuffer,
    ) -> Tasks<S> {
        let (read_half, write_half) = tokio::io::split(stream);
        let ctx = &client.ctx;
        let limits = &client.settings.limits;
        let (inbound_tx, inbound) = mpsc::channel(limits.inbound_queue);
        let (outgoing, outgoing_rx) = mpsc::channel(limits.outbound_queue);
        let config = ReadConfig {
            framer: Framer::new(limits.max_packet_size),
            version: client.version,
            packet_timeout: client.settings.packet_read_timeout(),
            metrics: Arc::clone(&ctx.metrics),
        };
        let reader_stop = token.child_token();
        let reader = tokio::spawn(reader::run(
            read_half,
            leftover,
            config,
            inbound_tx,
            reader_stop.clone(),
        ));
        let writing = Arc::new(AtomicBool::new(false));
        let config = WriterConfig {
            batch_bytes: limits.write_batch_bytes,
            write_timeout: client.settings.write_timeout(),
            writing: Arc::clone(&writing),
            metrics: Arc::clone(&ctx.metrics),
        };
        let writer_token = CancellationToken::new();
        let writer = tokio::spawn(writer::run(
            write_half,
            outgoing_rx,
            config,
            writer_token.clone(),
        ));
        Tasks {
            reader,
            writer,
            inbound,
            outgoing,
            writing,
            reader_stop,
            writer_token,
            token: token.clone(),
        }
    }

    /// Runs the session until it ends or rests, then stops both tasks and
    /// waits for them: no task outlives a run.
    pub(super) async fn run(
        mut self,
        mut session: Session,
        pending: Vec<Inbound>,
        first: bool,
    ) -> Stopped<S> {
        let end = session
            .run(&mut self.inbound, &mut self.writer, pending, first)
            .await;
        let client = session.into_client();
        let outcome = match end {
            End::Rest => self.stop_for_rest(&client.ctx, client.slot()).await,
            end => {
                let grace = client.settings.write_timeout().min(GRACEFUL_FLUSH);
                // MQTT 5: the server's DISCONNECT, written under the grace
                // deadline before the socket closes [MQTT-4.13.2-1].
                let farewell = client
                    .v5
                    .as_deref()
                    .and_then(|v5| Some((v5, end.disconnect(&client.ctx)?)));
                let said = match farewell {
                    Some((v5, disconnect)) => {
                        self.say_goodbye(v5, disconnect, grace, &client.ctx.metrics)
                            .await
                    }
                    None => false,
                };
                let graceful = said || end.is_graceful();
                self.stop(graceful.then_some(grace)).await;
                Outcome::Ended(end)
            }
        };
        Stopped { outcome, client }
    }

    /// Lets the writer flush and the reader stop between reads, keeping
    /// what it decodes meanwhile, and joins the stream again.
    async fn stop_for_rest(mut self, ctx: &Context, slot: &SessionSlot) -> Outcome<S> {
        drop(self.outgoing);
        self.reader_stop.cancel();
        let mut pending = Vec::new();
        let reader = loop {
            tokio::select! {
                joined = &mut self.reader => break joined,
                Some(inbound) = self.inbound.recv() => pending.push(inbound),
            }
        };
        while let Ok(inbound) = self.inbound.try_recv() {
            pending.push(inbound);
        }
        // The writer was idle when the session chose to rest, so it ends at
        // once; a takeover or shutdown meanwhile still wins.
        let writer = tokio::select! {
            joined = &mut self.writer => joined,
            _ = self.token.cancelled() => {
                self.writer_token.cancel();
                let _ = (&mut self.writer).await;
                return Outcome::Ended(cancelled_end(ctx, slot));
            }
        };
        let (Ok((read_half, leftover, read_error)), Ok((write_half, writer_end))) =
            (reader, writer)
        else {
            return Outcome::Ended(End::WriterEnded);
        };
        if let Some(error) = read_error {
            pending.push(Inbound::Failed(error));
        }
        if !matches!(writer_end, WriterEnd::Drained) {
            // The socket failed. A DISCONNECT read meanwhile still counts
            // (no will); other packets go with the connection.
            let disconnected = pending
                .iter()
                .any(|inbound| matches!(inbound, Inbound::Packet(Packet::Disconnect(_))));
            return Outcome::Ended(if disconnected {
                End::Disconnect
            } else {
                End::Writer(writer_end)
            });
        }
        Outcome::Rested {
            stream: read_half.unsplit(write_half),
            leftover,
            pending,
        }
    }

    /// Queues the server's DISCONNECT for the writer, waiting at most
    /// `grace` for room; `false` when it could not be queued.
    async fn say_goodbye(
        &mut self,
        v5: &v5::V5Conn,
        disconnect: Disconnect,
        grace: Duration,
        metrics: &Metrics,
    ) -> bool {
        let mut buf = bytes::BytesMut::new();
        v5.encode(Outgoing::Disconnect(disconnect), &mut buf);
        let packet = buf.freeze();
        let send = self.outgoing.send(packet.clone());
        let queued = matches!(tokio::time::timeout(grace, send).await, Ok(Ok(())));
        if queued {
            metrics.sent_packet(&packet);
        }
        queued
    }

    /// Stops both tasks for good; after a graceful end the writer flushes
    /// first and the socket is shut down.
    async fn stop(mut self, grace: Option<Duration>) {
        drop(self.outgoing);
        let mut write_half = None;
        if let Some(grace) = grace {
            if let Ok(Ok((half, WriterEnd::Drained))) =
                tokio::time::timeout(grace, &mut self.writer).await
            {
                write_half = Some(half);
            }
        }
        self.token.cancel();
        self.reader_stop.cancel();
        self.writer_token.cancel();
        drop(self.inbound);
        let _ = self.reader.await;
        if let (Some(mut half), Some(grace)) = (write_half, grace) {
            let _ = tokio::time::timeout(grace, half.shutdown()).await;
        } else if !self.writer.is_finished() {
            let _ = self.writer.await;
        }
    }
}
