//! A bounded fuzz run of whole connections (issues 7 and 8: MQTT 3.1, 3.1.1
//! and 5 CONNECTs and packets, MQTT 5 properties): random byte streams go
//! into [`serve`] over `tokio::io::duplex`, through the real reader, session
//! task and router, for [`FUZZ_BUDGET`] of wall time or [`FUZZ_CASES`]
//! streams, whichever comes first, so it runs on every `cargo test`.
//!
//! Streams: pure noise; a valid CONNECT (3.1 or 3.1.1 with random flags and
//! a will now and then, or MQTT 5 with random limits, expiry, will delay and
//! sometimes an authentication method) followed by valid packets of its
//! version (MQTT 5 ones with random properties, subscription options, AUTH
//! and DISCONNECT with a reason), corrupted packets, well-framed
//! packets with random bodies whose remaining length takes 1 to 4 bytes (up
//! to `max_packet_size`, and announced lengths far beyond it), and malformed
//! length prefixes; all delivered in random splits. A few client ids are
//! shared, so takeovers and persistent sessions happen too.
//!
//! Oracles: no panic on any broker thread; every connection ends within
//! [`CASE_BOUND`] once its client has stopped writing; afterwards no
//! connection is left open, the memory budget is back where it started, and a
//! normal client still subscribes, publishes and receives.
//!
//! Longer runs: `TIDEMQ_FUZZ_SECS=600 cargo test -p tidemq --lib fuzz --
//! --nocapture` (lifts the case limit too). A failure prints its seed and
//! case; `TIDEMQ_FUZZ_SEED=<seed> TIDEMQ_FUZZ_CASE=<case>` replays that one
//! stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};
use tidemq_protocol::{
    encode_connect, encode_packet, put_remaining_length, Ack, Auth, Connect, ConnectProperties,
    Disconnect, Framer, LastWill, Packet, PacketId, ProtocolVersion, Publish, PublishProperties,
    QoS, ReasonCode, RetainHandling, Subscribe, TopicFilter, TopicName, MAX_REMAINING_LENGTH,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::*;

/// Wall time of the fuzz run in CI: long enough for thousands of streams on
/// two shared cores (a debug build), short enough that the test stays well
/// under a minute. `TIDEMQ_FUZZ_SECS` overrides it.
const FUZZ_BUDGET: Duration = Duration::from_secs(20);
/// Most streams in CI, so a fast machine does not spend the whole budget.
const FUZZ_CASES: u64 = 20_000;
/// Streams fed at once.
const CONCURRENCY: usize = 4;
/// How long a connection may take to end after its client stopped writing.
const CASE_BOUND: Duration = Duration::from_secs(5);
/// `limits.max_packet_size` for the run: small enough that random bodies
/// reach it, large enough for three-byte remaining lengths.
const MAX_PACKET: usize = 64 * 1024;
/// Client ids the CONNECTs draw from: shared, so takeovers happen.
const CLIENT_IDS: u64 = 8;

/// Panics on the fuzz runtime's threads (connection tasks included, whose
/// panics their parents do not see).
static PANICS: AtomicUsize = AtomicUsize::new(0);
const THREAD_NAME: &str = "tidemq-fuzz";

fn count_panics_on_fuzz_threads() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(THREAD_NAME) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// SplitMix64: a seeded generator, so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn for_case(seed: u64, case: u64) -> Rng {
        let mut rng = Rng(seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// Random bytes, `0..max` of them.
    fn bytes_below(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        self.bytes(len)
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// A valid CONNECT with random flags, of a random version.
fn connect(rng: &mut Rng) -> (Vec<u8>, ProtocolVersion) {
    if rng.one_in(3) {
        return (connect_v5(rng), ProtocolVersion::V5);
    }
    let v31 = rng.one_in(3);
    let mut body = BytesMut::new();
    if v31 {
        put_str(&mut body, b"MQIsdp");
        body.put_u8(3);
    } else {
        put_str(&mut body, b"MQTT");
        body.put_u8(4);
    }
    let will = rng.one_in(4);
    let mut flags = if rng.one_in(2) { 0b10 } else { 0 };
    if will {
        flags |= 0b100 | ((rng.below(3) as u8) << 3) | ((rng.below(2) as u8) << 5);
    }
    body.put_u8(flags);
    body.put_u16(rng.next() as u16);
    let id = format!("fz{}", rng.below(CLIENT_IDS as usize));
    put_str(&mut body, id.as_bytes());
    if will {
        put_str(&mut body, b"f/will");
        let payload = rng.bytes_below(64);
        put_str(&mut body, &payload);
    }
    let mut wire = BytesMut::new();
    wire.put_u8(0x10);
    put_remaining_length(&mut wire, body.len());
    wire.put_slice(&body);
    let version = if v31 {
        ProtocolVersion::V31
    } else {
        ProtocolVersion::V311
    };
    (wire.to_vec(), version)
}

/// An MQTT 5 CONNECT with random limits, expiry and will delay, through the
/// protocol crate's encoder.
fn connect_v5(rng: &mut Rng) -> Vec<u8> {
    let small = |rng: &mut Rng, n: usize| rng.one_in(2).then(|| rng.range(1, n) as u16);
    let properties = ConnectProperties {
        session_expiry_interval: rng.one_in(2).then(|| rng.below(3) as u32),
        receive_maximum: small(rng, 4),
        maximum_packet_size: rng.one_in(3).then(|| rng.range(16, 512) as u32),
        topic_alias_maximum: small(rng, 4),
        request_problem_information: rng.one_in(3).then(|| rng.below(2) as u8),
        authentication_method: rng.one_in(16).then(|| "X".to_owned()),
        ..ConnectProperties::default()
    };
    let will = rng.one_in(4).then(|| LastWill {
        topic: TopicName::new("f/will").unwrap(),
        payload: rng.bytes_below(64).into(),
        qos: [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][rng.below(3)],
        retain: rng.one_in(2),
        delay_interval: rng.below(2) as u32,
        properties: None,
    });
    let connect = Connect {
        version: ProtocolVersion::V5,
        client_id: format!("fz{}", rng.below(CLIENT_IDS as usize)),
        clean_session: rng.one_in(2),
        keep_alive: rng.next() as u16,
        will,
        username: None,
        password: None,
        properties,
    };
    let mut wire = BytesMut::new();
    encode_connect(&connect, &mut wire);
    wire.to_vec()
}

/// MQTT 5 properties a client may put on a PUBLISH, at random.
fn publish_properties(rng: &mut Rng) -> Option<Box<PublishProperties>> {
    if !rng.one_in(2) {
        return None;
    }
    Some(Box::new(PublishProperties {
        topic_alias: rng.one_in(2).then(|| rng.range(1, 6) as u16),
        message_expiry_interval: rng.one_in(3).then(|| rng.below(3) as u32),
        user_properties: vec![("k".into(), "v".into()); rng.below(3)],
        content_type: rng.one_in(3).then(|| "t".to_owned()),
        ..PublishProperties::default()
    }))
}

fn topic(rng: &mut Rng) -> String {
    let levels = rng.range(1, 4);
    let names = ["f", "a", "b", "#", "+", "", "x"];
    (0..levels)
        .map(|_| names[rng.below(names.len())])
        .collect::<Vec<_>>()
        .join("/")
}

/// A valid client packet of `version` (when the random topic makes one).
fn valid_packet(rng: &mut Rng, version: ProtocolVersion) -> Vec<u8> {
    let v5 = version.is_v5();
    let id = PacketId::new(rng.range(1, 0xFFFF) as u16).unwrap();
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][rng.below(3)];
    let packet = match rng.below(6) {
        0 | 1 => match TopicName::new(&topic(rng)) {
            Ok(topic) => Packet::Publish(Publish {
                dup: false,
                qos,
                retain: rng.one_in(8),
                topic,
                packet_id: (qos != QoS::AtMostOnce).then_some(id),
                payload: rng.bytes_below(MAX_PACKET / 4).into(),
                properties: if v5 { publish_properties(rng) } else { None },
            }),
            Err(_) => Packet::PingReq,
        },
        2 => match TopicFilter::new(&topic(rng)) {
            Ok(filter) => {
                let mut subscribe = Subscribe::qos(id, vec![(filter, qos)]);
                if v5 {
                    subscribe.subscription_identifier =
                        rng.one_in(2).then(|| rng.range(1, 9) as u32);
                    for (_, options) in &mut subscribe.filters {
                        options.no_local = rng.one_in(3);
                        options.retain_as_published = rng.one_in(3);
                        options.retain_handling = [
                            RetainHandling::OnSubscribe,
                            RetainHandling::OnNewSubscription,
                            RetainHandling::Never,
                        ][rng.below(3)];
                    }
                }
                Packet::Subscribe(subscribe)
            }
            Err(_) => Packet::PingReq,
        },
        3 => Packet::PubAck(Ack::new(id)),
        4 => Packet::PubRel(Ack::new(id)),
        5 if v5 && rng.one_in(4) => Packet::Auth(Auth::default()),
        5 if v5 && rng.one_in(4) => {
            let mut disconnect = Disconnect::new(ReasonCode([0, 4][rng.below(2)]));
            disconnect.properties.session_expiry_interval =
                rng.one_in(2).then(|| rng.below(3) as u32);
            Packet::Disconnect(disconnect)
        }
        _ => Packet::PingReq,
    };
    let mut wire = BytesMut::new();
    encode_packet(&packet, version, &mut wire);
    wire.to_vec()
}

/// A well-framed packet with a random body whose remaining length takes one
/// to four bytes; sometimes one announcing more than the limit, with only
/// the start of its body.
fn framed_noise(rng: &mut Rng) -> Vec<u8> {
    const CLIENT_FIRST_BYTES: [u8; 12] = [
        0x30, 0x32, 0x34, 0x3B, 0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xC0, 0xE0,
    ];
    let first = if rng.one_in(2) {
        CLIENT_FIRST_BYTES[rng.below(CLIENT_FIRST_BYTES.len())]
    } else {
        rng.byte()
    };
    let (announced, sent) = match rng.below(8) {
        0..=2 => {
            let n = rng.range(0, 127);
            (n, n)
        }
        3 | 4 => {
            let n = rng.range(128, 16_383);
            (n, n)
        }
        5 => {
            let n = rng.range(16_384, MAX_PACKET - 5);
            (n, n)
        }
        6 => (rng.range(MAX_PACKET - 5, MAX_PACKET + 16), 64),
        _ => (rng.range(2_097_152, MAX_REMAINING_LENGTH), rng.below(256)),
    };
    let mut wire = BytesMut::new();
    wire.put_u8(first);
    put_remaining_length(&mut wire, announced);
    wire.put_slice(&rng.bytes(sent));
    wire.to_vec()
}

/// One random stream, from the case's own generator.
fn stream(rng: &mut Rng) -> Vec<u8> {
    let (mut out, version) = connect(rng);
    match rng.below(8) {
        0 => return rng.bytes_below(4096),
        1 => {
            // A CONNECT with a few bytes overwritten.
            for _ in 0..rng.range(1, 3) {
                let at = rng.below(out.len());
                out[at] = rng.byte();
            }
        }
        _ => {}
    }
    for _ in 0..rng.range(0, 20) {
        match rng.below(10) {
            0..=3 => out.extend(valid_packet(rng, version)),
            4 => {
                let mut packet = valid_packet(rng, version);
                for _ in 0..rng.range(1, 4) {
                    let at = rng.below(packet.len());
                    packet[at] = rng.byte();
                }
                out.extend(packet);
            }
            // A remaining length that never ends [MQTT-2.2.3].
            5 => out.extend([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            _ => out.extend(framed_noise(rng)),
        }
        if out.len() > 4 * MAX_PACKET {
            break;
        }
    }
    out
}

/// Where to cut the stream: mostly tiny reads (inside headers and length
/// prefixes), sometimes large ones.
fn chunks(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut left = len;
    while left > 0 {
        let size = match rng.below(4) {
            0 | 1 => rng.range(1, 8),
            2 => rng.range(1, 512),
            _ => rng.range(1, 3 * MAX_PACKET / 2),
        }
        .min(left);
        cuts.push(size);
        left -= size;
    }
    cuts
}

fn fuzz_context() -> Arc<Context> {
    let mut settings = Settings::defaults().unwrap();
    settings.storage.enabled = false;
    settings.limits.max_packet_size = MAX_PACKET;
    settings.limits.max_connect_packet_size = 16 * 1024;
    settings.limits.max_queued_messages = 64;
    Context::for_tests(settings)
}

/// Feeds one stream, then closes the client's write side; the connection
/// must end within [`CASE_BOUND`].
async fn run_case(ctx: Arc<Context>, seed: u64, case: u64) -> Result<(), String> {
    let mut rng = Rng::for_case(seed, case);
    let input = stream(&mut rng);
    let cuts = chunks(&mut rng, input.len());
    let (client, server) = tokio::io::duplex(16 * 1024);
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let (admission, _) = ctx
        .gate
        .admit(peer.ip())
        .map_err(|refused| format!("case {case}: admission refused: {refused:?}"))?;
    let conn = tokio::spawn(serve(server, test_origin(peer, &ctx), ctx, admission));
    let (mut from_broker, mut to_broker) = tokio::io::split(client);
    // Whatever the broker answers is read, so its writes never stall.
    let drain = tokio::spawn(async move {
        let mut scratch = vec![0u8; 8192];
        while let Ok(1..) = from_broker.read(&mut scratch).await {}
    });
    let feed = async {
        let mut rest = input.as_slice();
        for cut in cuts {
            let (chunk, tail) = rest.split_at(cut);
            rest = tail;
            if to_broker.write_all(chunk).await.is_err() {
                break; // The broker closed: a fine answer to garbage.
            }
        }
        let _ = to_broker.shutdown().await;
    };
    let fail = |what: &str| format!("seed {seed} case {case} ({} bytes): {what}", input.len());
    tokio::time::timeout(CASE_BOUND, feed)
        .await
        .map_err(|_| fail("the broker stopped reading without closing"))?;
    match tokio::time::timeout(CASE_BOUND, conn).await {
        Err(_) => return Err(fail("the connection did not end")),
        Ok(Err(error)) => return Err(fail(&format!("the connection task failed: {error}"))),
        Ok(Ok(())) => {}
    }
    drop(to_broker);
    tokio::time::timeout(CASE_BOUND, drain)
        .await
        .map_err(|_| fail("the stream stayed open after the connection ended"))?
        .map_err(|error| fail(&format!("{error}")))?;
    Ok(())
}

/// A normal client over a fresh duplex: SUBSCRIBE, PUBLISH QoS 1 to itself,
/// and the SUBACK, PUBACK and PUBLISH must all arrive.
async fn normal_client_is_served(ctx: &Arc<Context>) {
    let (mut client, server) = tokio::io::duplex(16 * 1024);
    let peer = SocketAddr::from(([127, 0, 0, 1], 2));
    let (admission, _) = ctx.gate.admit(peer.ip()).unwrap();
    let _conn = tokio::spawn(serve(
        server,
        test_origin(peer, ctx),
        ctx.clone(),
        admission,
    ));
    let mut wire = BytesMut::new();
    let mut body = BytesMut::new();
    put_str(&mut body, b"MQTT");
    body.put_slice(&[4, 0b10, 0, 0]);
    put_str(&mut body, b"normal");
    wire.put_u8(0x10);
    put_remaining_length(&mut wire, body.len());
    wire.put_slice(&body);
    let filter = TopicFilter::new("n/t").unwrap();
    let packet_id = PacketId::new(1).unwrap();
    encode_packet(
        &Packet::Subscribe(Subscribe::qos(packet_id, vec![(filter, QoS::AtLeastOnce)])),
        ProtocolVersion::V311,
        &mut wire,
    );
    encode_packet(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::new("n/t").unwrap(),
            packet_id: PacketId::new(2),
            payload: bytes::Bytes::from_static(b"still here"),
            properties: None,
        }),
        ProtocolVersion::V311,
        &mut wire,
    );
    client.write_all(&wire).await.unwrap();
    let framer = Framer::new(usize::MAX);
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        while let Some(frame) = framer.next_frame(&mut buf).unwrap() {
            seen.push((frame.packet_type(), frame.body().to_vec()));
        }
        if seen.len() >= 4 {
            break;
        }
        let read = tokio::time::timeout(CASE_BOUND, client.read_buf(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(1..))),
            "the broker stopped answering: {seen:?}"
        );
    }
    let types: Vec<u8> = seen.iter().map(|(t, _)| *t).collect();
    assert_eq!(types[..2], [2, 9], "CONNACK, SUBACK: {seen:?}");
    assert!(types[2..].contains(&4), "PUBACK: {seen:?}");
    let publish = seen.iter().find(|(t, _)| *t == 3).expect("the PUBLISH");
    assert!(publish.1.ends_with(b"still here"));
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[test]
fn bounded_fuzz_random_streams_never_panic_and_every_connection_ends() {
    count_panics_on_fuzz_threads();
    let budget = env_u64("TIDEMQ_FUZZ_SECS").map_or(FUZZ_BUDGET, Duration::from_secs);
    let max_cases = if env_u64("TIDEMQ_FUZZ_SECS").is_some() {
        u64::MAX
    } else {
        FUZZ_CASES
    };
    let seed = env_u64("TIDEMQ_FUZZ_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
    });
    let only_case = env_u64("TIDEMQ_FUZZ_CASE");
    eprintln!("fuzz: seed {seed}, budget {budget:?}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREAD_NAME)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let ctx = fuzz_context();
        let memory_before = ctx.metrics.snapshot().memory_accounted_bytes;
        let started = std::time::Instant::now();
        let mut running = JoinSet::new();
        let mut cases = only_case.map_or(0..max_cases, |case| case..case + 1);
        loop {
            while running.len() < CONCURRENCY && started.elapsed() < budget {
                let Some(case) = cases.next() else { break };
                running.spawn(run_case(ctx.clone(), seed, case));
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            if let Err(failure) = done.unwrap() {
                panic!("{failure}");
            }
        }
        let ran = cases.start.min(max_cases);
        eprintln!("fuzz: {ran} streams in {:?}", started.elapsed());
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a broker task panicked");
        let metrics = ctx.metrics.snapshot();
        eprintln!("fuzz: {metrics:?}");
        if only_case.is_none() && ran >= 100 {
            // The streams reach every stage: refused by size, refused as
            // malformed, and accepted all the way to the router.
            assert!(metrics.packets_too_large > 0, "no stream hit the limit");
            assert!(metrics.protocol_errors > 0, "no stream was malformed");
            assert!(metrics.messages_received > 0, "no PUBLISH got through");
            assert!(metrics.takeovers > 0, "no client id was taken over");
        }
        assert_eq!(metrics.connections_current, 0, "every connection ended");
        normal_client_is_served(&ctx).await;
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a broker task panicked");
        // Retained messages and persistent sessions legitimately hold
        // memory until the broker goes; once it has, every charge must be
        // given back (a leak in the accounting would show here).
        let metrics = Arc::clone(&ctx.metrics);
        drop(ctx);
        let deadline = std::time::Instant::now() + CASE_BOUND;
        while metrics.snapshot().memory_accounted_bytes != memory_before {
            assert!(
                std::time::Instant::now() < deadline,
                "the memory budget came back: {} != {memory_before}",
                metrics.snapshot().memory_accounted_bytes
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}
