//! MQTT wire format for tidemq: bytes in, typed packets out, and back.
//!
//! This crate knows nothing of sockets, tasks or time. The broker feeds the
//! bytes it read into a [`Framer`], which answers with a whole [`Frame`], "need
//! more", or an error that ends the connection. A frame is then decoded into a
//! version-neutral [`Packet`] (the CONNECT by [`decode_connect`], everything
//! after it by [`decode_packet`]); bodies are parsed by `mqttbytes` and every
//! rule `mqttbytes` skips is checked here, each error naming its rule of the
//! specification. Outgoing packets are written by [`encode`] straight into the
//! connection's write buffer.
//!
//! | module     | owns                                                       |
//! |------------|------------------------------------------------------------|
//! | `framer`   | partial and sticky reads; the packet size limit            |
//! | `connect`  | CONNECT parsing for MQTT 3.1 (`MQIsdp`) and 3.1.1 (`MQTT`) |
//! | `decode`   | every other client packet, via `mqttbytes`                 |
//! | `validate` | the spec rules `mqttbytes` does not check                  |
//! | `topic`    | `TopicName` / `TopicFilter` and matching                   |
//! | `encode`   | server packets into a write buffer                         |

mod alias;
mod connect;
mod decode;
mod encode;
mod error;
mod framer;
mod packet;
mod reader;
mod reason;
mod topic;
mod v5;
mod validate;

pub use alias::TopicAliases;
pub use connect::decode_connect;
pub use decode::decode_packet;
pub use encode::{
    encode, encode_connect, encode_packet, encode_publish_ref, encoded_publish_len,
    encoded_publish_ref_len, PublishRef, PublishV5,
};
pub use error::{ProtocolError, SpecViolation};
pub use framer::{put_remaining_length, Frame, Framer, MAX_REMAINING_LENGTH};
pub use packet::{
    Ack, AckProperties, Auth, ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, LastWill, Outgoing, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe,
    UserProperty,
};
pub use reason::ReasonCode;
pub use topic::{TopicFilter, TopicName, MAX_TOPIC_LEVELS};
pub use v5::decode_server_packet;
