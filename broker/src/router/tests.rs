//! `Router::handle` driven directly: matching, QoS, retained, drops.

use bytes::Bytes;
use tidemq_protocol::{ReasonCode, TopicName};

use super::*;
use crate::types::ConnId;

fn slot(id: &str, limit: usize) -> Arc<SessionSlot> {
    let slot = Arc::new(SessionSlot::new(ClientId::new(id), ConnId(0), limit));
    slot.set_online(true);
    slot
}

fn message(topic: &str, qos: QoS, retain: bool, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message::new(
        TopicName::new(topic).unwrap(),
        Bytes::from_static(payload),
        qos,
        retain,
    ))
}

fn subscribe(
    router: &mut Router,
    slot: &Arc<SessionSlot>,
    filters: &[(&str, QoS)],
) -> Vec<ReasonCode> {
    subscribe_with_cursors(router, slot, filters).codes
}

fn subscribe_with_cursors(
    router: &mut Router,
    slot: &Arc<SessionSlot>,
    filters: &[(&str, QoS)],
) -> Subscribed {
    let (done, mut answer) = oneshot::channel();
    let filters = filters
        .iter()
        .map(|(f, q)| (TopicFilter::new(f).unwrap(), *q))
        .collect();
    router.handle(RouterMsg::Subscribe {
        slot: slot.clone(),
        request: SubscribeRequest::qos(filters),
        done,
    });
    answer.try_recv().unwrap()
}

fn drain(slot: &SessionSlot) -> Vec<Delivery> {
    std::iter::from_fn(|| slot.mailbox.pop_if(|_| true)).collect()
}

fn publish(message: Arc<Message>) -> RouterMsg {
    RouterMsg::Publish {
        hold: None,
        message,
        receipt: None,
    }
}

fn router() -> Router {
    Router::new(Arc::new(Metrics::default()), RouterLimits::unlimited())
}

fn limited(metrics: &Arc<Metrics>, limits: impl FnOnce(&mut RouterLimits)) -> Router {
    let mut router_limits = RouterLimits::unlimited();
    limits(&mut router_limits);
    Router::new(metrics.clone(), router_limits)
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
    let mut router = Router::new(metrics.clone(), RouterLimits::unlimited());
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
    let mut router = Router::new(metrics.clone(), RouterLimits::unlimited());
    let s = slot("slow", 2);
    subscribe(&mut router, &s, &[("t", QoS::AtLeastOnce)]);
    let (receipt, mut released) = crate::types::Receipt::new();
    for _ in 0..3 {
        router.handle(RouterMsg::Publish {
            hold: None,
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
        Ok(crate::types::Routed::Matched)
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
    let mut router = Router::new(metrics.clone(), RouterLimits::unlimited());
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

/// The attack: one SUBSCRIBE repeating `#` 10,000 times, with retained
/// messages stored. The filter is subscribed once and its retained messages
/// are queued once; every occurrence still gets its return code.
#[test]
fn a_filter_repeated_in_one_subscribe_is_handled_once() {
    let mut router = router();
    for n in 0..10 {
        let topic = format!("r/{n}");
        router.handle(publish(message(&topic, QoS::AtMostOnce, true, b"x")));
    }
    let s = slot("c", 1000);
    let filters = vec![("#", QoS::AtLeastOnce); 10_000];
    let codes = subscribe(&mut router, &s, &filters);
    assert_eq!(codes, vec![ReasonCode(QoS::AtLeastOnce as u8); 10_000]);
    assert_eq!(drain(&s).len(), 10, "each retained message once");
    assert_eq!(router.subscription_count(), 1);
}

#[test]
fn a_repeated_filter_ends_at_the_qos_of_its_last_occurrence() {
    let mut router = router();
    let s = slot("c", 10);
    let codes = subscribe(
        &mut router,
        &s,
        &[("t", QoS::ExactlyOnce), ("t", QoS::AtMostOnce)],
    );
    assert_eq!(
        codes,
        [
            ReasonCode(QoS::ExactlyOnce as u8),
            ReasonCode(QoS::AtMostOnce as u8)
        ]
    );
    router.handle(publish(message("t", QoS::ExactlyOnce, false, b"x")));
    assert_eq!(drain(&s)[0].qos, QoS::AtMostOnce);
}

#[test]
fn max_subscriptions_per_client_at_the_limit_and_one_over() {
    let metrics = Arc::new(Metrics::default());
    let mut router = limited(&metrics, |l| l.max_subscriptions_per_client = 2);
    let s = slot("c", 10);
    let granted = ReasonCode(QoS::AtMostOnce as u8);
    let codes = subscribe(
        &mut router,
        &s,
        &[
            ("a", QoS::AtMostOnce),
            ("b", QoS::AtMostOnce),
            ("c", QoS::AtMostOnce),
        ],
    );
    assert_eq!(codes, [granted, granted, ReasonCode::UNSPECIFIED_ERROR]);
    // [MQTT-3.8.4-3] replacing a subscription needs no new room.
    assert_eq!(
        subscribe(&mut router, &s, &[("a", QoS::AtLeastOnce)]),
        [ReasonCode(QoS::AtLeastOnce as u8)]
    );
    assert_eq!(metrics.snapshot().subscriptions_refused_limit, 1);
    assert_eq!(metrics.snapshot().subscriptions_current, 2);
    // Another client has room of its own.
    assert_eq!(
        subscribe(&mut router, &slot("d", 10), &[("c", QoS::AtMostOnce)]),
        [granted]
    );
}

#[test]
fn filters_over_the_topic_caps_get_0x80() {
    let metrics = Arc::new(Metrics::default());
    let mut router = limited(&metrics, |l| {
        l.max_topic_levels = 3;
        l.max_topic_len = 8;
    });
    let s = slot("c", 10);
    let granted = ReasonCode(QoS::AtMostOnce as u8);
    let codes = subscribe(
        &mut router,
        &s,
        &[
            ("a/b/c", QoS::AtMostOnce),
            ("a/b/c/d", QoS::AtMostOnce),
            ("12345678", QoS::AtMostOnce),
            ("123456789", QoS::AtMostOnce),
        ],
    );
    assert_eq!(
        codes,
        [
            granted,
            ReasonCode::UNSPECIFIED_ERROR,
            granted,
            ReasonCode::UNSPECIFIED_ERROR
        ]
    );
    assert_eq!(metrics.snapshot().topics_refused_limit, 2);
}

#[test]
fn retained_beyond_the_caps_is_delivered_but_not_stored() {
    let metrics = Arc::new(Metrics::default());
    let mut router = limited(&metrics, |l| l.max_retained_messages = 2);
    let live = slot("live", 10);
    subscribe(&mut router, &live, &[("#", QoS::AtMostOnce)]);
    for topic in ["a", "b", "c"] {
        router.handle(publish(message(topic, QoS::AtMostOnce, true, b"x")));
    }
    assert_eq!(drain(&live).len(), 3, "current subscribers get all three");
    let late = slot("late", 10);
    subscribe(&mut router, &late, &[("#", QoS::AtMostOnce)]);
    assert_eq!(drain(&late).len(), 2);
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.retained_refused_limit, 1);
    assert_eq!(snapshot.retained_messages_current, 2);
    assert_eq!(snapshot.retained_bytes_current, 4);
}

/// More retained messages than one batch: the first batch comes with the
/// SUBACK, the rest when the session pulls with the cursor, once each.
#[test]
fn retained_messages_beyond_one_batch_wait_for_the_cursor() {
    let mut router = router();
    let total = RETAINED_BATCH * 2 + 10;
    for n in 0..total {
        let topic = format!("r/{n}");
        router.handle(publish(message(&topic, QoS::AtMostOnce, true, b"x")));
    }
    let s = slot("c", 10);
    let subscribed = subscribe_with_cursors(&mut router, &s, &[("r/+", QoS::AtMostOnce)]);
    let mut got: Vec<String> = drain(&s)
        .iter()
        .map(|d| d.message.topic.to_string())
        .collect();
    assert_eq!(
        got.len(),
        RETAINED_BATCH,
        "one batch, beyond the mailbox limit of 10"
    );
    let mut cursors = subscribed.cursors;
    while let Some(cursor) = cursors.pop() {
        let (done, mut answer) = oneshot::channel();
        router.handle(RouterMsg::Retained {
            slot: s.clone(),
            cursor,
            max: 100,
            done,
        });
        let batch = drain(&s);
        assert!(batch.len() <= 100);
        got.extend(batch.iter().map(|d| d.message.topic.to_string()));
        cursors.extend(answer.try_recv().unwrap());
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), total, "every retained message once");
}

#[test]
fn topic_levels_are_slashes_plus_one() {
    let limits = RouterLimits {
        max_topic_levels: 3,
        max_topic_len: 5,
        ..RouterLimits::unlimited()
    };
    assert!(limits.topic_fits("a/b/c"));
    assert!(!limits.topic_fits("a/b/c/"), "a trailing '/' opens a level");
    assert!(!limits.topic_fits("a/b/c/d"));
    assert!(!limits.topic_fits("abcdef"), "6 bytes over a 5-byte cap");
}
