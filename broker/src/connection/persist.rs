//! What a connection writes to the store about its session (`storage`):
//! its settings when the client connects (expiry, will), again when the
//! connection ends (offline since when, the will still waiting for its
//! delay), and nothing for a clean session without a will.

use super::*;
use crate::store::{unix_ms_now, Record, StoredSession, StoredWill};

/// A session's settings as the store keeps them.
pub(crate) fn settings(
    client_id: &ClientId,
    expiry: Option<Duration>,
    will: Option<&LastWill>,
    offline: bool,
) -> StoredSession {
    StoredSession {
        client_id: client_id.to_string(),
        expiry_secs: expiry.map(|e| u32::try_from(e.as_secs()).unwrap_or(u32::MAX - 1)),
        will: will.map(|will| StoredWill {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            delay_secs: will.delay_interval,
            properties: will.properties.clone(),
        }),
        offline_at_ms: offline.then(unix_ms_now),
    }
}

/// On connect: a session that outlives its connection, or has a will to
/// publish if the broker crashes, is written.
pub(super) fn connected(client: &Client) {
    let Some(store) = &client.ctx.store else {
        return;
    };
    if client.ends_with_connection() && client.will.is_none() {
        return;
    }
    let slot = client.slot();
    let record = settings(
        &slot.client_id,
        client.expiry,
        client.will.as_deref(),
        false,
    );
    slot.mark_stored();
    store.commit(None, |w| w.record(&Record::Session(record)));
}

/// On close of a session that survives it: offline from now, with the
/// will that waits for its delay (if any).
pub(super) fn went_offline(
    ctx: &Context,
    client_id: &ClientId,
    expiry: Option<Duration>,
    pending_will: Option<&LastWill>,
) {
    if let Some(store) = &ctx.store {
        let record = settings(client_id, expiry, pending_will, true);
        store.commit(None, |w| w.record(&Record::Session(record)));
    }
}
