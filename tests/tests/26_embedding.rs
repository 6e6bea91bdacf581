//! An application embedding tidemq publishes with `Broker::publish` and
//! subscribes with `Broker::subscribe`, through the router like any client:
//! MQTT clients and embedded sessions reach each other both ways, with
//! wildcards, retained messages and QoS 1, and the embedded sessions'
//! client ids cannot be taken by an MQTT client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tidemq::{EmbedError, QoS, Subscription};
use tidemq_tests::{
    connect_bytes, mqtt_options, settings, Client, ConnectOptions, RawClient, TestBroker, QUIET,
    WAIT,
};

/// The next message of an embedded subscription, within [`WAIT`].
async fn next(subscription: &mut Subscription) -> tidemq::embed::Message {
    tokio::time::timeout(WAIT, subscription.recv())
        .await
        .expect("a message in time")
        .expect("the broker is running")
}

async fn assert_nothing(subscription: &mut Subscription) {
    if let Ok(message) = tokio::time::timeout(QUIET, subscription.recv()).await {
        panic!("unexpected {message:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_publishes_reach_an_embedded_subscriber_through_a_wildcard() {
    let broker = TestBroker::start().await;
    let mut temperatures = broker
        .broker()
        .subscribe("sensors/+/temp", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(temperatures.client_id().starts_with("$embedded-"));
    let (mut sensor, _) = RawClient::connected(broker.addr, &ConnectOptions::new("sensor")).await;
    sensor
        .publish_acked("sensors/kitchen/humidity", QoS::AtMostOnce, 0, b"40", false)
        .await;
    sensor
        .publish_acked("sensors/kitchen/temp", QoS::AtMostOnce, 0, b"21.5", false)
        .await;
    sensor
        .publish_acked("sensors/hall/temp", QoS::AtLeastOnce, 7, b"19", false)
        .await;
    // The humidity did not match: the first message is the first temperature.
    let first = next(&mut temperatures).await;
    assert_eq!(
        (
            first.topic.as_str(),
            &first.payload[..],
            first.qos,
            first.retain
        ),
        ("sensors/kitchen/temp", &b"21.5"[..], QoS::AtMostOnce, false)
    );
    let second = next(&mut temperatures).await;
    assert_eq!(
        (second.topic.as_str(), &second.payload[..], second.qos),
        ("sensors/hall/temp", &b"19"[..], QoS::AtLeastOnce)
    );
    assert_nothing(&mut temperatures).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_publishes_reach_mqtt_subscribers_at_their_qos() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connected(broker.addr, &ConnectOptions::new("raw"))
        .await
        .0;
    raw.subscribe_granted(1, &[("game/#", QoS::AtLeastOnce)])
        .await;
    let mut player = Client::connect(mqtt_options(&broker, "player")).await;
    player
        .subscribe("game/state", rumqttc::QoS::AtMostOnce)
        .await;

    let embedded = broker.broker();
    embedded
        .publish("game/state", "tick 1", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    embedded
        .publish("game/chat", "hello", QoS::AtMostOnce, false)
        .await
        .unwrap();

    let (topic, payload, qos, id) = raw.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), &payload[..], qos),
        ("game/state", &b"tick 1"[..], QoS::AtLeastOnce)
    );
    let [hi, lo] = id.unwrap().to_be_bytes();
    raw.send(&[0x40, 0x02, hi, lo]).await;
    let (topic, payload, qos, _) = raw.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), &payload[..], qos),
        ("game/chat", &b"hello"[..], QoS::AtMostOnce)
    );
    let state = player.next_publish().await;
    assert_eq!(
        (state.topic.as_str(), &state.payload[..]),
        ("game/state", &b"tick 1"[..])
    );
    assert_eq!(
        state.qos,
        rumqttc::QoS::AtMostOnce,
        "downgraded to the subscription's"
    );
    player.assert_no_publish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_embedded_subscriber_gets_the_retained_messages_first() {
    let broker = TestBroker::start().await;
    let (mut device, _) = RawClient::connected(broker.addr, &ConnectOptions::new("device")).await;
    device
        .publish_acked("status/lamp", QoS::AtLeastOnce, 1, b"on", true)
        .await;
    broker
        .broker()
        .publish("status/server", "up", QoS::AtMostOnce, true)
        .await
        .unwrap();
    broker
        .broker()
        .publish("other/x", "no", QoS::AtMostOnce, true)
        .await
        .unwrap();

    let mut status = broker
        .broker()
        .subscribe("status/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut retained = [next(&mut status).await, next(&mut status).await];
    retained.sort_by(|a, b| a.topic.cmp(&b.topic));
    let seen: Vec<_> = retained
        .iter()
        .map(|m| (m.topic.as_str(), &m.payload[..], m.qos, m.retain))
        .collect();
    assert_eq!(
        seen,
        [
            ("status/lamp", &b"on"[..], QoS::AtLeastOnce, true),
            ("status/server", &b"up"[..], QoS::AtMostOnce, true),
        ]
    );
    // Published after the subscription: not flagged retained [MQTT-3.3.1-9].
    device
        .publish_acked("status/lamp", QoS::AtMostOnce, 0, b"off", true)
        .await;
    let live = next(&mut status).await;
    assert_eq!((live.topic.as_str(), live.retain), ("status/lamp", false));
    assert_nothing(&mut status).await;
}

/// More retained messages than one batch: the rest follow as `recv`
/// drains the mailbox, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_beyond_one_batch_all_arrive_once() {
    let mut config = settings();
    config.limits.max_queued_messages = 100;
    let broker = TestBroker::start_with(config).await;
    let embedded = broker.broker();
    for n in 0..700 {
        let topic = format!("many/{n}");
        embedded
            .publish(&topic, "v", QoS::AtMostOnce, true)
            .await
            .unwrap();
    }
    let mut many = embedded.subscribe("many/+", QoS::AtMostOnce).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..700 {
        let message = next(&mut many).await;
        assert!(message.retain);
        assert!(
            seen.insert(message.topic.clone()),
            "twice: {}",
            message.topic
        );
    }
    assert_nothing(&mut many).await;
}

/// A QoS 1 embedded publish returns when a PUBACK would go out: once every
/// subscriber's session took the message. A subscriber over its queue limit
/// holds it back until it takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_embedded_publish_returns_once_every_subscriber_took_it() {
    let mut config = settings();
    config.limits.max_queued_messages = 1;
    let broker = TestBroker::start_with(config).await;
    let mut slow = broker
        .broker()
        .subscribe("jobs", QoS::AtLeastOnce)
        .await
        .unwrap();
    let publisher = broker.broker();
    publisher
        .publish("jobs", "1", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    // The mailbox is full now: the second one is held with its receipt.
    let second = publisher.publish("jobs", "2", QoS::AtLeastOnce, false);
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(QUIET, &mut second).await.is_err(),
        "returned before the subscriber took the message"
    );
    assert_eq!(&next(&mut slow).await.payload[..], b"1");
    assert!(
        tokio::time::timeout(QUIET, &mut second).await.is_err(),
        "returned before the subscriber took this very message"
    );
    let (taken, published) = tokio::join!(next(&mut slow), second);
    assert_eq!(&taken.payload[..], b"2");
    published.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_mqtt_publish_to_an_embedded_subscriber_is_acknowledged_and_delivered_at_qos1() {
    let broker = TestBroker::start().await;
    let mut orders = broker
        .broker()
        .subscribe("orders/#", QoS::ExactlyOnce)
        .await
        .unwrap();
    orders
        .subscribe("refunds/+", QoS::AtMostOnce)
        .await
        .unwrap();
    let (mut shop, _) = RawClient::connected(broker.addr, &ConnectOptions::new("shop")).await;
    shop.publish_acked("orders/42", QoS::AtLeastOnce, 3, b"book", false)
        .await;
    shop.publish_acked("refunds/7", QoS::ExactlyOnce, 4, b"pen", false)
        .await;
    let order = next(&mut orders).await;
    assert_eq!(
        (order.topic.as_str(), order.qos),
        ("orders/42", QoS::AtLeastOnce)
    );
    let refund = next(&mut orders).await;
    assert_eq!(
        (refund.topic.as_str(), refund.qos),
        ("refunds/7", QoS::AtMostOnce)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topics_and_filters_are_errors() {
    let broker = TestBroker::start().await;
    let embedded = broker.broker();
    let wildcard = embedded.publish("a/+", "x", QoS::AtMostOnce, false).await;
    assert!(
        matches!(wildcard, Err(EmbedError::Topic(_))),
        "{wildcard:?}"
    );
    let bad = embedded.subscribe("a/#/b", QoS::AtMostOnce).await;
    assert!(matches!(bad, Err(EmbedError::Topic(_))), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_clients_cannot_take_an_embedded_client_id() {
    let broker = TestBroker::start().await;
    let embedded = broker
        .broker()
        .subscribe("t", QoS::AtMostOnce)
        .await
        .unwrap();
    let mut thief = RawClient::connect(broker.addr).await;
    thief
        .send(&connect_bytes(&ConnectOptions::new(embedded.client_id())))
        .await;
    let connack = thief.recv().await.expect("CONNACK");
    assert_eq!(
        connack.wire_bytes(),
        [0x20, 0x02, 0x00, 0x02],
        "identifier rejected"
    );
    assert!(thief.closed_by_broker().await);
    let mut lookalike = RawClient::connect(broker.addr).await;
    lookalike
        .send(&connect_bytes(&ConnectOptions::new("$embedded-999999")))
        .await;
    let connack = lookalike.recv().await.expect("CONNACK");
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x02]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_or_dropping_a_subscription_ends_its_session() {
    let broker = TestBroker::start().await;
    let closed = broker
        .broker()
        .subscribe("a/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let dropped = broker
        .broker()
        .subscribe("b/#", QoS::AtMostOnce)
        .await
        .unwrap();
    let m = broker.metrics();
    assert_eq!((m.sessions_current, m.subscriptions_current), (2, 2));
    closed.close().await;
    let m = broker.metrics();
    assert_eq!((m.sessions_current, m.subscriptions_current), (1, 1));
    drop(dropped);
    broker
        .wait_metrics("the dropped session gone", |m| {
            (m.sessions_current, m.subscriptions_current) == (0, 0)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_ends_when_the_broker_shuts_down() {
    let broker = TestBroker::start().await;
    let mut subscription = broker
        .broker()
        .subscribe("t", QoS::AtMostOnce)
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { subscription.recv().await });
    broker.stop().await;
    let ended = tokio::time::timeout(WAIT, waiting).await.expect("in time");
    assert_eq!(ended.unwrap(), None);
}

/// `into_stream`: the same messages through `StreamExt::next`, in order,
/// and the stream ends when the broker shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_as_a_stream_yields_each_message_then_ends() {
    use futures_util::StreamExt;
    let broker = TestBroker::start().await;
    let subscription = broker
        .broker()
        .subscribe("feed/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut stream = Box::pin(subscription.into_stream());
    let (mut source, _) = RawClient::connected(broker.addr, &ConnectOptions::new("source")).await;
    for (n, payload) in [&b"one"[..], b"two"].iter().enumerate() {
        source
            .publish_acked("feed/x", QoS::AtLeastOnce, n as u16 + 1, payload, false)
            .await;
    }
    for expected in [&b"one"[..], b"two"] {
        let message = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a message in time")
            .expect("the stream goes on");
        assert_eq!(
            (message.topic.as_str(), &message.payload[..], message.qos),
            ("feed/x", expected, QoS::AtLeastOnce)
        );
    }
    let waiting = tokio::spawn(async move { stream.next().await });
    broker.stop().await;
    let ended = tokio::time::timeout(WAIT, waiting).await.expect("in time");
    assert!(ended.unwrap().is_none(), "the stream ends at shutdown");
}
