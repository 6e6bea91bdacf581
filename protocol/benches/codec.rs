//! Criterion benchmarks of the wire format: framing and decoding a read
//! buffer full of PUBLISHes, and encoding one PUBLISH for N subscribers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidemq_protocol::{
    decode_packet, encode, encode_packet, Framer, Outgoing, Packet, PacketId, ProtocolVersion,
    Publish, QoS, TopicName,
};

fn publish(qos: QoS, payload: usize) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new("site/42/device/1234/temperature").unwrap(),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(7).unwrap()),
        payload: Bytes::from(vec![0xAB; payload]),
        properties: None,
    }
}

/// One read's worth of packets: 100 PUBLISHes back to back.
fn frame_and_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_and_decode_100_publishes");
    for payload in [64, 1024] {
        let mut wire = BytesMut::new();
        for _ in 0..100 {
            encode_packet(
                &Packet::Publish(publish(QoS::AtLeastOnce, payload)),
                ProtocolVersion::V311,
                &mut wire,
            );
        }
        let wire = wire.freeze();
        group.throughput(Throughput::Elements(100));
        group.bench_with_input(BenchmarkId::from_parameter(payload), &wire, |b, wire| {
            let framer = Framer::new(1024 * 1024);
            b.iter(|| {
                let mut buf = BytesMut::from(wire.as_ref());
                let mut count = 0;
                while let Some(frame) = framer.next_frame(&mut buf).unwrap() {
                    decode_packet(&frame, ProtocolVersion::V311).unwrap();
                    count += 1;
                }
                assert_eq!(count, 100);
            });
        });
    }
    group.finish();
}

/// The write side of a fan-out: one PUBLISH encoded for N subscribers.
fn encode_for_subscribers(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_publish_for_n_subscribers");
    for subscribers in [1u64, 100, 1000] {
        let packet = Outgoing::Publish(publish(QoS::AtMostOnce, 64));
        group.throughput(Throughput::Elements(subscribers));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, &n| {
                let mut buf = BytesMut::with_capacity(128 * n as usize);
                b.iter(|| {
                    buf.clear();
                    for _ in 0..n {
                        encode(&packet, ProtocolVersion::V311, &mut buf);
                    }
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, frame_and_decode, encode_for_subscribers);
criterion_main!(benches);
