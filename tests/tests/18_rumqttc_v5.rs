//! Proves that a maintained third-party MQTT 5 client library, `rumqttc`'s
//! v5 module, works with the broker: its CONNACK carries the broker's
//! capabilities, properties and subscription identifiers reach its
//! subscribers, and a QoS 2 message waits in a session with a Session
//! Expiry Interval for the client's return.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, Packet, Publish, PublishProperties, SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tidemq_tests::{TestBroker, WAIT};
use tokio::sync::mpsc;

/// A rumqttc v5 client whose event loop runs in the background, forwarding
/// every incoming packet.
struct V5 {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl V5 {
    async fn connect(broker: &TestBroker, client_id: &str, expiry: Option<u32>) -> (V5, ConnAck) {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port());
        options.set_keep_alive(Duration::from_secs(30));
        if let Some(expiry) = expiry {
            options.set_clean_start(false);
            let mut properties = ConnectProperties::new();
            properties.session_expiry_interval = Some(expiry);
            options.set_connect_properties(properties);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, incoming) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(packet) = event {
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
            }
        });
        let mut v5 = V5 {
            client,
            incoming,
            task,
        };
        let connack = match v5.next().await {
            Packet::ConnAck(connack) => connack,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        (v5, connack)
    }

    async fn next(&mut self) -> Packet {
        tokio::time::timeout(WAIT, self.incoming.recv())
            .await
            .expect("a packet in time")
            .expect("event loop alive")
    }

    async fn next_publish(&mut self) -> Publish {
        loop {
            match self.next().await {
                Packet::Publish(publish) => return publish,
                Packet::PingResp(_) => continue,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    async fn suback(&mut self) {
        match self.next().await {
            Packet::SubAck(_) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Sends DISCONNECT and waits for the event loop to stop.
    async fn leave(self) {
        self.client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

#[tokio::test]
async fn mqtt_3_2_2_rumqttc_v5_sees_the_brokers_capabilities() {
    let broker = TestBroker::start().await;
    let (_client, connack) = V5::connect(&broker, "caps", None).await;
    let properties = connack.properties.expect("CONNACK properties");
    assert_eq!(properties.receive_max, Some(1024));
    assert_eq!(properties.topic_alias_max, Some(64));
    assert_eq!(properties.shared_subscription_available, Some(1));
    assert_eq!(properties.subscription_identifiers_available, Some(1));
}

#[tokio::test]
async fn mqtt_3_3_4_3_rumqttc_v5_gets_properties_and_its_subscription_identifier() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = V5::connect(&broker, "r-sub", None).await;
    let id = SubscribeProperties {
        id: Some(42),
        user_properties: Vec::new(),
    };
    sub.client
        .subscribe_with_properties("r/#", QoS::AtLeastOnce, id)
        .await
        .unwrap();
    sub.suback().await;
    let (publisher, _) = V5::connect(&broker, "r-pub", None).await;
    let properties = PublishProperties {
        response_topic: Some("r/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
        user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
        content_type: Some("text/plain".into()),
        ..PublishProperties::default()
    };
    publisher
        .client
        .publish_with_properties("r/t", QoS::AtLeastOnce, false, "hi", properties)
        .await
        .unwrap();
    let got = sub.next_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"r/t"[..], &b"hi"[..])
    );
    let got = got.properties.expect("properties");
    assert_eq!(got.response_topic.as_deref(), Some("r/reply"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"c-1"[..]));
    assert_eq!(
        got.user_properties,
        [
            ("k".to_owned(), "1".to_owned()),
            ("k".to_owned(), "2".to_owned())
        ]
    );
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.subscription_identifiers, [42]);
}

#[tokio::test]
async fn mqtt_3_1_2_23_rumqttc_v5_session_keeps_a_qos2_message_while_away() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = V5::connect(&broker, "r-away", Some(60)).await;
    sub.client
        .subscribe("away/t", QoS::ExactlyOnce)
        .await
        .unwrap();
    sub.suback().await;
    sub.leave().await;
    broker
        .wait_metrics("offline", |m| m.sessions_offline_current == 1)
        .await;
    let (publisher, _) = V5::connect(&broker, "r-away-pub", None).await;
    publisher
        .client
        .publish("away/t", QoS::ExactlyOnce, false, "kept")
        .await
        .unwrap();
    broker
        .wait_metrics("queued", |m| m.messages_received == 1)
        .await;
    let (mut back, connack) = V5::connect(&broker, "r-away", Some(60)).await;
    assert!(connack.session_present);
    let got = back.next_publish().await;
    assert_eq!(
        (got.qos, &got.payload[..]),
        (QoS::ExactlyOnce, &b"kept"[..])
    );
}
