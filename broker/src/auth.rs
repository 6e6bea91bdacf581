//! MQTT 5 enhanced authentication (section 4.12): the [`Authenticator`]
//! trait a method plugs in through, and the exchange it drives. The broker
//! has no method of its own yet (the security work adds SCRAM-SHA-256 and
//! password files); with none configured, a CONNECT naming a method gets
//! CONNACK 0x8C and an AUTH packet is a protocol error.
//!
//! | step                                  | broker sends                  |
//! |---------------------------------------|-------------------------------|
//! | CONNECT with method M and data        | `start`, then `step(data)`    |
//! | `Continue(d)`                         | AUTH 0x18 (M, d); client answers AUTH 0x18 |
//! | `Success(d)`                          | CONNACK 0x00 (M, d), or AUTH 0x00 when re-authenticating |
//! | `Failure(code)`                       | CONNACK `code`, or DISCONNECT `code` when re-authenticating |
//! | client AUTH 0x19 (M) while connected  | re-authentication: a new exchange |
//! | method other than M, or no method     | CONNACK 0x8C / DISCONNECT 0x82 |

use std::fmt::Debug;

use bytes::Bytes;
use tidemq_protocol::ReasonCode;

/// Rounds of AUTH one exchange may take before it is refused: bounds the
/// work a client can ask of an authenticator.
pub const MAX_AUTH_ROUNDS: usize = 16;

/// One step of an exchange, as the method decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Authenticated; the data (if any) goes to the client with the answer.
    Success(Option<Bytes>),
    /// The client must answer this data with an AUTH 0x18.
    Continue(Bytes),
    /// Refused with this reason (0x86 bad user name or password, 0x87 not
    /// authorized, ...).
    Failure(ReasonCode),
}

/// An authentication method: the broker asks it for one exchange per
/// connection (and per re-authentication).
pub trait Authenticator: Send + Sync + Debug {
    /// The Authentication Method it answers to, e.g. `SCRAM-SHA-256`.
    fn method(&self) -> &str;

    /// A new exchange for a client that gave this client id and user name.
    fn start(&self, client_id: &str, username: Option<&str>) -> Box<dyn AuthExchange>;
}

/// The state of one exchange. Runs on the connection's task: a method that
/// does expensive work (a slow hash) should hand it to a blocking thread.
pub trait AuthExchange: Send + Sync + Debug {
    /// The next step, given the client's Authentication Data (`None` when
    /// the packet carried none).
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}
