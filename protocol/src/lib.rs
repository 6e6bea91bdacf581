//! MQTT wire format for tidemq: bytes in, typed packets out, and back, for
//! MQTT 3.1, 3.1.1 and 5.0.
//!
//! This crate knows nothing of sockets, tasks or time. The broker feeds the
//! bytes it read into a [`Framer`], which answers with a whole [`Frame`], "need
//! more", or an error that ends the connection. A frame is then decoded into a
//! version-neutral [`Packet`] (the CONNECT by [`decode_connect`], everything
//! after it by [`decode_packet`] in the version the CONNECT named). 3.1.1
//! bodies are parsed by `mqttbytes` and every rule it skips is checked here;
//! 5.0 bodies are parsed here, strictly. Every error names its rule of the
//! specification, and [`ProtocolError::reason_code`] gives the MQTT 5 reason
//! code to answer it with. Outgoing packets are written by [`encode`]
//! straight into the connection's write buffer; [`encode_packet`] and
//! [`encode_connect`] write what a client sends and [`decode_server_packet`]
//! reads what a broker sends, for the tests and the load tool. The session
//! resolves a v5 client's Topic Aliases with [`TopicAliases`].
//!
//! | module     | owns                                                       |
//! |------------|------------------------------------------------------------|
//! | `framer`   | partial and sticky reads; the packet size limit            |
//! | `reader`   | bounded field readers (integers, strings, binary, VBI)     |
//! | `connect`  | CONNECT parsing for 3.1 (`MQIsdp`), 3.1.1 and 5.0 (`MQTT`) |
//! | `decode`   | every other 3.1/3.1.1 client packet, via `mqttbytes`       |
//! | `validate` | fixed-header rules `mqttbytes` does not check (all versions) |
//! | `v5`       | MQTT 5 properties, packet decoding and encoding            |
//! | `alias`    | inbound Topic Alias table of one connection                |
//! | `topic`    | `TopicName` / `TopicFilter` and matching                   |
//! | `encode`   | packets into a write buffer; dispatches 5.0 to `v5`        |

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
