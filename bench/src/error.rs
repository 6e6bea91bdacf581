//! The load tool's errors. A failed connection ends that client's task with
//! one of these; the run reports it rather than panicking.

use tidemq_protocol::ProtocolError;

use crate::wire::WireError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the broker refused the connection: CONNACK code {0:#04x}")]
    ConnectRefused(u8),
    #[error("the broker refused the subscription: SUBACK code {0:#04x}")]
    SubscribeRefused(u8),
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker sent DISCONNECT with reason {0:#04x}")]
    Disconnected(u8),
    #[error("malformed stream from the broker: {0}")]
    Framing(#[from] ProtocolError),
    #[error("malformed packet from the broker: {0}")]
    Wire(#[from] WireError),
    #[error("unexpected from the broker: {0}")]
    Unexpected(String),
    #[error("{0}")]
    Setup(String),
}
