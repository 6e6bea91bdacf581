//! Proves that the ACL file (mosquitto's syntax) decides what each client
//! may publish and receive, on every path a message takes: a PUBLISH to a
//! denied topic is refused (MQTT 5 PUBACK / PUBREC 0x87) or, for 3.1.1,
//! acknowledged and dropped, and reaches no subscriber; a SUBSCRIBE filter
//! the client may never read is refused in its place in the SUBACK (0x80 /
//! 0x87); a filter allowed in part delivers only the allowed topics; wills,
//! retained messages and `$SYS` follow the same rules; `%c` and `%u`
//! patterns substitute the client's own id and user name; an anonymous
//! client gets the anonymous section only; and what embedding code
//! publishes reaches only the subscribers that may read it. Each path is shown denied and
//! allowed, and every "nothing arrives" follows an allowed message that did.
//!
//! There is no password file: the user name in CONNECT is taken as given,
//! so the tests are about the ACL alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use tidemq::Settings;
use tidemq_protocol::{
    encode_connect, Ack, Connect, LastWill, Outgoing, Packet, PacketId, ProtocolVersion, Publish,
    QoS, ReasonCode, Subscribe, TopicFilter, TopicName,
};
use tidemq_tests::scratch::ScratchDir;
use tidemq_tests::v5::{self, V5Client};
use tidemq_tests::{settings, subscribe_bytes, RawClient, TestBroker, QUIET};

/// The rules every test runs under.
const ACL: &str = "\
# Clients without a user name: the public area only.
topic read public/#
topic write public/anon

user alice
topic read alice/r
topic write alice/w
topic readwrite alice/rw/#
topic deny alice/rw/secret
topic read a/ok
topic read $SYS/#

# bob watches and feeds everything but $ topics.
user bob
topic readwrite #

pattern write devices/%c/#
pattern read users/%u/#
";

/// 3.1.1 SUBACK failure [MQTT-3.9.3-2].
const SUBACK_FAILURE: u8 = 0x80;

/// A directory of this test's own with the ACL file, removed when dropped.
struct AclDir(ScratchDir);

impl AclDir {
    fn new(name: &str) -> AclDir {
        let dir = ScratchDir::new("23", name);
        std::fs::write(dir.path("acl"), ACL).unwrap();
        AclDir(dir)
    }

    fn settings(&self) -> Settings {
        let mut s = settings();
        s.auth.acl_file = self.0.path("acl");
        s
    }
}

async fn acl_broker(name: &str) -> (TestBroker, AclDir) {
    let dir = AclDir::new(name);
    let broker = TestBroker::start_with(dir.settings()).await;
    (broker, dir)
}

fn connect(version: ProtocolVersion, client_id: &str, user: Option<&str>) -> Connect {
    let mut connect = v5::connect(client_id);
    connect.version = version;
    connect.username = user.map(str::to_owned);
    connect
}

/// An MQTT 5 client logged in as `user` (or anonymous).
async fn v5_as(broker: &TestBroker, client_id: &str, user: Option<&str>) -> V5Client {
    let connect = connect(ProtocolVersion::V5, client_id, user);
    V5Client::connected(broker.addr, &connect).await.0
}

/// Sends a 3.1.1 CONNECT; the client and the CONNACK return code.
async fn v311_connect(broker: &TestBroker, connect: &Connect) -> (RawClient, u8) {
    let mut wire = BytesMut::new();
    encode_connect(connect, &mut wire);
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&wire).await;
    let connack = client.recv().await.expect("CONNACK");
    assert_eq!(connack.packet_type, 2, "expected CONNACK, got {connack:?}");
    (client, connack.body[1])
}

/// A 3.1.1 client logged in as `user` (or anonymous).
async fn v311_as(broker: &TestBroker, client_id: &str, user: Option<&str>) -> RawClient {
    let connect = connect(ProtocolVersion::V311, client_id, user);
    let (client, code) = v311_connect(broker, &connect).await;
    assert_eq!(code, 0, "CONNACK for {client_id}");
    client
}

/// bob, subscribed to everything he may read (`#`) at QoS 1.
async fn watcher(broker: &TestBroker) -> V5Client {
    let mut bob = v5_as(broker, "watcher", Some("bob")).await;
    bob.subscribe_qos("#", QoS::AtLeastOnce).await;
    bob
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn subscribe(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    let filters = filters
        .iter()
        .map(|(filter, qos)| (TopicFilter::new(filter).unwrap(), *qos))
        .collect();
    Packet::Subscribe(Subscribe::qos(pid(packet_id), filters))
}

/// A QoS 1 PUBLISH, retained when asked.
fn publish1(topic: &str, packet_id: u16, payload: &[u8], retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: TopicName::new(topic).unwrap(),
        packet_id: Some(pid(packet_id)),
        payload: Bytes::copy_from_slice(payload),
        properties: None,
    })
}

/// The PUBACK's reason for a QoS 1 PUBLISH.
async fn puback_reason(client: &mut V5Client, topic: &str, packet_id: u16) -> ReasonCode {
    let ack = client
        .publish_qos1(publish1(topic, packet_id, topic.as_bytes(), false))
        .await;
    assert_eq!(ack.packet_id, pid(packet_id));
    ack.reason
}

/// The next PUBLISH's topic and payload (acknowledged).
async fn next_topic(client: &mut V5Client) -> (String, Vec<u8>) {
    let publish = client.next_publish().await;
    (publish.topic.as_str().to_owned(), publish.payload.to_vec())
}

async fn suback(client: &mut RawClient, packet_id: u16, filters: &[(&str, QoS)]) -> Vec<u8> {
    client.send(&subscribe_bytes(packet_id, filters)).await;
    let suback = client.recv().await.expect("SUBACK");
    assert_eq!(suback.packet_type, 9, "expected SUBACK, got {suback:?}");
    assert_eq!(suback.body[..2], packet_id.to_be_bytes());
    suback.body[2..].to_vec()
}

// ------------------------------------------------------------- PUBLISH

#[tokio::test]
async fn mqtt5_a_qos1_publish_to_a_denied_topic_gets_puback_0x87_and_reaches_nobody() {
    let (broker, _dir) = acl_broker("pub-qos1").await;
    let mut bob = watcher(&broker).await;
    let mut alice = v5_as(&broker, "alice-pub", Some("alice")).await;
    // Read-only for alice; readwrite but denied by a `deny` line; no rule.
    for (n, topic) in ["alice/r", "alice/rw/secret", "nobody/x"]
        .iter()
        .enumerate()
    {
        let reason = puback_reason(&mut alice, topic, n as u16 + 1).await;
        assert_eq!(reason, ReasonCode::NOT_AUTHORIZED, "{topic}");
    }
    // Allowed: write, and readwrite below the denied topic.
    assert_eq!(
        puback_reason(&mut alice, "alice/w", 10).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        puback_reason(&mut alice, "alice/rw/x", 11).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(next_topic(&mut bob).await.0, "alice/w");
    assert_eq!(next_topic(&mut bob).await.0, "alice/rw/x");
    bob.assert_silent(QUIET).await;
    assert_eq!(broker.metrics().acl_denied_publish, 3);
}

#[tokio::test]
async fn mqtt5_a_qos2_publish_to_a_denied_topic_gets_pubrec_0x87_and_reaches_nobody() {
    let (broker, _dir) = acl_broker("pub-qos2").await;
    let mut bob = watcher(&broker).await;
    let mut alice = v5_as(&broker, "alice-pub2", Some("alice")).await;
    let exactly_once =
        |topic: &str, id: u16| v5::publish(topic, QoS::ExactlyOnce, id, topic.as_bytes(), None);
    alice.send(&exactly_once("alice/r", 5)).await;
    match alice.recv().await {
        Some(Outgoing::PubRec(ack)) => {
            assert_eq!(
                (ack.packet_id, ack.reason),
                (pid(5), ReasonCode::NOT_AUTHORIZED)
            );
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // A PUBREC of 0x80 or above ends the exchange (MQTT 5 section 4.3.3):
    // no PUBREL is owed, and the packet id is free again. Allowed, with it:
    alice.send(&exactly_once("alice/w", 5)).await;
    match alice.recv().await {
        Some(Outgoing::PubRec(ack)) => {
            assert_eq!((ack.packet_id, ack.reason), (pid(5), ReasonCode::SUCCESS));
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    alice.send(&Packet::PubRel(Ack::new(pid(5)))).await;
    assert!(matches!(alice.recv().await, Some(Outgoing::PubComp(_))));
    assert_eq!(next_topic(&mut bob).await.0, "alice/w");
    bob.assert_silent(QUIET).await;
    assert_eq!(broker.metrics().acl_denied_publish, 1);
}

#[tokio::test]
async fn mqtt_3_3_5_2_a_v311_qos1_publish_to_a_denied_topic_is_acknowledged_and_dropped() {
    let (broker, _dir) = acl_broker("pub-311").await;
    let mut bob = watcher(&broker).await;
    let mut alice = v311_as(&broker, "alice-311", Some("alice")).await;
    // 3.1.1 cannot say "not authorized": a positive PUBACK [MQTT-3.3.5-2].
    alice
        .publish_acked("alice/r", QoS::AtLeastOnce, 1, b"denied", false)
        .await;
    alice
        .publish_acked("alice/r", QoS::ExactlyOnce, 2, b"denied", false)
        .await;
    alice
        .publish_acked("alice/w", QoS::AtLeastOnce, 3, b"allowed", false)
        .await;
    assert_eq!(
        next_topic(&mut bob).await,
        ("alice/w".into(), b"allowed".to_vec())
    );
    bob.assert_silent(QUIET).await;
    assert_eq!(broker.metrics().acl_denied_publish, 2);
}

// ----------------------------------------------------------- SUBSCRIBE

/// Filters in the order of the SUBSCRIBE: write-only, read, denied by a
/// `deny` line, readwrite, no rule at all.
const MIXED: [(&str, QoS); 5] = [
    ("alice/w", QoS::AtLeastOnce),
    ("alice/r", QoS::AtLeastOnce),
    ("alice/rw/secret", QoS::AtMostOnce),
    ("alice/rw/#", QoS::ExactlyOnce),
    ("elsewhere/#", QoS::AtMostOnce),
];

#[tokio::test]
async fn mqtt_3_9_3_1_v311_suback_0x80_for_each_filter_never_readable_in_order() {
    let (broker, _dir) = acl_broker("sub-311").await;
    let mut alice = v311_as(&broker, "alice-sub", Some("alice")).await;
    let codes = suback(&mut alice, 7, &MIXED).await;
    assert_eq!(
        codes,
        [SUBACK_FAILURE, 0x01, SUBACK_FAILURE, 0x02, SUBACK_FAILURE]
    );
    assert_eq!(broker.metrics().acl_denied_subscribe, 3);
    // The granted ones are in place.
    let mut bob = v5_as(&broker, "feeder", Some("bob")).await;
    assert_eq!(
        puback_reason(&mut bob, "alice/w", 1).await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        puback_reason(&mut bob, "alice/rw/x", 2).await,
        ReasonCode::SUCCESS
    );
    let (topic, ..) = alice.next_publish().await.publish();
    assert_eq!(topic, "alice/rw/x");
}

#[tokio::test]
async fn mqtt_3_8_4_6_mqtt5_suback_0x87_for_each_filter_never_readable_in_order() {
    let (broker, _dir) = acl_broker("sub-5").await;
    let mut alice = v5_as(&broker, "alice-sub5", Some("alice")).await;
    let codes = alice.subscribe(subscribe(7, &MIXED)).await;
    let denied = ReasonCode::NOT_AUTHORIZED;
    assert_eq!(
        codes,
        [
            denied,
            ReasonCode::GRANTED_QOS_1,
            denied,
            ReasonCode::GRANTED_QOS_2,
            denied
        ]
    );
    assert_eq!(broker.metrics().acl_denied_subscribe, 3);
}

#[tokio::test]
async fn a_filter_readable_in_part_delivers_only_the_readable_topics() {
    let (broker, _dir) = acl_broker("partial").await;
    let mut alice = v5_as(&broker, "alice-part", Some("alice")).await;
    // Only a/ok is readable under a/#: granted, and each delivery checked.
    alice.subscribe_qos("a/#", QoS::AtLeastOnce).await;
    let mut bob = v5_as(&broker, "feeder", Some("bob")).await;
    for (n, topic) in ["a/secret", "a/ok/deeper", "a/ok"].iter().enumerate() {
        puback_reason(&mut bob, topic, n as u16 + 1).await;
    }
    assert_eq!(next_topic(&mut alice).await.0, "a/ok");
    alice.assert_silent(QUIET).await;
    assert_eq!(broker.metrics().acl_denied_delivery, 2);
}

/// `Broker::publish` from embedding code is not checked against the ACL
/// (the application is trusted), but each delivery still is: alice's
/// `a/#` gets `a/ok` and not `a/secret`.
#[tokio::test]
async fn an_embedded_publish_reaches_only_subscribers_that_may_read_it() {
    let (broker, _dir) = acl_broker("embedded").await;
    let mut alice = v5_as(&broker, "alice-embedded", Some("alice")).await;
    alice.subscribe_qos("a/#", QoS::AtLeastOnce).await;
    let embedded = broker.broker();
    for topic in ["a/secret", "a/ok"] {
        embedded
            .publish(topic, "x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    assert_eq!(next_topic(&mut alice).await.0, "a/ok");
    alice.assert_silent(QUIET).await;
    assert_eq!(broker.metrics().acl_denied_delivery, 1);
}

// --------------------------------------------------------------- wills

fn will(topic: &str) -> LastWill {
    v5::will(topic, b"gone", 0)
}

#[tokio::test]
async fn mqtt_3_1_4_2_a_will_to_a_denied_topic_refuses_the_connect_0x05_and_0x87() {
    let (broker, _dir) = acl_broker("will-denied").await;
    let mut connect = connect(ProtocolVersion::V311, "alice-will", Some("alice"));
    connect.will = Some(will("alice/r"));
    let (mut refused, code) = v311_connect(&broker, &connect).await;
    assert_eq!(code, 0x05);
    assert!(refused.closed_by_broker().await);
    connect.version = ProtocolVersion::V5;
    let (mut refused, connack) = V5Client::connect(broker.addr, &connect).await;
    assert_eq!(connack.reason, ReasonCode::NOT_AUTHORIZED);
    assert!(refused.recv().await.is_none(), "closed after the refusal");
    assert_eq!(broker.metrics().acl_denied_publish, 2);
}

#[tokio::test]
async fn a_will_to_an_allowed_topic_is_accepted_and_published() {
    let (broker, _dir) = acl_broker("will-allowed").await;
    let mut bob = watcher(&broker).await;
    let mut connect = connect(ProtocolVersion::V311, "alice-will", Some("alice"));
    connect.will = Some(will("alice/w"));
    let (alice, code) = v311_connect(&broker, &connect).await;
    assert_eq!(code, 0);
    drop(alice);
    assert_eq!(
        next_topic(&mut bob).await,
        ("alice/w".into(), b"gone".to_vec())
    );
}

// ------------------------------------------------------------ retained

#[tokio::test]
async fn a_retained_message_the_subscriber_may_not_read_is_not_delivered_on_subscribe() {
    let (broker, _dir) = acl_broker("retained").await;
    let mut bob = v5_as(&broker, "feeder", Some("bob")).await;
    // Not readable by alice (no rule, write-only), then readable.
    for (n, topic) in ["alice/hidden", "alice/w", "alice/r"].iter().enumerate() {
        let ack = bob
            .publish_qos1(publish1(topic, n as u16 + 1, topic.as_bytes(), true))
            .await;
        assert_eq!(ack.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS, "{topic}");
    }
    let mut alice = v5_as(&broker, "alice-ret", Some("alice")).await;
    alice.subscribe_qos("alice/#", QoS::AtLeastOnce).await;
    let publish = alice.next_publish().await;
    assert_eq!(publish.topic.as_str(), "alice/r");
    assert!(
        publish.retain,
        "retained, sent for the new subscription [MQTT-3.3.1-8]"
    );
    alice.assert_silent(QUIET).await;
    assert_eq!(broker.metrics().acl_denied_delivery, 2);
}

// ---------------------------------------------------------------- $SYS

#[tokio::test]
async fn mqtt_4_7_2_1_sys_topics_need_an_explicit_rule() {
    let dir = AclDir::new("sys");
    let mut s = dir.settings();
    s.sys.interval_secs = 1;
    let broker = TestBroker::start_with(s).await;
    // carol has no section and no pattern reaching $SYS; bob's `#` rule does
    // not reach `$` topics, as a `#` filter would not [MQTT-4.7.2-1].
    for user in ["carol", "bob"] {
        let mut client = v5_as(&broker, user, Some(user)).await;
        let codes = client
            .subscribe(subscribe(1, &[("$SYS/#", QoS::AtMostOnce)]))
            .await;
        assert_eq!(codes, [ReasonCode::NOT_AUTHORIZED], "{user}");
    }
    let mut anon = v311_as(&broker, "anon-sys", None).await;
    let codes = suback(&mut anon, 1, &[("$SYS/#", QoS::AtMostOnce)]).await;
    assert_eq!(codes, [SUBACK_FAILURE]);
    // alice has `topic read $SYS/#`.
    let mut alice = v5_as(&broker, "alice-sys", Some("alice")).await;
    alice.subscribe_qos("$SYS/#", QoS::AtMostOnce).await;
    let (topic, _) = next_topic(&mut alice).await;
    assert!(topic.starts_with("$SYS/broker/"), "{topic}");
}

#[tokio::test]
async fn a_hash_subscription_delivers_no_sys_topic_even_to_a_client_that_may_read_them() {
    let dir = AclDir::new("sys-hash");
    let mut s = dir.settings();
    s.sys.interval_secs = 1;
    let broker = TestBroker::start_with(s).await;
    let mut alice = v5_as(&broker, "alice-hash", Some("alice")).await;
    alice.subscribe_qos("#", QoS::AtMostOnce).await;
    // A second subscription of alice's, to `$SYS/#`: skip the retained
    // copies it gets at once, until a $SYS message routed after both
    // subscriptions arrives (retain 0 [MQTT-3.3.1-9]).
    let mut sys = v5_as(&broker, "alice-sys", Some("alice")).await;
    sys.subscribe_qos("$SYS/#", QoS::AtMostOnce).await;
    let mut skipped = 0;
    while sys.next_publish().await.retain {
        skipped += 1;
        assert!(skipped < 10_000, "no fresh $SYS message");
    }
    // Then a message alice may read: `#` carried it and nothing before it.
    let mut bob = v5_as(&broker, "feeder", Some("bob")).await;
    puback_reason(&mut bob, "alice/r", 1).await;
    assert_eq!(next_topic(&mut alice).await.0, "alice/r");
    alice.assert_silent(QUIET).await;
}

// ------------------------------------------------------------ patterns

#[tokio::test]
async fn a_c_pattern_lets_a_client_write_below_its_own_id_only() {
    let (broker, _dir) = acl_broker("pattern-c").await;
    let mut bob = watcher(&broker).await;
    let mut dev1 = v5_as(&broker, "dev1", None).await;
    assert_eq!(
        puback_reason(&mut dev1, "devices/dev2/x", 1).await,
        ReasonCode::NOT_AUTHORIZED
    );
    // No prefix match: dev1 is not dev10.
    assert_eq!(
        puback_reason(&mut dev1, "devices/dev10/x", 2).await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        puback_reason(&mut dev1, "devices/dev1/temp", 3).await,
        ReasonCode::SUCCESS
    );
    // The same topic for another client id: denied; its own: allowed.
    let mut dev2 = v5_as(&broker, "dev2", Some("alice")).await;
    assert_eq!(
        puback_reason(&mut dev2, "devices/dev1/temp", 1).await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        puback_reason(&mut dev2, "devices/dev2/x", 2).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(next_topic(&mut bob).await.0, "devices/dev1/temp");
    assert_eq!(next_topic(&mut bob).await.0, "devices/dev2/x");
    bob.assert_silent(QUIET).await;
    // A pattern grants write only: dev1 may not read its own topics.
    let codes = dev1
        .subscribe(subscribe(1, &[("devices/dev1/#", QoS::AtMostOnce)]))
        .await;
    assert_eq!(codes, [ReasonCode::NOT_AUTHORIZED]);
}

#[tokio::test]
async fn a_u_pattern_lets_a_user_read_below_its_own_name_only() {
    let (broker, _dir) = acl_broker("pattern-u").await;
    let mut alice = v5_as(&broker, "alice-u", Some("alice")).await;
    let codes = alice
        .subscribe(subscribe(
            1,
            &[
                ("users/bob/#", QoS::AtLeastOnce),
                ("users/alice/#", QoS::AtLeastOnce),
            ],
        ))
        .await;
    assert_eq!(
        codes,
        [ReasonCode::NOT_AUTHORIZED, ReasonCode::GRANTED_QOS_1]
    );
    // A filter over both users: granted, and only alice's part delivered.
    alice.subscribe_qos("users/+/inbox", QoS::AtLeastOnce).await;
    let mut bob = v5_as(&broker, "feeder", Some("bob")).await;
    puback_reason(&mut bob, "users/bob/inbox", 1).await;
    puback_reason(&mut bob, "users/alice/inbox", 2).await;
    assert_eq!(next_topic(&mut alice).await.0, "users/alice/inbox");
    alice.assert_silent(QUIET).await;
    assert_eq!(broker.metrics().acl_denied_delivery, 1);
}

// ------------------------------------------------------------ anonymous

#[tokio::test]
async fn an_anonymous_client_follows_the_anonymous_section_only() {
    let (broker, _dir) = acl_broker("anonymous").await;
    let mut bob = watcher(&broker).await;
    let mut anon = v311_as(&broker, "anon", None).await;
    // Its own section: public/#; not alice's rules; `%u` matches nothing
    // without a user name.
    let codes = suback(
        &mut anon,
        1,
        &[
            ("public/#", QoS::AtLeastOnce),
            ("alice/r", QoS::AtLeastOnce),
            ("users/alice/#", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(codes, [0x01, SUBACK_FAILURE, SUBACK_FAILURE]);
    // Writes: alice's topic is dropped (acknowledged: 3.1.1), its own goes.
    anon.publish_acked("alice/w", QoS::AtLeastOnce, 2, b"no", false)
        .await;
    anon.publish_acked("public/anon", QoS::AtLeastOnce, 3, b"yes", false)
        .await;
    assert_eq!(
        next_topic(&mut bob).await,
        ("public/anon".into(), b"yes".to_vec())
    );
    bob.assert_silent(QUIET).await;
    let (topic, payload, ..) = anon.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("public/anon", &b"yes"[..])
    );
    assert_eq!(broker.metrics().acl_denied_publish, 1);

    // And the anonymous section is not a user's.
    let mut alice = v5_as(&broker, "alice-anon", Some("alice")).await;
    let codes = alice
        .subscribe(subscribe(1, &[("public/#", QoS::AtMostOnce)]))
        .await;
    assert_eq!(codes, [ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(
        puback_reason(&mut alice, "public/anon", 1).await,
        ReasonCode::NOT_AUTHORIZED
    );
}
