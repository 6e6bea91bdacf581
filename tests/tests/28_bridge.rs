//! A `[[bridge]]` carries messages between tidemq and a real mosquitto
//! (Debian package `mosquitto`, started here on a free 127.0.0.1 port):
//! both ways, with nothing lost when the remote is killed mid-run with
//! messages in flight and restarted, and without a message coming back
//! over the bridge it left by. Mosquitto keeps its sessions across the
//! restart (`autosave_on_changes`), so a loss can only be the bridge's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{Event, MqttOptions, Packet, QoS as RQoS};
use tidemq::config::BridgeConfig;
use tidemq::QoS;
use tidemq_tests::{mqtt_options, settings, Client, TestBroker, QUIET, WAIT};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// How long the restart test waits for all of its messages.
const RESTART_WAIT: Duration = Duration::from_secs(30);

/// A mosquitto broker run by a test; killed when dropped.
struct Mosquitto {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts mosquitto on a free port, with its persistence file in a
    /// directory of its own, and waits until it accepts connections.
    async fn start(name: &str) -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("tidemq-bridge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Run as root, mosquitto drops to its own user, which must be able
        // to write its persistence file here.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
             autosave_on_changes true\nautosave_interval 1\n",
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config).unwrap();
        let mut mosquitto = Mosquitto {
            port,
            dir,
            child: None,
        };
        mosquitto.run().await;
        mosquitto
    }

    async fn run(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run mosquitto: install the mosquitto package, CI does");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// SIGSTOP: mosquitto reads and acknowledges nothing until killed.
    fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGKILL and wait for the exit: what it had not processed is gone,
    /// its sessions are as last autosaved; [`Mosquitto::run`] starts it
    /// again on the same port.
    async fn kill(&mut self) {
        self.signal("-KILL");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mosquitto did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        options
    }

    fn bridge(&self, topics: &[&str]) -> BridgeConfig {
        BridgeConfig {
            name: "test".to_owned(),
            address: format!("127.0.0.1:{}", self.port),
            client_id: None,
            username: None,
            password: None,
            clean_session: false,
            topics: topics.iter().map(|line| line.to_string()).collect(),
            reconnect_min_ms: 20,
            reconnect_max_ms: 200,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_bridged(mosquitto: &Mosquitto, topics: &[&str]) -> TestBroker {
    let mut settings = settings();
    settings.bridges = vec![mosquitto.bridge(topics)];
    settings.validate().unwrap();
    TestBroker::start_with(settings).await
}

/// The next PUBLISH on `topic`, skipping others.
async fn next_on(client: &mut Client, topic: &str) -> rumqttc::Publish {
    loop {
        let publish = client.next_publish().await;
        if publish.topic == topic {
            return publish;
        }
    }
}

/// Every PUBLISH on `topic` arriving within [`QUIET`].
async fn count_quietly(client: &mut Client, topic: &str) -> usize {
    let mut count = 0;
    while let Ok(Some(publish)) = timeout(QUIET, client.publishes.recv()).await {
        count += usize::from(publish.topic == topic);
    }
    count
}

/// Publishes a retained message on mosquitto and waits until `watcher`
/// (subscribed there) saw it, so a later subscriber gets it.
async fn retain_on_remote(mosquitto: &Mosquitto, watcher: &mut Client, topic: &str) {
    let publisher = Client::connect(mosquitto.options("remote-retainer")).await;
    publisher
        .client
        .publish(topic, RQoS::AtLeastOnce, true, "ready")
        .await
        .unwrap();
    next_on(watcher, topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_the_bridge_both_ways() {
    let mosquitto = Mosquitto::start("both-ways").await;
    let mut remote = Client::connect(mosquitto.options("remote-sub")).await;
    remote.subscribe("out/#", RQoS::AtLeastOnce).await;
    remote.subscribe("in/#", RQoS::AtLeastOnce).await;
    retain_on_remote(&mosquitto, &mut remote, "in/ready").await;

    let broker = start_bridged(&mosquitto, &["out/# out 1", "in/# in 1"]).await;
    let mut local = Client::connect(mqtt_options(&broker, "local-sub")).await;
    local.subscribe("in/#", RQoS::AtLeastOnce).await;
    // The retained message came in: the bridge's remote subscription is in place.
    let ready = next_on(&mut local, "in/ready").await;
    assert_eq!(&ready.payload[..], b"ready");

    let remote_pub = Client::connect(mosquitto.options("remote-pub")).await;
    remote_pub
        .client
        .publish("in/live", RQoS::AtLeastOnce, false, "from mosquitto")
        .await
        .unwrap();
    let live = next_on(&mut local, "in/live").await;
    assert_eq!(&live.payload[..], b"from mosquitto");
    assert_eq!(live.qos, RQoS::AtLeastOnce);

    let local_pub = Client::connect(mqtt_options(&broker, "local-pub")).await;
    local_pub
        .client
        .publish("out/a", RQoS::AtLeastOnce, false, "from tidemq")
        .await
        .unwrap();
    let out = next_on(&mut remote, "out/a").await;
    assert_eq!(&out.payload[..], b"from tidemq");
    // Larger than rumqttc's default packet limit (10 KiB).
    let large = vec![b'x'; 50_000];
    broker
        .broker()
        .publish("out/large", large.clone(), QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(next_on(&mut remote, "out/large").await.payload, large);
    broker
        .wait_metrics("bridged both ways", |m| {
            m.bridge_messages_in >= 2 && m.bridge_messages_out >= 2
        })
        .await;
    broker.stop().await;
}

/// What the collector sends when its subscription is in place.
const SUBSCRIBED: &str = "<subscribed>";

/// A subscriber on mosquitto with a persistent session that reconnects on
/// its own; sends every payload it receives, and [`SUBSCRIBED`] on SUBACK.
fn collector(options: MqttOptions, filter: &'static str) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                    client.try_subscribe(filter, RQoS::AtLeastOnce).unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if tx.send(SUBSCRIBED.to_owned()).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                    if tx.send(payload).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Mosquitto is restarting: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    rx
}

/// Receives from `rx` until `seen` holds `count` payloads.
async fn collect_until(
    rx: &mut mpsc::UnboundedReceiver<String>,
    seen: &mut HashSet<String>,
    count: usize,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while seen.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(payload)) if payload == SUBSCRIBED => {
                panic!("mosquitto lost the collector's session: is its persistence directory writable?")
            }
            Ok(Some(payload)) => {
                seen.insert(payload);
            }
            _ => {
                let missing: Vec<usize> = (0..count)
                    .filter(|n| !seen.contains(&n.to_string()))
                    .collect();
                panic!(
                    "{} of {count} messages arrived, missing {missing:?}",
                    seen.len()
                )
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_remote_restarts() {
    let mut mosquitto = Mosquitto::start("restart").await;
    let mut options = mosquitto.options("collector");
    options.set_clean_session(false);
    let mut received = collector(options, "out/#");
    let broker = start_bridged(&mosquitto, &["out/# out 1"]).await;

    let subscribed = timeout(WAIT, received.recv()).await.unwrap().unwrap();
    assert_eq!(subscribed, SUBSCRIBED);
    let mut seen = HashSet::new();
    // The collector subscribed and the bridge carries: the first arrives.
    broker
        .broker()
        .publish("out/0", "0", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    collect_until(&mut received, &mut seen, 1, WAIT).await;

    for n in 1..100 {
        let payload = n.to_string();
        broker
            .broker()
            .publish("out/n", payload, QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    collect_until(&mut received, &mut seen, 100, WAIT).await;
    // The second half goes to a mosquitto that takes it and acknowledges
    // nothing, then dies with it: the bridge must send it again.
    mosquitto.freeze();
    for n in 100..200 {
        let payload = n.to_string();
        broker
            .broker()
            .publish("out/n", payload, QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    mosquitto.kill().await;
    mosquitto.run().await;
    collect_until(&mut received, &mut seen, 200, RESTART_WAIT).await;
    let expected: HashSet<String> = (0..200).map(|n| n.to_string()).collect();
    assert_eq!(seen, expected);
    broker
        .wait_metrics("a reconnect and every message acknowledged", |m| {
            m.bridge_reconnects >= 1 && m.bridge_messages_out >= 200
        })
        .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_both_topic_does_not_loop() {
    let mosquitto = Mosquitto::start("loop").await;
    let mut remote = Client::connect(mosquitto.options("remote-sub")).await;
    remote.subscribe("loop/#", RQoS::AtLeastOnce).await;
    retain_on_remote(&mosquitto, &mut remote, "loop/ready").await;

    let broker = start_bridged(&mosquitto, &["loop/# both 1"]).await;
    let mut local = Client::connect(mqtt_options(&broker, "local-sub")).await;
    local.subscribe("loop/#", RQoS::AtLeastOnce).await;
    // The bridge subscribed on mosquitto: what it sends there comes back to it.
    next_on(&mut local, "loop/ready").await;
    // What came in does not go back out (No Local on the local side).
    assert_eq!(count_quietly(&mut remote, "loop/ready").await, 0);

    let local_pub = Client::connect(mqtt_options(&broker, "local-pub")).await;
    local_pub
        .client
        .publish("loop/x", RQoS::AtLeastOnce, false, "once")
        .await
        .unwrap();
    let out = next_on(&mut remote, "loop/x").await;
    assert_eq!(&out.payload[..], b"once");
    next_on(&mut local, "loop/x").await;
    // Neither side sees it again: the echo from mosquitto is dropped.
    assert_eq!(count_quietly(&mut remote, "loop/x").await, 0);
    assert_eq!(count_quietly(&mut local, "loop/x").await, 0);
    broker
        .wait_metrics("one message out", |m| m.bridge_messages_out == 1)
        .await;
    assert_eq!(
        broker.metrics().bridge_messages_in,
        1,
        "only loop/ready came in"
    );
    broker.stop().await;
}
