//! The MQTT state of one session, as pure state machines: no I/O, no tasks,
//! no time. The connection's session task drives them; when a persistent
//! session's connection ends, its [`SessionState`] is parked in the session's
//! slot and taken up by the next connection with the same client id.

mod inbound;
mod outbound;

pub use inbound::Inbound;
pub use outbound::Outbound;

/// Everything about a session that must survive a reconnect, besides its
/// subscriptions (owned by the router) and its queued messages (its mailbox).
#[derive(Debug)]
pub struct SessionState {
    pub outbound: Outbound,
    pub inbound: Inbound,
}

impl SessionState {
    pub fn new(max_inflight: usize) -> SessionState {
        SessionState {
            outbound: Outbound::new(max_inflight),
            inbound: Inbound::default(),
        }
    }
}
