//! Every packet in its version-5 form. Each body is written by one function
//! over a [`Sink`]: run once on a counter for the remaining length, once on
//! the buffer, so the two cannot disagree.

use bytes::{BufMut, BytesMut};

use crate::encode::{PublishRef, PublishV5};
use crate::framer::{put_remaining_length, remaining_length_len};
use crate::packet::{
    Ack, AckProperties, Auth, ConnAckProperties, Connect, ConnectProperties, Disconnect, LastWill,
    Outgoing, Packet, PacketId, Publish, PublishProperties, QoS, RetainHandling,
    SubscriptionOptions,
};
use crate::reason::ReasonCode;

use super::properties::*;

/// Writes one whole packet: first byte, remaining length, body.
fn packet(buf: &mut BytesMut, first_byte: u8, body: &dyn Fn(&mut dyn Sink)) {
    let len = measure(body);
    buf.reserve(1 + remaining_length_len(len) + len);
    buf.put_u8(first_byte);
    put_remaining_length(buf, len);
    body(buf);
}

pub(super) fn encode(packet: &Outgoing, buf: &mut BytesMut) {
    match packet {
        Outgoing::ConnAck(connack) => {
            // [MQTT-3.2.2-6]: session present is 0 with a failure code.
            let present = connack.session_present && !connack.reason.is_failure();
            self::packet(buf, 0x20, &|s| {
                s.put(&[u8::from(present), connack.reason.0]);
                put_block(s, &|s| connack_properties(s, &connack.properties));
            });
        }
        Outgoing::Publish(publish) => owned_publish(publish, buf),
        Outgoing::PubAck(ack) => put_ack(buf, 0x40, ack),
        Outgoing::PubRec(ack) => put_ack(buf, 0x50, ack),
        Outgoing::PubRel(ack) => put_ack(buf, 0x62, ack),
        Outgoing::PubComp(ack) => put_ack(buf, 0x70, ack),
        Outgoing::SubAck {
            packet_id,
            codes,
            properties,
        } => put_codes(buf, 0x90, *packet_id, codes, properties),
        Outgoing::UnsubAck {
            packet_id,
            codes,
            properties,
        } => put_codes(buf, 0xB0, *packet_id, codes, properties),
        Outgoing::PingResp => buf.put_slice(&[0xD0, 0]),
        Outgoing::Disconnect(disconnect) => put_disconnect(buf, disconnect),
        Outgoing::Auth(auth) => put_auth(buf, auth),
    }
}

pub(super) fn encode_packet(packet: &Packet, buf: &mut BytesMut) {
    match packet {
        Packet::Publish(publish) => owned_publish(publish, buf),
        Packet::PubAck(ack) => put_ack(buf, 0x40, ack),
        Packet::PubRec(ack) => put_ack(buf, 0x50, ack),
        Packet::PubRel(ack) => put_ack(buf, 0x62, ack),
        Packet::PubComp(ack) => put_ack(buf, 0x70, ack),
        Packet::Subscribe(subscribe) => self::packet(buf, 0x82, &|s| {
            s.put(&subscribe.packet_id.get().to_be_bytes());
            put_block(s, &|s| {
                if let Some(id) = subscribe.subscription_identifier {
                    var_int(s, SUBSCRIPTION_IDENTIFIER, id);
                }
                user_properties(s, &subscribe.user_properties);
            });
            for (filter, options) in &subscribe.filters {
                put_str(s, filter.as_str());
                s.put(&[options_byte(options)]);
            }
        }),
        Packet::Unsubscribe(unsubscribe) => self::packet(buf, 0xA2, &|s| {
            s.put(&unsubscribe.packet_id.get().to_be_bytes());
            put_block(s, &|s| user_properties(s, &unsubscribe.user_properties));
            for filter in &unsubscribe.filters {
                put_str(s, filter.as_str());
            }
        }),
        Packet::PingReq => buf.put_slice(&[0xC0, 0]),
        Packet::Disconnect(disconnect) => put_disconnect(buf, disconnect),
        Packet::Auth(auth) => put_auth(buf, auth),
    }
}

/// The options byte of one SUBSCRIBE entry (3.8.3.1).
fn options_byte(options: &SubscriptionOptions) -> u8 {
    let retain_handling = match options.retain_handling {
        RetainHandling::OnSubscribe => 0,
        RetainHandling::OnNewSubscription => 1,
        RetainHandling::Never => 2,
    };
    options.qos as u8
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | retain_handling << 4
}

/// An owned PUBLISH writes all its properties, topic alias and
/// subscription identifiers included: a broker's copy carries the
/// subscriber's, and a test client may write what a client must not.
fn owned_publish(publish: &Publish, buf: &mut BytesMut) {
    let properties = publish.properties.as_deref();
    let v5 = PublishV5 {
        properties,
        message_expiry_interval: properties.and_then(|p| p.message_expiry_interval),
        topic_alias: properties.and_then(|p| p.topic_alias),
        omit_topic: false,
        subscription_identifiers: properties.map_or(&[], |p| &p.subscription_identifiers),
    };
    encode_publish(&PublishRef::from(publish), &v5, buf);
}

fn publish_first_byte(publish: &PublishRef<'_>) -> u8 {
    0x30 | u8::from(publish.dup) << 3 | (publish.qos as u8) << 1 | u8::from(publish.retain)
}

fn publish_body(s: &mut dyn Sink, publish: &PublishRef<'_>, v5: &PublishV5<'_>) {
    put_str(
        s,
        if v5.omit_topic {
            ""
        } else {
            publish.topic.as_str()
        },
    );
    if let (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id) {
        s.put(&id.get().to_be_bytes());
    }
    put_block(s, &|s| {
        if let Some(p) = v5.properties {
            forwarded_properties(s, p);
        }
        four(s, MESSAGE_EXPIRY_INTERVAL, v5.message_expiry_interval);
        two(s, TOPIC_ALIAS, v5.topic_alias);
        for id in v5.subscription_identifiers {
            var_int(s, SUBSCRIPTION_IDENTIFIER, *id);
        }
    });
    s.put(publish.payload);
}

/// What passes through the broker unchanged [MQTT-3.3.2-15] to
/// [MQTT-3.3.2-20]: everything but expiry, alias and subscription ids.
fn forwarded_properties(s: &mut dyn Sink, p: &PublishProperties) {
    byte(s, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    string(s, CONTENT_TYPE, p.content_type.as_deref());
    string(
        s,
        RESPONSE_TOPIC,
        p.response_topic.as_ref().map(|t| t.as_str()),
    );
    binary(s, CORRELATION_DATA, p.correlation_data.as_deref());
    user_properties(s, &p.user_properties);
}

pub(super) fn encode_publish(publish: &PublishRef<'_>, v5: &PublishV5<'_>, buf: &mut BytesMut) {
    if let Some(remaining) = plain_remaining_len(publish, v5) {
        return put_plain_publish(publish, remaining, buf);
    }
    packet(buf, publish_first_byte(publish), &|s| {
        publish_body(s, publish, v5)
    });
}

pub(super) fn encoded_publish_len(publish: &PublishRef<'_>, v5: &PublishV5<'_>) -> usize {
    let len = plain_remaining_len(publish, v5)
        .unwrap_or_else(|| measure(&|s| publish_body(s, publish, v5)));
    1 + remaining_length_len(len) + len
}

/// The remaining length of a PUBLISH that carries no property at all (most
/// messages), which is written without the general writer's measuring
/// pass: a delivery is the broker's hottest path. `None` otherwise.
fn plain_remaining_len(publish: &PublishRef<'_>, v5: &PublishV5<'_>) -> Option<usize> {
    let forwards_nothing = v5.properties.is_none_or(|p| {
        p.payload_format_indicator.is_none()
            && p.content_type.is_none()
            && p.response_topic.is_none()
            && p.correlation_data.is_none()
            && p.user_properties.is_empty()
    });
    let plain = forwards_nothing
        && v5.message_expiry_interval.is_none()
        && v5.topic_alias.is_none()
        && v5.subscription_identifiers.is_empty()
        && !v5.omit_topic;
    let id_len = match (publish.qos, publish.packet_id) {
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(_)) => 2,
        _ => 0,
    };
    // Topic, packet id, a property length of 0, payload.
    plain.then(|| 2 + publish.topic.as_str().len() + id_len + 1 + publish.payload.len())
}

fn put_plain_publish(publish: &PublishRef<'_>, remaining: usize, buf: &mut BytesMut) {
    buf.reserve(1 + remaining_length_len(remaining) + remaining);
    buf.put_u8(publish_first_byte(publish));
    put_remaining_length(buf, remaining);
    let topic = publish.topic.as_str().as_bytes();
    buf.put_u16(topic.len().min(usize::from(u16::MAX)) as u16);
    buf.put_slice(topic);
    if let (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id) {
        buf.put_u16(id.get());
    }
    buf.put_u8(0);
    buf.put_slice(publish.payload);
}

fn ack_props(s: &mut dyn Sink, p: &AckProperties) {
    string(s, REASON_STRING, p.reason_string.as_deref());
    user_properties(s, &p.user_properties);
}

/// The reason and the properties are left out when they say nothing
/// (3.4.2.1): a successful ack is four bytes, as in 3.1.1.
fn put_ack(buf: &mut BytesMut, first_byte: u8, ack: &Ack) {
    if ack.reason == ReasonCode::SUCCESS && ack.properties.is_empty() {
        // The common case, without the general writer's measuring pass.
        let [hi, lo] = ack.packet_id.get().to_be_bytes();
        return buf.put_slice(&[first_byte, 2, hi, lo]);
    }
    packet(buf, first_byte, &|s| {
        s.put(&ack.packet_id.get().to_be_bytes());
        reason_and_block(s, ack.reason, !ack.properties.is_empty(), &|s| {
            ack_props(s, &ack.properties)
        });
    });
}

/// A reason code and a property block, the trailing ones omitted when they
/// are 0x00 / empty (PUBACK to PUBCOMP, DISCONNECT, AUTH).
fn reason_and_block(
    s: &mut dyn Sink,
    reason: ReasonCode,
    has_properties: bool,
    write: &dyn Fn(&mut dyn Sink),
) {
    if reason == ReasonCode::SUCCESS && !has_properties {
        return;
    }
    s.put(&[reason.0]);
    if has_properties {
        put_block(s, write);
    }
}

fn put_codes(
    buf: &mut BytesMut,
    first_byte: u8,
    packet_id: PacketId,
    codes: &[ReasonCode],
    properties: &AckProperties,
) {
    packet(buf, first_byte, &|s| {
        s.put(&packet_id.get().to_be_bytes());
        put_block(s, &|s| ack_props(s, properties));
        for code in codes {
            s.put(&[code.0]);
        }
    });
}

fn put_disconnect(buf: &mut BytesMut, disconnect: &Disconnect) {
    let p = &disconnect.properties;
    packet(buf, 0xE0, &|s| {
        reason_and_block(s, disconnect.reason, *p != Default::default(), &|s| {
            four(s, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
            string(s, REASON_STRING, p.reason_string.as_deref());
            user_properties(s, &p.user_properties);
            string(s, SERVER_REFERENCE, p.server_reference.as_deref());
        });
    });
}

fn put_auth(buf: &mut BytesMut, auth: &Auth) {
    let has_properties = auth.authentication_method.is_some()
        || auth.authentication_data.is_some()
        || auth.reason_string.is_some()
        || !auth.user_properties.is_empty();
    packet(buf, 0xF0, &|s| {
        reason_and_block(s, auth.reason, has_properties, &|s| {
            string(
                s,
                AUTHENTICATION_METHOD,
                auth.authentication_method.as_deref(),
            );
            binary(s, AUTHENTICATION_DATA, auth.authentication_data.as_deref());
            string(s, REASON_STRING, auth.reason_string.as_deref());
            user_properties(s, &auth.user_properties);
        });
    });
}

fn connack_properties(s: &mut dyn Sink, p: &ConnAckProperties) {
    four(s, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    two(s, RECEIVE_MAXIMUM, p.receive_maximum);
    byte(s, MAXIMUM_QOS, p.maximum_qos);
    byte(s, RETAIN_AVAILABLE, p.retain_available);
    four(s, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    string(
        s,
        ASSIGNED_CLIENT_IDENTIFIER,
        p.assigned_client_identifier.as_deref(),
    );
    two(s, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    string(s, REASON_STRING, p.reason_string.as_deref());
    user_properties(s, &p.user_properties);
    byte(
        s,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    byte(
        s,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifiers_available,
    );
    byte(
        s,
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    two(s, SERVER_KEEP_ALIVE, p.server_keep_alive);
    string(s, RESPONSE_INFORMATION, p.response_information.as_deref());
    string(s, SERVER_REFERENCE, p.server_reference.as_deref());
    string(s, AUTHENTICATION_METHOD, p.authentication_method.as_deref());
    binary(s, AUTHENTICATION_DATA, p.authentication_data.as_deref());
}

fn connect_properties(s: &mut dyn Sink, p: &ConnectProperties) {
    four(s, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    two(s, RECEIVE_MAXIMUM, p.receive_maximum);
    four(s, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    two(s, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    byte(
        s,
        REQUEST_RESPONSE_INFORMATION,
        p.request_response_information,
    );
    byte(
        s,
        REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information,
    );
    user_properties(s, &p.user_properties);
    string(s, AUTHENTICATION_METHOD, p.authentication_method.as_deref());
    binary(s, AUTHENTICATION_DATA, p.authentication_data.as_deref());
}

/// A will's properties: its delay (left out when 0), then what a PUBLISH
/// would forward, with its message expiry.
fn will_properties(s: &mut dyn Sink, will: &LastWill) {
    four(
        s,
        WILL_DELAY_INTERVAL,
        (will.delay_interval != 0).then_some(will.delay_interval),
    );
    if let Some(p) = will.properties.as_deref() {
        forwarded_properties(s, p);
        four(s, MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    }
}

/// The body of a CONNECT of any version (section 3.1.2 and 3.1.3).
fn encode_connect_body(s: &mut dyn Sink, connect: &Connect) {
    use crate::connect::{CLEAN_SESSION, PASSWORD, USERNAME, WILL, WILL_RETAIN};
    use crate::packet::ProtocolVersion;
    let (name, level): (&str, u8) = match connect.version {
        ProtocolVersion::V31 => ("MQIsdp", 3),
        ProtocolVersion::V311 => ("MQTT", 4),
        ProtocolVersion::V5 => ("MQTT", 5),
    };
    let mut flags = 0;
    if connect.username.is_some() {
        flags |= USERNAME;
    }
    if connect.password.is_some() {
        flags |= PASSWORD;
    }
    if let Some(will) = &connect.will {
        flags |= WILL | (will.qos as u8) << 3;
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if connect.clean_session {
        flags |= CLEAN_SESSION;
    }
    let v5 = connect.version.is_v5();
    put_str(s, name);
    s.put(&[level, flags]);
    s.put(&connect.keep_alive.to_be_bytes());
    if v5 {
        put_block(s, &|s| connect_properties(s, &connect.properties));
    }
    put_str(s, &connect.client_id);
    if let Some(will) = &connect.will {
        if v5 {
            put_block(s, &|s| will_properties(s, will));
        }
        put_str(s, will.topic.as_str());
        put_binary(s, &will.payload);
    }
    if let Some(username) = &connect.username {
        put_str(s, username);
    }
    if let Some(password) = &connect.password {
        put_binary(s, password);
    }
}

/// Appends a CONNECT of the version `connect.version` names.
pub(crate) fn encode_connect(connect: &Connect, buf: &mut BytesMut) {
    packet(buf, 0x10, &|s| encode_connect_body(s, connect));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicName;

    #[test]
    fn the_plain_publish_fast_path_writes_what_the_general_writer_writes() {
        let topic = TopicName::new("a/b").unwrap();
        let empty = PublishProperties::default();
        for (qos, packet_id) in [
            (QoS::AtMostOnce, None),
            (QoS::AtLeastOnce, PacketId::new(7)),
            (QoS::ExactlyOnce, PacketId::new(65535)),
        ] {
            for payload in [&b""[..], b"x", &[9u8; 300][..]] {
                for properties in [None, Some(&empty)] {
                    let publish = PublishRef {
                        dup: qos != QoS::AtMostOnce,
                        qos,
                        retain: true,
                        topic: &topic,
                        packet_id,
                        payload,
                        v5: None,
                    };
                    let v5 = PublishV5 {
                        properties,
                        ..PublishV5::default()
                    };
                    let mut fast = BytesMut::new();
                    encode_publish(&publish, &v5, &mut fast);
                    let mut general = BytesMut::new();
                    packet(&mut general, publish_first_byte(&publish), &|s| {
                        publish_body(s, &publish, &v5)
                    });
                    assert_eq!(fast, general);
                    assert_eq!(encoded_publish_len(&publish, &v5), general.len());
                }
            }
        }
    }
}
