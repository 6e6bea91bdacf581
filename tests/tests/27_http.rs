//! The `[http]` listener over real HTTP: `/metrics` moves with what clients
//! do, `/healthz` and `/readyz` (503 while the broker drains), every admin
//! API endpoint (clients with paging and search, a client's subscriptions,
//! a kick that closes the client and sends its will, retained topics a page
//! at a time, a publish that reaches subscribers), the bearer token, the
//! dashboard's files, a port in use as a start error, and `[http]` changed
//! by a reload (a new token for the next request; the listener moved, kept
//! when the new port is in use, turned off and on).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidemq::{Broker, Settings};
use tidemq_protocol::{Disconnect, QoS, ReasonCode};
use tidemq_tests::http::{get, request, sample};
use tidemq_tests::{
    connect_bytes, publish_bytes, settings, subscribe_bytes, v5, ConnectOptions, RawClient,
    TestBroker, WAIT,
};
use tokio::io::AsyncReadExt;

/// Test settings with the HTTP listener on 127.0.0.1, port 0.
fn http_settings() -> Settings {
    let mut config = settings();
    config.http.bind = "127.0.0.1:0".to_owned();
    config
}

async fn http_broker(config: Settings) -> (TestBroker, std::net::SocketAddr) {
    let broker = TestBroker::start_with(config).await;
    let http = broker.broker().http_addr().expect("http listener on");
    (broker, http)
}

/// Scrapes `/metrics` until `series` has `value`, or fails after [`WAIT`].
async fn wait_sample(http: std::net::SocketAddr, series: &str, value: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = get(http, "/metrics").await.body;
        if sample(&body, series) == Some(value) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {value}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_connections_and_publishes() {
    let (broker, http) = http_broker(http_settings()).await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("m1")).await;
    let mut modern = v5::V5Client::plain(broker.addr, "m5").await;
    client
        .publish_acked("m/0", QoS::AtMostOnce, 1, b"a", false)
        .await;
    client
        .publish_acked("m/1", QoS::AtLeastOnce, 2, b"b", false)
        .await;
    client
        .publish_acked("m/1", QoS::AtLeastOnce, 3, b"c", false)
        .await;
    client
        .publish_acked("m/2", QoS::ExactlyOnce, 4, b"d", false)
        .await;

    let reply = get(http, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        reply.headers
    );
    let body = &reply.body;
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(
        sample(body, "tidemq_messages_received_total{qos=\"0\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(body, "tidemq_messages_received_total{qos=\"1\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(body, "tidemq_messages_received_total{qos=\"2\"}"),
        Some(1.0)
    );
    assert_eq!(sample(body, "tidemq_connections_current"), Some(2.0));
    assert_eq!(sample(body, "tidemq_connections_accepted_total"), Some(2.0));
    let listener = format!(
        "tidemq_connections{{listener=\"{}\",protocol=\"mqtt\",tls=\"false\",version=",
        broker.addr
    );
    assert_eq!(
        sample(body, &format!("{listener}\"3.1.1\"}}")),
        Some(1.0),
        "{body}"
    );
    assert_eq!(sample(body, &format!("{listener}\"5\"}}")), Some(1.0));
    assert_eq!(sample(body, &format!("{listener}\"3.1\"}}")), Some(0.0));
    assert!(sample(body, "tidemq_process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(body, "tidemq_uptime_seconds").is_some());
    assert_eq!(sample(body, "tidemq_router_queue_depth"), Some(0.0));
    // Packets by type. Each reply was counted before it was written; what
    // was received is added after its read, so it is waited for.
    let received = |kind: &str| format!("tidemq_packets_received_total{{type=\"{kind}\"}}");
    let sent = |kind: &str| format!("tidemq_packets_sent_total{{type=\"{kind}\"}}");
    for (kind, count) in [
        ("connect", 2.0),
        ("publish", 4.0),
        ("pubrel", 1.0),
        ("pingreq", 1.0),
    ] {
        wait_sample(http, &received(kind), count).await;
    }
    let body = &get(http, "/metrics").await.body;
    for (kind, count) in [("puback", 0.0), ("subscribe", 0.0), ("auth", 0.0)] {
        assert_eq!(sample(body, &received(kind)), Some(count), "{kind}");
    }
    let replies = [
        ("connack", 2.0),
        ("puback", 2.0),
        ("pubrec", 1.0),
        ("pubcomp", 1.0),
        ("pingresp", 1.0),
        ("publish", 0.0),
    ];
    for (kind, count) in replies {
        assert_eq!(sample(body, &sent(kind)), Some(count), "{kind}:\n{body}");
    }
    assert_eq!(
        sample(body, "tidemq_packets_received_total"),
        None,
        "only by type"
    );
    // Every counter is there with its doc as HELP; gauges are gauges.
    for (name, _) in broker.metrics().named() {
        if name == "messages_received" {
            continue;
        }
        assert!(body.contains(&format!("# HELP tidemq_{name} ")), "{name}");
    }
    assert!(body.contains("# TYPE tidemq_takeovers counter\n"));
    assert!(body.contains("# TYPE tidemq_retained_bytes_current gauge\n"));
    assert!(body.contains("# HELP tidemq_takeovers Connections closed because another connection took over their client id.\n"));

    // A closed connection leaves the gauge of its listener and version.
    modern
        .disconnect(Disconnect::new(ReasonCode::SUCCESS))
        .await;
    wait_sample(http, &format!("{listener}\"5\"}}"), 0.0).await;
    wait_sample(http, &received("disconnect"), 1.0).await;
    let body = get(http, "/metrics").await.body;
    assert_eq!(sample(&body, &format!("{listener}\"3.1.1\"}}")), Some(1.0));
    drop(client);
    broker.stop().await;
}

/// A subscriber whose socket takes almost nothing, so the broker's writer
/// stalls once the kernel's buffers are full.
async fn stalled_subscriber(broker: &TestBroker, topic: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(broker.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(&connect_bytes(&ConnectOptions::new("stalled")))
        .await
        .unwrap();
    stream
        .write_all(&subscribe_bytes(1, &[(topic, QoS::AtMostOnce)]))
        .await
        .unwrap();
    let mut acks = [0u8; 9]; // CONNACK (4) and SUBACK (5)
    tokio::time::timeout(WAIT, stream.read_exact(&mut acks))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acks, [0x20, 2, 0, 0, 0x90, 3, 0, 1, 0]);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_200_and_readyz_turns_503_while_the_broker_drains() {
    let mut config = http_settings();
    // Shutdown waits this long for the stalled writer below.
    config.limits.write_timeout_ms = 2000;
    let (broker, http) = http_broker(config).await;
    assert_eq!(get(http, "/healthz").await.status, 200);
    let ready = get(http, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    // 10 MiB for a reader that reads nothing: more than the kernel holds.
    let _stalled = stalled_subscriber(&broker, "flood").await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("p")).await;
    let payload = vec![b'x'; 64 * 1024];
    for _ in 0..160 {
        publisher
            .send(&publish_bytes("flood", QoS::AtMostOnce, 0, &payload, false))
            .await;
    }
    publisher.ping().await;

    let shutdown = tokio::spawn(broker.stop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = get(http, "/readyz").await;
        if ready.status == 503 {
            assert_eq!(ready.body, "shutting down\n");
            break;
        }
        assert_eq!(ready.status, 200);
        assert!(tokio::time::Instant::now() < deadline, "never 503");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get(http, "/healthz").await.status, 200, "still live");
    assert!(!shutdown.is_finished(), "the drain is still waiting");
    tokio::time::timeout(Duration::from_secs(15), shutdown)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "the HTTP listener is closed after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_listed_by_id_with_paging_search_and_details() {
    let (broker, http) = http_broker(http_settings()).await;
    let mut options = ConnectOptions::new("api-a");
    options.keep_alive = 30;
    let (a, _) = RawClient::connected(broker.addr, &options).await;
    let (_b, _) = RawClient::connected(broker.addr, &ConnectOptions::new("api-b")).await;
    let _c = v5::V5Client::plain(broker.addr, "other").await;
    broker.wait_resting(3).await;

    let all = get(http, "/api/clients").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let all = all.json();
    assert_eq!(all["total"], 3);
    let ids: Vec<&str> = all["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["api-a", "api-b", "other"]);
    let first = &all["clients"][0];
    assert_eq!(first["address"], a.stream.local_addr().unwrap().to_string());
    assert_eq!(first["listener"], broker.addr.to_string());
    assert_eq!(first["protocol_version"], "3.1.1");
    assert_eq!(first["keepalive"], 30);
    assert_eq!(first["online"], true);
    assert_eq!(first["resting"], true);
    assert_eq!(first["persistent"], false);
    assert_eq!(first["queued"], 0);
    assert_eq!(first["in_flight"], 0);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let since = first["connected_since_ms"].as_u64().unwrap();
    assert!(
        since <= now_ms && now_ms - since < 60_000,
        "{since} vs {now_ms}"
    );
    assert_eq!(all["clients"][2]["protocol_version"], "5");

    let page = get(http, "/api/clients?offset=1&limit=1").await.json();
    assert_eq!(page["total"], 3);
    assert_eq!(page["clients"].as_array().unwrap().len(), 1);
    assert_eq!(page["clients"][0]["client_id"], "api-b");
    let found = get(http, "/api/clients?q=api-").await.json();
    assert_eq!(found["total"], 2);
    assert_eq!(get(http, "/api/clients?limit=x").await.status, 400);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_subscriptions_are_listed_percent_encoded_ids_included() {
    let (broker, http) = http_broker(http_settings()).await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("dev/1")).await;
    client
        .subscribe_granted(1, &[("b/#", QoS::ExactlyOnce), ("a/+", QoS::AtLeastOnce)])
        .await;
    let reply = get(http, "/api/clients/dev%2F1/subscriptions").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let subs = reply.json();
    assert_eq!(subs["client_id"], "dev/1");
    let listed: Vec<(String, u64)> = subs["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["filter"].as_str().unwrap().to_owned(),
                s["qos"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("a/+".to_owned(), 1), ("b/#".to_owned(), 2)]);
    assert_eq!(
        get(http, "/api/clients/nobody/subscriptions").await.status,
        404
    );
    assert_eq!(
        get(http, "/api/clients/%zz/subscriptions").await.status,
        400
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_closes_a_resting_client_and_publishes_its_will() {
    let (broker, http) = http_broker(http_settings()).await;
    let (mut watcher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("w")).await;
    watcher
        .subscribe_granted(1, &[("wills/kick-me", QoS::AtMostOnce)])
        .await;
    let mut options = ConnectOptions::new("kick-me");
    options.will = Some(("wills/kick-me", b"gone", 0, false));
    let (mut victim, _) = RawClient::connected(broker.addr, &options).await;
    broker.wait_resting(2).await;

    let reply = request(http, "DELETE", "/api/clients/kick-me", &[], "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["disconnected"], true);
    assert!(
        victim.closed_by_broker().await,
        "the kicked client is closed"
    );
    let (topic, payload, _, _) = watcher.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("wills/kick-me", &b"gone"[..])
    );
    broker
        .wait_metrics("clients_kicked", |m| m.clients_kicked == 1)
        .await;
    let again = request(http, "DELETE", "/api/clients/kick-me", &[], "").await;
    assert_eq!(again.status, 404, "gone already");
    // The watcher was not touched.
    watcher.ping().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_sends_an_mqtt5_client_disconnect_0x98() {
    let mut config = http_settings();
    config.limits.rest_after_ms = 0; // the connection keeps its tasks
    let (broker, http) = http_broker(config).await;
    let mut client = v5::V5Client::plain(broker.addr, "live5").await;
    let reply = request(http, "DELETE", "/api/clients/live5", &[], "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::ADMINISTRATIVE_ACTION);
    // Counted by its reason once the connection is closed.
    wait_sample(http, "tidemq_closed_by_broker_total{reason=\"0x98\"}", 1.0).await;
    // The same client id may come back, and is not kicked again.
    let mut back = v5::V5Client::plain(broker.addr, "live5").await;
    back.subscribe_qos("x", QoS::AtMostOnce).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_topics_come_a_page_at_a_time() {
    let mut config = http_settings();
    config.sys.interval_secs = 0; // no retained $SYS topics in the count
    let (broker, http) = http_broker(config).await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("r")).await;
    for (n, topic) in ["r/3", "r/1", "r/5", "r/2", "r/4"].iter().enumerate() {
        let payload = format!("value {topic}");
        client
            .publish_acked(
                topic,
                QoS::AtLeastOnce,
                n as u16 + 1,
                payload.as_bytes(),
                true,
            )
            .await;
    }
    let topics = |page: &serde_json::Value| -> Vec<String> {
        page["retained"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["topic"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = get(http, "/api/retained?limit=2").await.json();
    assert_eq!(first["total"], 5);
    assert_eq!(topics(&first), ["r/1", "r/2"]);
    assert_eq!(first["next_after"], "r/2");
    assert_eq!(first["retained"][0]["payload"], "value r/1");
    assert_eq!(first["retained"][0]["qos"], 1);
    let second = get(http, "/api/retained?offset=2&limit=2").await.json();
    assert_eq!(topics(&second), ["r/3", "r/4"]);
    let after = get(http, "/api/retained?after=r/4").await.json();
    assert_eq!(topics(&after), ["r/5"]);
    assert_eq!(after["next_after"], serde_json::Value::Null);
    let beyond = get(http, "/api/retained?offset=10").await.json();
    assert!(topics(&beyond).is_empty());
    let filtered = get(http, "/api/retained?filter=r%2F%2B&limit=1")
        .await
        .json();
    assert_eq!(topics(&filtered), ["r/1"]);
    assert_eq!(
        get(http, "/api/retained?filter=a%2F%23%2Fb").await.status,
        400
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_publish_reaches_subscribers_and_the_retained_store() {
    let (broker, http) = http_broker(http_settings()).await;
    let (mut subscriber, _) = RawClient::connected(broker.addr, &ConnectOptions::new("s")).await;
    subscriber
        .subscribe_granted(1, &[("p/#", QoS::AtLeastOnce)])
        .await;
    let body = r#"{"topic":"p/x","payload":"hello","qos":1,"retain":true}"#;
    let headers = [("Content-Type", "application/json")];
    let reply = request(http, "POST", "/api/publish", &headers, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (topic, payload, qos, _) = subscriber.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice(), qos),
        ("p/x", &b"hello"[..], QoS::AtLeastOnce)
    );
    let retained = get(http, "/api/retained").await.json();
    assert_eq!(retained["retained"][0]["topic"], "p/x");
    for bad in [
        "not json",
        r#"{"payload":"no topic"}"#,
        r#"{"topic":"p/+","payload":"x"}"#,
        r#"{"topic":"p/x","qos":3}"#,
        r#"{"topic":"p/x","retain":"yes"}"#,
    ] {
        let reply = request(http, "POST", "/api/publish", &headers, bad).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.json()["error"].is_string());
    }
    assert_eq!(get(http, "/api/publish").await.status, 405);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_api_wants_it_and_the_rest_does_not() {
    let mut config = http_settings();
    config.http.token = "s3cret".to_owned();
    let (broker, http) = http_broker(config).await;
    let none = get(http, "/api/stats").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let wrong = request(
        http,
        "GET",
        "/api/stats",
        &[("Authorization", "Bearer nope")],
        "",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let right = request(
        http,
        "GET",
        "/api/stats",
        &[("Authorization", "Bearer s3cret")],
        "",
    )
    .await;
    assert_eq!(right.status, 200);
    let stats = right.json();
    assert!(stats["metrics"]["connections_accepted"].is_u64());
    assert!(stats["uptime_secs"].is_f64());
    assert_eq!(get(http, "/metrics").await.status, 200);
    assert_eq!(get(http, "/healthz").await.status, 200);
    assert_eq!(get(http, "/").await.status, 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_from_the_binary() {
    let (broker, http) = http_broker(http_settings()).await;
    let page = get(http, "/").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.body.contains("<canvas"), "{}", page.body);
    assert!(page.body.contains("dashboard.js"));
    let script = get(http, "/dashboard.js").await;
    assert_eq!(script.status, 200);
    assert!(script
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(script.body.contains("/api/stats"));
    assert_eq!(get(http, "/dashboard.css").await.status, 200);
    assert_eq!(get(http, "/nope").await.status, 404);
    assert_eq!(request(http, "POST", "/metrics", &[], "").await.status, 405);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_port_in_use_is_a_start_error_with_exit_code_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = settings();
    config.http.bind = taken.local_addr().unwrap().to_string();
    let error = Broker::start(config).await.expect_err("port in use");
    assert!(error.to_string().contains("http.bind"), "{error}");
    assert_eq!(error.exit_code(), 1);
    // Off: nothing bound, no address.
    let broker = TestBroker::start().await;
    assert_eq!(broker.broker().http_addr(), None);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_client_id_is_not_listed_as_online_afterwards() {
    let (broker, http) = http_broker(http_settings()).await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("gone")).await;
    let reply = request(http, "DELETE", "/api/clients/gone", &[], "").await;
    assert_eq!(reply.status, 200);
    assert!(client.closed_by_broker().await);
    broker
        .wait_metrics("the session to end", |m| m.sessions_current == 0)
        .await;
    let listed = get(http, "/api/clients").await.json();
    assert_eq!(listed["total"], 0, "{listed}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_latency_is_recorded_for_one_publish_in_16_and_each_of_its_deliveries() {
    let (broker, http) = http_broker(http_settings()).await;
    let mut subscribers = Vec::new();
    for id in ["lat-a", "lat-b"] {
        let (mut subscriber, _) = RawClient::connected(broker.addr, &ConnectOptions::new(id)).await;
        subscriber
            .subscribe_granted(1, &[("lat/#", QoS::AtMostOnce)])
            .await;
        subscribers.push(subscriber);
    }
    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("lat-pub")).await;
    // A retained PUBLISH is not sampled and does not move the sampler: the
    // next one is the connection's first sampled, then the 17th after it.
    publisher
        .publish_acked("lat/r", QoS::AtMostOnce, 1, b"r", true)
        .await;
    for n in 0..17u16 {
        let rested = broker.metrics().connections_rested;
        publisher
            .publish_acked("lat/x", QoS::AtMostOnce, n + 2, b"x", false)
            .await;
        // The publisher and both subscribers rest (after 20 ms idle)
        // between PUBLISHes: one in 16 holds across rests.
        broker
            .wait_metrics("all three rested", |m| m.connections_rested >= rested + 3)
            .await;
    }
    // Each delivery was recorded before its subscriber's batch was written.
    for subscriber in &mut subscribers {
        for _ in 0..18 {
            subscriber.next_publish().await;
        }
    }
    let body = get(http, "/metrics").await.body;
    assert!(
        body.contains("# TYPE tidemq_delivery_latency_seconds histogram\n"),
        "{body}"
    );
    // Two sampled messages, two deliveries each.
    assert_eq!(
        sample(&body, "tidemq_delivery_latency_seconds_count"),
        Some(4.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "tidemq_delivery_latency_seconds_bucket{le=\"+Inf\"}"),
        Some(4.0),
        "{body}"
    );
    let sum = sample(&body, "tidemq_delivery_latency_seconds_sum").unwrap();
    assert!(sum > 0.0 && sum < 4.0 * WAIT.as_secs_f64(), "{sum}");
    drop(subscribers);
    broker.stop().await;
}

/// Waits until `addr` refuses connections, or fails after [`WAIT`].
async fn wait_refused(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .is_ok_and(|connected| connected.is_ok())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET path` with `headers` (`Name: value\r\n` each) on a connection
/// opened earlier; the answer's status.
async fn status_on(mut stream: tokio::net::TcpStream, path: &str, headers: &str) -> u16 {
    use tokio::io::AsyncWriteExt;
    let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_token_applies_to_the_next_request_on_the_same_listener() {
    let mut config = http_settings();
    let (broker, http) = http_broker(config.clone()).await;
    assert_eq!(
        get(http, "/api/stats").await.status,
        200,
        "loopback, no token"
    );
    let opened_before = tokio::net::TcpStream::connect(http).await.unwrap();

    config.http.token = "s3cret".to_owned();
    broker.broker().reload(&config).await;
    assert_eq!(broker.broker().http_addr(), Some(http), "not rebound");
    assert_eq!(status_on(opened_before, "/api/stats", "").await, 401);
    assert_eq!(get(http, "/api/stats").await.status, 401);
    let with = |token: &'static str| async move {
        request(http, "GET", "/api/stats", &[("Authorization", token)], "").await
    };
    assert_eq!(with("Bearer s3cret").await.status, 200);
    assert_eq!(get(http, "/healthz").await.status, 200, "no token needed");

    config.http.token = "n3w".to_owned();
    broker.broker().reload(&config).await;
    assert_eq!(with("Bearer s3cret").await.status, 401, "the old token");
    assert_eq!(with("Bearer n3w").await.status, 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_bind_moves_the_listener_and_the_old_address_refuses() {
    let mut config = http_settings();
    let (broker, old) = http_broker(config.clone()).await;
    // The address bound now, written out: untouched.
    config.http.bind = old.to_string();
    broker.broker().reload(&config).await;
    assert_eq!(broker.broker().http_addr(), Some(old));
    assert_eq!(get(old, "/healthz").await.status, 200);

    config.http.bind = "127.0.0.1:0".to_owned();
    broker.broker().reload(&config).await;
    let new = broker.broker().http_addr().expect("still on");
    assert_ne!(new, old);
    assert_eq!(get(new, "/healthz").await.status, 200);
    let ready = get(new, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    wait_refused(old).await;
    tokio::time::timeout(WAIT, broker.stop())
        .await
        .expect("shutdown does not wait for the old listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_bind_on_a_port_in_use_keeps_the_old_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let wanted = taken.local_addr().unwrap();
    let mut config = http_settings();
    let (broker, old) = http_broker(config.clone()).await;
    config.http.bind = wanted.to_string();
    broker.broker().reload(&config).await;
    assert_eq!(broker.broker().http_addr(), Some(old));
    assert_eq!(get(old, "/healthz").await.status, 200);
    // The failed move was not taken as done: the same config, reloaded
    // once the port is free, moves it.
    drop(taken);
    broker.broker().reload(&config).await;
    assert_eq!(broker.broker().http_addr(), Some(wanted));
    assert_eq!(get(wanted, "/healthz").await.status, 200);
    wait_refused(old).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_empty_bind_turns_the_listener_off_and_an_address_on() {
    let mut config = http_settings();
    let (broker, old) = http_broker(config.clone()).await;
    config.http.bind = String::new();
    broker.broker().reload(&config).await;
    assert_eq!(broker.broker().http_addr(), None);
    wait_refused(old).await;

    config.http.bind = "127.0.0.1:0".to_owned();
    broker.broker().reload(&config).await;
    let on = broker.broker().http_addr().expect("on again");
    assert_eq!(get(on, "/healthz").await.status, 200);
    assert_eq!(get(on, "/api/stats").await.status, 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_reason_and_the_queue_session_and_retained_gauges() {
    let mut config = http_settings();
    // No retained $SYS topics: the retained gauges count this test's own.
    config.sys.interval_secs = 0;
    let (broker, http) = http_broker(config).await;
    // [MQTT-3.1.3-8]: an empty client id with clean session 0 is refused
    // with return code 0x02 (MQTT 5's 0x85, Client Identifier not valid).
    let mut options = ConnectOptions::new("");
    options.clean_session = false;
    let mut refused = RawClient::connect(broker.addr).await;
    refused.send(&connect_bytes(&options)).await;
    let connack = refused.recv().await.expect("CONNACK");
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x02]);
    let body = get(http, "/metrics").await.body;
    assert_eq!(
        sample(
            &body,
            "tidemq_connacks_refused_by_reason_total{reason=\"0x85\"}"
        ),
        Some(1.0),
        "{body}"
    );
    // A subscriber holding two QoS 1 deliveries unacknowledged.
    let (mut holder, _) = RawClient::connected(broker.addr, &ConnectOptions::new("holder")).await;
    holder
        .subscribe_granted(1, &[("q/#", QoS::AtLeastOnce)])
        .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("pub")).await;
    for n in 1..=2 {
        publisher
            .publish_acked("q/x", QoS::AtLeastOnce, n, b"x", false)
            .await;
        holder.next_publish().await;
    }
    let body = get(http, "/metrics").await.body;
    assert_eq!(
        sample(&body, "tidemq_inflight_messages"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(sample(&body, "tidemq_queued_messages"), Some(0.0));
    // holder and pub; the refused client left no session.
    assert_eq!(
        sample(&body, "tidemq_sessions{state=\"online\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, "tidemq_sessions{state=\"offline\"}"),
        Some(0.0)
    );

    // A persistent subscriber gone offline: what it is sent now waits in
    // its queue; holder takes three more unacknowledged.
    let mut options = ConnectOptions::new("away");
    options.clean_session = false;
    let (mut away, _) = RawClient::connected(broker.addr, &options).await;
    away.subscribe_granted(1, &[("q/#", QoS::AtLeastOnce)])
        .await;
    away.send(&[0xE0, 0x00]).await;
    assert!(away.closed_by_broker().await);
    wait_sample(http, "tidemq_sessions{state=\"offline\"}", 1.0).await;
    for n in 3..=5 {
        publisher
            .publish_acked("q/x", QoS::AtLeastOnce, n, b"x", false)
            .await;
        holder.next_publish().await;
    }
    let body = wait_sample(http, "tidemq_queued_messages", 3.0).await;
    assert_eq!(sample(&body, "tidemq_inflight_messages"), Some(5.0));
    let clients = get(http, "/api/clients").await.json();
    let listed = |id: &str| {
        clients["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client_id"] == id)
            .unwrap_or_else(|| panic!("{id} listed: {clients}"))
            .clone()
    };
    assert_eq!(listed("holder")["in_flight"], 5, "{clients}");
    assert_eq!(listed("away")["online"], false, "{clients}");
    assert_eq!(listed("away")["queued"], 3, "{clients}");

    // Retained count and bytes (topic + payload) follow the store.
    publisher
        .publish_acked("r/one", QoS::AtLeastOnce, 6, b"12345", true)
        .await;
    publisher
        .publish_acked("r/two", QoS::AtLeastOnce, 7, b"123", true)
        .await;
    let body = wait_sample(http, "tidemq_retained_messages_current", 2.0).await;
    assert_eq!(
        sample(&body, "tidemq_retained_bytes_current"),
        Some((5 + 5 + 5 + 3) as f64)
    );
    publisher
        .publish_acked("r/one", QoS::AtLeastOnce, 8, b"", true)
        .await;
    let body = wait_sample(http, "tidemq_retained_messages_current", 1.0).await;
    assert_eq!(sample(&body, "tidemq_retained_bytes_current"), Some(8.0));

    // Messages sent by the QoS they go out at: holder's five so far at
    // QoS 1, then a QoS 0 one, and a QoS 2 one its QoS 1 subscription
    // downgrades (MQTT 3.1.1 section 3.8.4: the minimum of the two).
    let sent = |qos: u8| format!("tidemq_messages_sent_total{{qos=\"{qos}\"}}");
    let body = get(http, "/metrics").await.body;
    assert_eq!(sample(&body, &sent(1)), Some(5.0), "{body}");
    assert_eq!(sample(&body, &sent(0)), Some(0.0));
    publisher
        .publish_acked("q/x", QoS::AtMostOnce, 0, b"x", false)
        .await;
    publisher
        .publish_acked("q/x", QoS::ExactlyOnce, 9, b"x", false)
        .await;
    for _ in 0..2 {
        holder.next_publish().await;
    }
    let body = wait_sample(http, &sent(1), 6.0).await;
    assert_eq!(sample(&body, &sent(0)), Some(1.0), "{body}");
    assert_eq!(sample(&body, &sent(2)), Some(0.0), "{body}");
    assert_eq!(
        sample(&body, "tidemq_messages_sent_total"),
        None,
        "only by QoS"
    );
    broker.stop().await;
}
