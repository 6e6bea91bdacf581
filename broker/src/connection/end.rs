//! Why a connection ended: the one type every task's end is turned into. It
//! decides the log line and counter (`close::report`), whether the will is
//! published, whether the writer may flush, and the DISCONNECT an MQTT 5
//! client is sent.

use tidemq_protocol::{Disconnect, ProtocolError, ReasonCode};

use super::reader::{ReadError, ReadLimit};
use super::writer::WriterEnd;
use super::Context;
use crate::router::RouterGone;

/// Why a connection ended; decides the log line, the counter and the will.
#[derive(Debug)]
pub enum End {
    /// The client sent DISCONNECT.
    Disconnect,
    /// MQTT 5: the client sent DISCONNECT 0x04, asking for its will.
    DisconnectWithWill,
    /// MQTT 5: more QoS 1/2 PUBLISHes unacknowledged than the broker's
    /// Receive Maximum [MQTT-3.3.4-8].
    ReceiveMaximumExceeded,
    /// MQTT 5: DISCONNECT set a Session Expiry Interval after CONNECT had
    /// 0 [MQTT-3.14.2-2].
    SessionExpiryFromZero,
    /// MQTT 5: AUTH on a connection that did not authenticate with a
    /// method, or naming another method [MQTT-4.12.0-?].
    UnexpectedAuth,
    /// MQTT 5: the authenticator refused a re-authentication.
    AuthFailed(ReasonCode),
    /// The peer closed the socket without DISCONNECT.
    PeerClosed,
    Io(std::io::Error),
    Protocol(ProtocolError),
    KeepAliveTimeout,
    /// A packet too slow to arrive whole, or no memory budget left for it.
    ReadLimit(ReadLimit),
    TakenOver,
    /// Disconnected by the admin API (`DELETE /api/clients/{id}`).
    Kicked,
    /// The mailbox stayed over its limit for `slow_subscriber_timeout_ms`.
    SlowSubscriber,
    /// More unacknowledged PUBLISHes than packet ids [MQTT-2.3.1-2].
    TooManyUnacknowledged,
    /// A PUBLISH to a topic over `max_topic_levels` or `max_topic_len`.
    TopicLimit,
    /// A QoS 1/2 PUBLISH while the broker is over `memory_limit_mb`: closed
    /// unacknowledged, so the client sends it again later.
    MemoryLimit,
    /// The write task ended; the reason is fetched from it.
    WriterEnded,
    Writer(WriterEnd),
    Shutdown,
    /// Not an end: the connection had nothing to do for `rest_after_ms` and
    /// goes to the dormitory.
    Rest,
}

impl End {
    /// The will is published on every end but a normal DISCONNECT
    /// [MQTT-3.1.2-10] and broker shutdown.
    pub fn publishes_will(&self) -> bool {
        !matches!(self, End::Disconnect | End::Shutdown)
    }

    /// Whether the writer may flush what is queued before the socket closes.
    pub fn is_graceful(&self) -> bool {
        matches!(
            self,
            End::Disconnect | End::DisconnectWithWill | End::Shutdown
        )
    }

    /// The DISCONNECT an MQTT 5 client is sent for this end, if the
    /// connection can still carry one [MQTT-4.13.2-1]: never after the
    /// client's own DISCONNECT [MQTT-3.14.0-1] or a broken socket.
    pub fn disconnect(&self, ctx: &Context) -> Option<Disconnect> {
        if let (End::Shutdown, Some((reference, moved))) =
            (self, ctx.live.get().connections.redirect())
        {
            let mut disconnect = Disconnect::new(moved);
            disconnect.properties.server_reference = Some(reference.to_owned());
            return Some(disconnect);
        }
        let (reason, why) = match self {
            End::KeepAliveTimeout => (ReasonCode::KEEP_ALIVE_TIMEOUT, "keepalive timeout"),
            End::TakenOver => (ReasonCode::SESSION_TAKEN_OVER, "session taken over"),
            End::Kicked => (
                ReasonCode::ADMINISTRATIVE_ACTION,
                "disconnected by an administrator",
            ),
            End::Shutdown => (ReasonCode::SERVER_SHUTTING_DOWN, "server shutting down"),
            End::Protocol(error) => (error.reason_code(), "bad packet"),
            End::ReceiveMaximumExceeded => (
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                "more unacknowledged PUBLISHes than Receive Maximum",
            ),
            End::TooManyUnacknowledged => (
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                "more unacknowledged PUBLISHes than packet ids",
            ),
            End::SessionExpiryFromZero => (
                ReasonCode::PROTOCOL_ERROR,
                "session expiry interval changed from 0",
            ),
            End::UnexpectedAuth => (ReasonCode::PROTOCOL_ERROR, "AUTH out of the exchange"),
            // DISCONNECT has no 0x86: every refusal is 0x87 there.
            End::AuthFailed(_) => (ReasonCode::NOT_AUTHORIZED, "re-authentication failed"),
            End::TopicLimit => (
                ReasonCode::QUOTA_EXCEEDED,
                "topic over max_topic_levels or max_topic_len",
            ),
            End::SlowSubscriber => (ReasonCode::QUOTA_EXCEEDED, "too slow: queue over its limit"),
            End::MemoryLimit | End::ReadLimit(ReadLimit::MemoryLimit) => {
                (ReasonCode::SERVER_BUSY, "server over its memory limit")
            }
            End::ReadLimit(ReadLimit::PacketTimeout) => (
                ReasonCode::KEEP_ALIVE_TIMEOUT,
                "a packet did not arrive whole in time",
            ),
            _ => return None,
        };
        let mut disconnect = Disconnect::new(reason);
        disconnect.properties.reason_string = Some(why.to_owned());
        Some(disconnect)
    }
}

impl From<ReadError> for End {
    fn from(error: ReadError) -> End {
        match error {
            ReadError::Closed => End::PeerClosed,
            ReadError::Io(error) => End::Io(error),
            ReadError::Protocol(error) => End::Protocol(error),
            ReadError::Limit(limit) => End::ReadLimit(limit),
        }
    }
}

impl From<RouterGone> for End {
    fn from(_: RouterGone) -> End {
        End::Shutdown
    }
}
