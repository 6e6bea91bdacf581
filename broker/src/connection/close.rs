//! The end of a connection: the one log line and counter for why it ended,
//! its will (now, or after its MQTT 5 delay), and what survives of its
//! session.

use super::*;

/// Ends a connection: logs and counts why, publishes the will when the end
/// calls for it, and decides what survives: a persistent session parks its
/// state (and keeps its mailbox and subscriptions); a clean one is
/// forgotten. Dropping the client frees its session slot.
pub(super) async fn close(client: Client, end: End) {
    let ends_with_connection = client.ends_with_connection();
    let Client {
        ctx,
        conn_id,
        ownership,
        expiry,
        will,
        state,
        listener,
        version,
        ..
    } = client;
    report(&end, conn_id, &ownership.slot.client_id, &ctx);
    if let Some(disconnect) = end.disconnect(&ctx) {
        ctx.metrics.census.closed_by_broker.count(disconnect.reason);
    }
    listener.census.closed(version);
    ownership.slot.clear_conn(conn_id);
    let mut will_timer = None;
    let mut pending_will = None;
    let client_id = ownership.slot.client_id.clone();
    if let (true, Some(will)) = (end.publishes_will(), will) {
        match will_delay(&will, expiry) {
            Some(delay) => {
                // Written with the session while it waits; once it is
                // published, the session is written without it.
                let after = ctx
                    .store
                    .as_ref()
                    .map(|_| persist::settings(&client_id, expiry, None, true));
                pending_will = ctx.store.as_ref().map(|_| will.clone());
                will_timer = Some(delay_will(&ctx, *will, delay, after));
            }
            None => publish_will(&ctx, *will).await,
        }
    }
    let slot = &ownership.slot;
    slot.set_online(false);
    slot.release_owner(conn_id);
    if ends_with_connection {
        Session::discard(&ctx, slot, Some(state)).await;
        slot.set_persistent(false);
        ctx.registry.remove(slot, conn_id);
    } else {
        persist::went_offline(&ctx, &client_id, expiry, pending_will.as_deref());
        slot.park(state);
        // Let go of the slot first, so the expiry task finds it free; a
        // client that claimed it meanwhile keeps it online.
        let slot = Arc::clone(slot);
        drop(ownership);
        ctx.registry
            .went_offline(&slot, conn_id, expiry, will_timer);
    }
}

/// How long an MQTT 5 will waits: its Will Delay Interval, or less when the
/// session ends first [MQTT-3.1.3-9]; `None`: publish it now.
fn will_delay(will: &LastWill, expiry: Option<Duration>) -> Option<Duration> {
    let delay = Duration::from_secs(u64::from(will.delay_interval));
    let wait = expiry.map_or(delay, |expiry| delay.min(expiry));
    (!wait.is_zero()).then_some(wait)
}

/// Publishes the will after `delay` [MQTT-3.1.3-9] from a timer task of
/// the session's own (the dormitory watches sockets only). Its handle goes
/// into the session's offline mark: a connection resuming the session drops
/// it, which gives the will up; the session expiring first fires it. At most
/// one per offline session; it holds no reference to the broker, so it ends
/// with it too.
///
/// `after`: the session's settings to write once the will is out (with a
/// store).
pub(crate) fn delay_will(
    ctx: &Arc<Context>,
    will: LastWill,
    delay: Duration,
    after: Option<crate::store::StoredSession>,
) -> WillTimer {
    Metrics::incr(&ctx.metrics.wills_delayed);
    let (timer, fired) = WillTimer::new();
    let weak = Arc::downgrade(ctx);
    let shutdown = ctx.shutdown.clone();
    ctx.runtime.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
            fired = fired => if fired.is_err() { return },
        }
        if let Some(ctx) = weak.upgrade() {
            publish_will(&ctx, will).await;
            if let (Some(store), Some(after)) = (&ctx.store, after) {
                store.commit(None, |w| w.record(&crate::store::Record::Session(after)));
            }
        }
    });
    timer
}

/// Empties a session the expiry task owns: its parked state, its
/// subscriptions (answered by the router once gone, so nothing is delivered
/// under them afterwards) and its queued messages. A client that claims it
/// meanwhile waits for the task and then finds session present 0.
pub(crate) async fn forget_session(ctx: &Context, slot: &SessionSlot) {
    let parked = slot.take_parked();
    slot.set_persistent(false);
    Session::discard(ctx, slot, parked).await;
}

pub(crate) async fn publish_will(ctx: &Context, will: tidemq_protocol::LastWill) {
    Metrics::incr(&ctx.metrics.wills_published);
    debug!(topic = %will.topic, "publishing will");
    let message = Message::charged(will.topic, will.payload, will.qos, will.retain, &ctx.budget);
    // An MQTT 5 will's properties travel with it [MQTT-3.1.3-10].
    let message = match will.properties {
        Some(properties) => message.with_extra(MessageExtra::from_properties(*properties)),
        None => message,
    };
    let _ = ctx.router.publish(message, None).await;
}

/// The one place an end becomes a log line and a counter.
fn report(end: &End, conn_id: ConnId, client_id: &ClientId, ctx: &Context) {
    let (metrics, throttles) = (&ctx.metrics, &ctx.throttles);
    let conn_id = conn_id.0;
    // A refusal a client can repeat at will: counted always, logged at most
    // once a second.
    let refused = |counter: &std::sync::atomic::AtomicU64, throttle: &LogThrottle, why: &str| {
        if let Some(suppressed) = throttle.count(counter) {
            warn!(conn_id, %client_id, suppressed, "closing: {why}");
        }
    };
    match end {
        End::Disconnect => debug!("client disconnected"),
        End::DisconnectWithWill => debug!("client disconnected asking for its will (0x04)"),
        End::ReceiveMaximumExceeded => {
            Metrics::incr(&metrics.receive_maximum_exceeded);
            warn!(
                conn_id,
                %client_id,
                "closing: more unacknowledged QoS 1/2 PUBLISHes than receive_maximum [MQTT-3.3.4-8] (DISCONNECT 0x93)"
            );
        }
        End::SessionExpiryFromZero => {
            Metrics::incr(&metrics.protocol_errors);
            warn!(
                conn_id,
                %client_id,
                "closing: DISCONNECT set a Session Expiry Interval after CONNECT had 0 [MQTT-3.14.2-2]"
            );
        }
        End::AuthFailed(reason) => {
            info!(conn_id, %client_id, %reason, "closing: re-authentication refused");
        }
        End::UnexpectedAuth => {
            Metrics::incr(&metrics.protocol_errors);
            warn!(conn_id, %client_id, "closing: AUTH without an authentication method [MQTT-4.12.0-?]");
        }
        End::PeerClosed => debug!("peer closed the connection"),
        End::Io(error) => debug!(%error, "read failed"),
        End::Shutdown => debug!("closed for shutdown"),
        End::Protocol(error @ ProtocolError::PacketTooLarge { .. }) => {
            Metrics::incr(&metrics.packets_too_large);
            warn!(conn_id, %client_id, %error, "closing: packet too large");
        }
        End::Protocol(error) => {
            Metrics::incr(&metrics.protocol_errors);
            warn!(conn_id, %client_id, %error, "closing: protocol violation");
        }
        End::ReadLimit(ReadLimit::PacketTimeout) => refused(
            &metrics.packet_read_timeouts,
            &throttles.packet_read_timeout,
            "a packet did not arrive whole within packet_read_timeout_ms",
        ),
        End::ReadLimit(ReadLimit::MemoryLimit) => refused(
            &metrics.memory_limit_refusals,
            &throttles.memory,
            "over memory_limit_mb, no room for a partly read packet",
        ),
        End::KeepAliveTimeout => {
            Metrics::incr(&metrics.keepalive_timeouts);
            info!(conn_id, %client_id, "closing: keepalive timeout");
        }
        End::TooManyUnacknowledged => {
            Metrics::incr(&metrics.protocol_errors);
            warn!(
                conn_id,
                %client_id,
                "closing: more unacknowledged PUBLISHes than packet ids [MQTT-2.3.1-2]"
            );
        }
        End::TopicLimit => refused(
            &metrics.topics_refused_limit,
            &throttles.topic,
            "PUBLISH topic over max_topic_levels or max_topic_len",
        ),
        End::MemoryLimit => refused(
            &metrics.memory_limit_refusals,
            &throttles.memory,
            "QoS 1/2 PUBLISH while over memory_limit_mb (not acknowledged)",
        ),
        End::SlowSubscriber => {
            Metrics::incr(&metrics.slow_subscriber_disconnects);
            warn!(
                conn_id,
                %client_id,
                "closing: too slow, over max_queued_messages for slow_subscriber_timeout_ms"
            );
        }
        End::TakenOver => {
            Metrics::incr(&metrics.takeovers);
            info!(conn_id, %client_id, "closing: client id taken over by a new connection");
        }
        End::Kicked => {
            Metrics::incr(&metrics.clients_kicked);
            info!(conn_id, %client_id, "closing: disconnected by the admin API");
        }
        End::Writer(WriterEnd::Stalled) => {
            Metrics::incr(&metrics.write_timeouts);
            warn!(
                conn_id,
                %client_id,
                "closing: write made no progress within the write timeout"
            );
        }
        End::Writer(WriterEnd::Failed(error)) => debug!(%error, "write failed"),
        End::Writer(_) | End::WriterEnded => debug!("write side closed"),
        End::Rest => debug!("rested"),
    }
}
