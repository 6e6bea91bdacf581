//! Property tests of the read path as the broker's reader drives it: bytes
//! arrive in chunks of any size, go into one growing `BytesMut`, and
//! `Framer::next_frame` is called until it answers "need more".
//!
//! - Any sequence of valid client packets, cut anywhere, decodes back to the
//!   same sequence, and the read buffer stays bounded by the packet limit.
//! - Any bytes at all (random, or well-framed packets with random bodies)
//!   never panic, and never make the buffer grow past the packet limit plus
//!   one read; the first error ends the stream, as it ends a connection.
//! - The same with large packets, whose remaining length takes two, three
//!   or four bytes: bodies up to 64 KiB decode back through any chunking,
//!   random ones never panic, and a header announcing more than the limit
//!   is refused as soon as its length is known [MQTT-2.2.3].

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::{packet_id, qos};
use proptest::collection::vec;
use proptest::prelude::*;
use tidemq_protocol::{
    decode_connect, decode_packet, encode_packet, put_remaining_length, Ack, Disconnect, Framer,
    Packet, ProtocolError, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
    TopicFilter, TopicName, Unsubscribe, MAX_REMAINING_LENGTH,
};

/// Packet limit for the valid streams: above the largest generated packet
/// (2 KB payload plus a topic of at most 6 levels of 6 four-byte chars).
const VALID_MAX_PACKET_SIZE: usize = 4096;

/// Packet limit for the garbage streams.
const GARBAGE_MAX_PACKET_SIZE: usize = 1024;

/// The largest chunk one "read" delivers.
const MAX_CHUNK: usize = 4096;

/// Largest body of the multi-byte-length streams: a three-byte remaining
/// length, as a real subscriber's payloads have.
const LARGE_BODY: usize = 64 * 1024;

/// Packet limit for the multi-byte-length streams: the largest body fits,
/// and some of the announced lengths below do not.
const LARGE_MAX_PACKET_SIZE: usize = LARGE_BODY + 1024;

// ---- strategies ----------------------------------------------------------

/// One level of a topic: any chars but the separator, wildcards and U+0000.
fn level() -> impl Strategy<Value = String> {
    "[^/+#\\x00]{0,6}"
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    vec(level(), 1..=6).prop_filter_map("topic name must not be empty", |levels| {
        TopicName::new(&levels.join("/")).ok()
    })
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let filter_level = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (vec(filter_level, 1..=6), any::<bool>()).prop_filter_map(
        "topic filter must not be empty",
        |(mut levels, multi)| {
            if multi {
                levels.push("#".to_owned());
            }
            TopicFilter::new(&levels.join("/")).ok()
        },
    )
}

fn publish() -> impl Strategy<Value = Publish> {
    let payload = vec(any::<u8>(), 0..=2048).prop_map(Bytes::from);
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        payload,
    )
        .prop_map(|(qos, dup, retain, topic, id, payload)| {
            let with_id = qos != QoS::AtMostOnce;
            Publish {
                // [MQTT-3.3.1-2] DUP is 0 on every QoS 0 message.
                dup: dup && with_id,
                qos,
                retain,
                topic,
                packet_id: with_id.then_some(id),
                payload,
                properties: None,
            }
        })
}

fn client_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        4 => publish().prop_map(Packet::Publish),
        1 => packet_id().prop_map(|id| Packet::PubAck(Ack::new(id))),
        1 => packet_id().prop_map(|id| Packet::PubRec(Ack::new(id))),
        1 => packet_id().prop_map(|id| Packet::PubRel(Ack::new(id))),
        1 => packet_id().prop_map(|id| Packet::PubComp(Ack::new(id))),
        2 => (packet_id(), vec((topic_filter(), qos()), 1..=4)).prop_map(|(packet_id, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters: filters
                    .into_iter()
                    .map(|(f, q)| (f, SubscriptionOptions::qos(q)))
                    .collect(),
                subscription_identifier: None,
                user_properties: Vec::new(),
            })
        }),
        2 => (packet_id(), vec(topic_filter(), 1..=4)).prop_map(|(packet_id, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                user_properties: Vec::new(),
            })
        }),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::Disconnect(Disconnect::default())),
    ]
}

/// The sizes successive reads deliver, used round-robin: mostly tiny (to cut
/// inside fixed headers and length prefixes), sometimes a whole socket read.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    let size = prop_oneof![4 => 1..=8usize, 2 => 1..=300usize, 1 => 1..=MAX_CHUNK];
    vec(size, 1..=16)
}

/// A valid MQTT 3.1.1 or 3.1 CONNECT, so the garbage after it reaches
/// `decode_packet`.
fn connect_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\x10\x0F\x00\x04MQTT\x04\x02\x00\x3C\x00\x03abc".to_vec()),
        Just(b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3C\x00\x03abc".to_vec()),
    ]
}

/// A packet with a random first byte and a random body of the length its
/// header announces: well framed, so the decoders see it, but rarely valid.
fn framed_garbage() -> impl Strategy<Value = Vec<u8>> {
    // Half the time a first byte a client may send, so the body parsers run.
    let client_first_byte = prop::sample::select(vec![
        0x30, 0x32, 0x34, 0x3B, 0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xC0, 0xE0,
    ]);
    let first_byte = prop_oneof![any::<u8>(), client_first_byte];
    (first_byte, vec(any::<u8>(), 0..=40)).prop_map(|(first_byte, body)| {
        let mut out = vec![first_byte, body.len() as u8];
        out.extend(body);
        out
    })
}

/// Valid packets with a few bytes overwritten.
fn corrupted_packets() -> impl Strategy<Value = Vec<u8>> {
    let edits = vec((any::<prop::sample::Index>(), any::<u8>()), 1..=4);
    (vec(client_packet(), 1..=8), edits).prop_map(|(packets, edits)| {
        let mut wire = BytesMut::new();
        for packet in &packets {
            encode_packet(packet, ProtocolVersion::V311, &mut wire);
        }
        for (index, byte) in edits {
            let at = index.index(wire.len());
            wire[at] = byte;
        }
        wire.to_vec()
    })
}

fn garbage_stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (connect_bytes(), corrupted_packets()).prop_map(|(c, rest)| [c, rest].concat()),
        vec(any::<u8>(), 0..=4096),
        (connect_bytes(), vec(any::<u8>(), 0..=4096)).prop_map(|(c, rest)| [c, rest].concat()),
        (connect_bytes(), vec(framed_garbage(), 0..=40)).prop_map(|(c, packets)| [
            c,
            packets.concat()
        ]
        .concat()),
    ]
}

/// A valid PUBLISH with a payload up to [`LARGE_BODY`]: its remaining
/// length takes one to three bytes.
fn large_publish() -> impl Strategy<Value = Packet> {
    let payload_len = prop_oneof![0..=127usize, 128..=16_383usize, 16_384..=LARGE_BODY];
    (topic_name(), payload_len, any::<u8>(), packet_id()).prop_map(|(topic, len, fill, id)| {
        // Varied bytes without generating each one: the length is the point.
        let payload: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(id),
            payload: Bytes::from(payload),
            properties: None,
        })
    })
}

/// A well-framed packet whose remaining length takes one to three bytes,
/// with a random body of that length, or a four-byte length far over the
/// limit followed by the start of a body.
fn framed_garbage_multibyte() -> impl Strategy<Value = Vec<u8>> {
    let client_first_byte = prop::sample::select(vec![
        0x30, 0x32, 0x34, 0x3B, 0x40, 0x62, 0x82, 0xA2, 0xC0, 0xE0,
    ]);
    let first_byte = prop_oneof![any::<u8>(), client_first_byte];
    let body = prop_oneof![
        2 => vec(any::<u8>(), 0..=127),
        2 => vec(any::<u8>(), 128..=16_383),
        1 => vec(any::<u8>(), 16_384..=LARGE_BODY),
    ];
    let framed = (first_byte.clone(), body).prop_map(|(first_byte, body)| {
        let mut out = BytesMut::new();
        out.extend_from_slice(&[first_byte]);
        put_remaining_length(&mut out, body.len());
        out.extend_from_slice(&body);
        out.to_vec()
    });
    let oversized = (
        first_byte,
        (LARGE_MAX_PACKET_SIZE + 1)..=MAX_REMAINING_LENGTH,
        vec(any::<u8>(), 0..=64),
    )
        .prop_map(|(first_byte, announced, start)| {
            let mut out = BytesMut::new();
            out.extend_from_slice(&[first_byte]);
            put_remaining_length(&mut out, announced);
            out.extend_from_slice(&start);
            out.to_vec()
        });
    prop_oneof![6 => framed, 1 => oversized]
}

// ---- the reader loop -----------------------------------------------------

/// Feeds `input` to a framer the way the broker's reader does and hands each
/// frame to `on_frame`; stops at the first error. Checks after every read
/// that the buffer holds at most one partial packet plus that read.
fn feed(
    input: &[u8],
    chunks: &[usize],
    max_packet_size: usize,
    mut on_frame: impl FnMut(tidemq_protocol::Frame) -> Result<(), ()>,
) -> Result<(), ()> {
    let framer = Framer::new(max_packet_size);
    let mut buf = BytesMut::new();
    let mut rest = input;
    for &chunk in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (read, tail) = rest.split_at(chunk.min(rest.len()));
        rest = tail;
        assert!(
            buf.len() < max_packet_size.max(5),
            "a partial packet never reaches the limit"
        );
        buf.extend_from_slice(read);
        while let Some(frame) = framer.next_frame(&mut buf).map_err(drop)? {
            assert!(frame.bytes.len() <= max_packet_size);
            on_frame(frame)?;
        }
        assert!(
            buf.capacity() <= 2 * max_packet_size + MAX_CHUNK,
            "read buffer grew to {} bytes",
            buf.capacity()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_packets_survive_any_chunking(
        packets in vec(client_packet(), 1..=16),
        chunks in chunk_sizes(),
    ) {
        let mut wire = BytesMut::new();
        for packet in &packets {
            encode_packet(packet, ProtocolVersion::V311, &mut wire);
        }
        let mut decoded = Vec::new();
        let result = feed(&wire, &chunks, VALID_MAX_PACKET_SIZE, |frame| {
            decoded.push(decode_packet(&frame, ProtocolVersion::V311).unwrap());
            Ok(())
        });
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(decoded, packets);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        input in garbage_stream(),
        chunks in chunk_sizes(),
    ) {
        let mut version = None;
        let _ = feed(&input, &chunks, GARBAGE_MAX_PACKET_SIZE, |frame| {
            match version {
                None => version = Some(decode_connect(&frame).map_err(drop)?.version),
                Some(version) => {
                    decode_packet(&frame, version).map_err(drop)?;
                }
            }
            Ok(())
        });
    }

    #[test]
    fn every_frame_of_garbage_decodes_without_panic(
        packets in vec(framed_garbage(), 0..=64),
        v31 in any::<bool>(),
    ) {
        // Unlike the broker, keep going after a decode error, so every frame
        // reaches both decoders.
        let version = if v31 { ProtocolVersion::V31 } else { ProtocolVersion::V311 };
        let input = packets.concat();
        let _ = feed(&input, &[MAX_CHUNK], GARBAGE_MAX_PACKET_SIZE, |frame| {
            let _ = decode_connect(&frame);
            let _ = decode_packet(&frame, version);
            Ok(())
        });
    }
}

proptest! {
    // Fewer cases: each one moves up to a few hundred KiB.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn large_packets_with_multibyte_lengths_survive_any_chunking(
        packets in vec(prop_oneof![3 => client_packet(), 2 => large_publish()], 1..=6),
        chunks in chunk_sizes(),
    ) {
        let mut wire = BytesMut::new();
        for packet in &packets {
            encode_packet(packet, ProtocolVersion::V311, &mut wire);
        }
        let mut decoded = Vec::new();
        let result = feed(&wire, &chunks, LARGE_MAX_PACKET_SIZE, |frame| {
            decoded.push(decode_packet(&frame, ProtocolVersion::V311).unwrap());
            Ok(())
        });
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(decoded, packets);
    }

    #[test]
    fn random_bodies_with_multibyte_lengths_never_panic_and_stay_bounded(
        connect in connect_bytes(),
        packets in vec(framed_garbage_multibyte(), 0..=6),
        chunks in chunk_sizes(),
        keep_going in any::<bool>(),
    ) {
        let input = [connect, packets.concat()].concat();
        let mut version = None;
        let _ = feed(&input, &chunks, LARGE_MAX_PACKET_SIZE, |frame| {
            match version {
                None => version = Some(decode_connect(&frame).map_err(drop)?.version),
                Some(version) => {
                    let decoded = decode_packet(&frame, version);
                    // Half the runs go past decode errors, so every frame
                    // reaches the decoder; the broker stops at the first.
                    if !keep_going {
                        decoded.map_err(drop)?;
                    }
                }
            }
            Ok(())
        });
    }

    #[test]
    fn mqtt_2_2_3_an_oversized_length_is_refused_before_its_body_arrives(
        announced in (LARGE_MAX_PACKET_SIZE + 1)..=MAX_REMAINING_LENGTH,
        first_byte in any::<u8>(),
    ) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[first_byte]);
        put_remaining_length(&mut buf, announced);
        let framer = Framer::new(LARGE_MAX_PACKET_SIZE);
        let refused = framer.next_frame(&mut buf);
        prop_assert!(
            matches!(refused, Err(ProtocolError::PacketTooLarge { .. })),
            "{} bytes announced: {:?}", announced, refused
        );
    }
}
