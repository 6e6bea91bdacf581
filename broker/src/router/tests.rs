//! `Router::handle` driven directly: matching, QoS, retained, drops.

use bytes::Bytes;
use tidemq_protocol::TopicName;

use super::*;
use crate::types::ConnId;

fn slot(id: &str, limit: usize) -> Arc<SessionSlot> {
    let slot = Arc::new(SessionSlot::new(ClientId::new(id), ConnId(0), limit));
    slot.set_online(true);
    slot
}

fn message(topic: &str, qos: QoS, retain: bool, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(payload),
        qos,
        retain,
    })
}

fn subscribe(
    router: &mut Router,
    slot: &Arc<SessionSlot>,
    filters: &[(&str, QoS)],
) -> Vec<SubAckCode> {
    let (done, mut answer) = oneshot::channel();
    let filters = filters
        .iter()
        .map(|(f, q)| (TopicFilter::new(f).unwrap(), *q))
        .collect();
    router.handle(RouterMsg::Subscribe {
        slot: slot.clone(),
        filters,
        done,
    });
    answer.try_recv().unwrap()
}

fn drain(slot: &SessionSlot) -> Vec<Delivery> {
    std::iter::from_fn(|| slot.mailbox.pop_if(|_| true)).collect()
}

fn publish(message: Arc<Message>) -> RouterMsg {
    RouterMsg::Publish {
        message,
        receipt: None,
    }
}

fn router() -> Router {
    Router::new(Arc::new(Metrics::default()))
}

#[test]
fn wildcard_table_delivers_to_matching_sessions_only() {
    let mut router = router();
    let table = [
        ("a/b", true),
        ("a/+", true),
        ("a/#", true),
        ("#", true),
        ("+/+", true),
        ("a", false),
        ("a/b/c", false),
        ("+", false),
        ("b/#", false),
    ];
    let slots: Vec<_> = table.iter().map(|(f, _)| slot(f, 10)).collect();
    for (slot, (filter, _)) in slots.iter().zip(&table) {
        subscribe(&mut router, slot, &[(filter, QoS::AtMostOnce)]);
    }
    router.handle(publish(message("a/b", QoS::AtMostOnce, false, b"x")));
    for (slot, (filter, expected)) in slots.iter().zip(&table) {
        assert_eq!(drain(slot).len(), usize::from(*expected), "filter {filter}");
    }
}

#[test]
fn overlapping_subscriptions_give_one_copy_at_the_highest_qos() {
    let mut router = router();
    let s = slot("c", 10);
    subscribe(
        &mut router,
        &s,
        &[
            ("a/+", QoS::AtMostOnce),
            ("a/#", QoS::ExactlyOnce),
            ("a/b", QoS::AtLeastOnce),
        ],
    );
    router.handle(publish(message("a/b", QoS::ExactlyOnce, false, b"x")));
    let got = drain(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
}

#[test]
fn qos_is_downgraded_to_the_subscription() {
    let mut router = router();
    let s = slot("c", 10);
    subscribe(&mut router, &s, &[("t", QoS::AtLeastOnce)]);
    router.handle(publish(message("t", QoS::ExactlyOnce, false, b"x")));
    router.handle(publish(message("t", QoS::AtMostOnce, false, b"y")));
    let qos: Vec<_> = drain(&s).iter().map(|d| d.qos).collect();
    assert_eq!(qos, vec![QoS::AtLeastOnce, QoS::AtMostOnce]);
}

#[test]
fn mqtt_3_3_1_retained_set_replace_clear() {
    let mut router = router();
    router.handle(publish(message("r", QoS::AtLeastOnce, true, b"one")));
    router.handle(publish(message("r", QoS::AtLeastOnce, true, b"two")));
    let s = slot("a", 10);
    subscribe(&mut router, &s, &[("r", QoS::AtLeastOnce)]);
    let got = drain(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.payload.as_ref(), b"two");
    assert!(
        got[0].retain,
        "[MQTT-3.3.1-8] sent because of a new subscription"
    );

    router.handle(publish(message("r", QoS::AtLeastOnce, true, b"three")));
    assert!(
        !drain(&s)[0].retain,
        "[MQTT-3.3.1-9] established subscription gets RETAIN 0"
    );

    router.handle(publish(message("r", QoS::AtMostOnce, true, b"")));
    assert_eq!(
        router.retained_count(),
        0,
        "[MQTT-3.3.1-10] empty payload clears"
    );
    let late = slot("b", 10);
    subscribe(&mut router, &late, &[("#", QoS::AtLeastOnce)]);
    assert!(drain(&late).is_empty());
}

#[test]
fn mqtt_4_7_2_1_hash_does_not_see_dollar_topics() {
    let mut router = router();
    let all = slot("all", 10);
    let sys = slot("sys", 10);
    subscribe(
        &mut router,
        &all,
        &[("#", QoS::AtMostOnce), ("+/x", QoS::AtMostOnce)],
    );
    subscribe(&mut router, &sys, &[("$SYS/#", QoS::AtMostOnce)]);
    router.handle(publish(message("$SYS/x", QoS::AtMostOnce, false, b"x")));
    assert!(drain(&all).is_empty());
    assert_eq!(drain(&sys).len(), 1);
}

#[test]
fn full_mailbox_drops_qos0_and_counts() {
    let metrics = Arc::new(Metrics::default());
    let mut router = Router::new(metrics.clone());
    let s = slot("slow", 2);
    subscribe(&mut router, &s, &[("t", QoS::AtMostOnce)]);
    for _ in 0..5 {
        router.handle(publish(message("t", QoS::AtMostOnce, false, b"x")));
    }
    assert_eq!(drain(&s).len(), 2);
    assert_eq!(metrics.snapshot().dropped_queue_full, 3);
}

#[test]
fn full_mailbox_of_an_online_session_holds_qos1_with_the_receipt() {
    let metrics = Arc::new(Metrics::default());
    let mut router = Router::new(metrics.clone());
    let s = slot("slow", 2);
    subscribe(&mut router, &s, &[("t", QoS::AtLeastOnce)]);
    let (receipt, mut released) = crate::types::Receipt::new();
    for _ in 0..3 {
        router.handle(RouterMsg::Publish {
            message: message("t", QoS::AtLeastOnce, false, b"x"),
            receipt: Some(receipt.clone()),
        });
    }
    drop(receipt);
    assert!(
        released.try_recv().is_err(),
        "the third message holds the acknowledgement"
    );
    assert_eq!(drain(&s).len(), 3, "nothing acknowledged was dropped");
    assert!(matches!(
        released.try_recv(),
        Err(oneshot::error::TryRecvError::Closed)
    ));
    let snapshot = metrics.snapshot();
    assert_eq!(
        (
            snapshot.held_for_slow_subscribers,
            snapshot.dropped_queue_full
        ),
        (1, 0)
    );
}

#[test]
fn offline_sessions_queue_qos1_but_not_qos0() {
    let metrics = Arc::new(Metrics::default());
    let mut router = Router::new(metrics.clone());
    let s = slot("away", 10);
    subscribe(&mut router, &s, &[("t", QoS::AtLeastOnce)]);
    s.set_online(false);
    router.handle(publish(message("t", QoS::AtMostOnce, false, b"0")));
    router.handle(publish(message("t", QoS::AtLeastOnce, false, b"1")));
    let got = drain(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.payload.as_ref(), b"1");
    assert_eq!(metrics.snapshot().dropped_qos0_offline, 1);
}

#[test]
fn unsubscribe_and_drop_session_remove_everything() {
    let mut router = router();
    let s = slot("c", 10);
    subscribe(
        &mut router,
        &s,
        &[
            ("a/b", QoS::AtMostOnce),
            ("a/#", QoS::AtMostOnce),
            ("x", QoS::AtMostOnce),
        ],
    );
    assert_eq!(router.subscription_count(), 3);
    let (done, _answer) = oneshot::channel();
    router.handle(RouterMsg::Unsubscribe {
        client_id: ClientId::new("c"),
        filters: vec![TopicFilter::new("a/b").unwrap()],
        done,
    });
    assert_eq!(router.subscription_count(), 2);
    let (done, _answer) = oneshot::channel();
    router.handle(RouterMsg::DropSession {
        client_id: ClientId::new("c"),
        done,
    });
    assert_eq!(router.subscription_count(), 0);
    router.handle(publish(message("a/b", QoS::AtMostOnce, false, b"x")));
    assert!(drain(&s).is_empty());
}
