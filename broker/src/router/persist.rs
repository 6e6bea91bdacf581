//! What the router writes to the store for one published message, in one
//! commit that carries the publisher's receipt: the message, its deliveries
//! to persistent sessions, its retained state and the publisher's QoS 2
//! packet id. The PUBACK / PUBREC waits for that commit to be durable.
//!
//! The commit is queued before the deliveries are offered, so a session
//! that takes a delivery at once and records it done cannot get its record
//! into the log ahead of the delivery's own.

use std::sync::Arc;

use tidemq_protocol::{PacketId, QoS};

use super::retain::Update;
use super::Match;
use crate::metrics::Metrics;
use crate::store::{instant_to_unix_ms, Store, Writer};
use crate::types::{ClientId, Message, Receipt};

/// A persistent publisher's QoS 2 packet id, held until its PUBREL.
pub type Hold = (ClientId, PacketId);

/// Gives a message the store may keep its number (QoS 1/2 or retained;
/// never `$SYS`, which the broker publishes again itself). The router is its
/// only holder at this point.
pub fn number(store: &Store, message: &mut Arc<Message>) {
    let keeps = message.qos != QoS::AtMostOnce || message.retain;
    if !keeps || message.stored_id != 0 || message.topic.as_str().starts_with("$SYS/") {
        return;
    }
    if let Some(message) = Arc::get_mut(message) {
        message.stored_id = store.next_message_id();
    }
}

/// Whether the delivery of `message` for this match is kept on disk.
pub fn is_kept(found: &Match, message: &Message) -> bool {
    message.stored_id != 0
        && found.qos.min(message.qos) != QoS::AtMostOnce
        && found.slot.is_persistent()
}

/// Writes one published message's commit (see the module docs). `full`:
/// the store is at `max_bytes`, so no delivery and no retained value is
/// added (the caller drops those deliveries).
#[allow(clippy::too_many_arguments)]
pub fn write_publish(
    store: &Store,
    message: &Message,
    matches: &[Match],
    retained: Option<Update>,
    hold: Option<&Hold>,
    receipt: Option<&Receipt>,
    full: bool,
    metrics: &Metrics,
) {
    let mut kept = matches
        .iter()
        .filter(|found| !full && is_kept(found, message))
        .peekable();
    let retain = match retained {
        Some(Update::Stored) if message.stored_id != 0 && !full => Some(true),
        Some(Update::Stored) if message.stored_id != 0 => {
            Metrics::incr(&metrics.retained_refused_storage_full);
            Some(false)
        }
        Some(_) if message.stored_id != 0 => Some(false),
        _ => None,
    };
    if kept.peek().is_none() && retain.is_none() && hold.is_none() {
        return;
    }
    let id = message.stored_id;
    let topic = message.topic.as_str();
    store.commit(receipt, |w| {
        if kept.peek().is_some() || retain == Some(true) {
            write_message(w, message);
        }
        for found in kept {
            let qos = found.qos.min(message.qos);
            let retain = found.retain_as_published && message.retain;
            let ids = found
                .extra
                .as_ref()
                .map_or(&[][..], |extra| &extra.subscription_ids);
            w.queue(found.slot.client_id.as_str(), id, qos, retain, ids);
        }
        match retain {
            Some(true) => w.retain(topic, id),
            Some(false) => w.unretain(topic),
            None => {}
        }
        if let Some((client_id, packet_id)) = hold {
            w.hold(client_id.as_str(), packet_id.get());
        }
    });
}

/// A message's own record.
pub fn write_message(w: &mut Writer<'_>, message: &Message) {
    w.message(
        message.stored_id,
        message.topic.as_str(),
        &message.payload,
        message.qos,
        message.retain,
        message.expires_at().map(instant_to_unix_ms),
        message.properties(),
    );
}
