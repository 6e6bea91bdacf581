//! A `[[bridge]]` carries messages between tidemq and a real mosquitto
//! (Debian package `mosquitto`, started here on a free 127.0.0.1 port):
//! both ways, with nothing lost when the remote is killed mid-run with
//! messages in flight and restarted, and without a message coming back
//! over the bridge it left by. Mosquitto keeps its sessions across the
//! restart (`autosave_on_changes`), so a loss can only be the bridge's.
//! Over TLS (certificates from `tidemq_tests::tls::Pki`): both ways, with
//! a client certificate when mosquitto requires one, and nothing through a
//! bridge that trusts another CA (it keeps retrying); a TLS file that does
//! not load stops the start. Notifications: "1" on both sides after the
//! CONNACK, the will's "0" on mosquitto when tidemq dies, "0" here when
//! the connection is lost. A reload starts an added bridge, stops a
//! removed one and leaves an unchanged one alone; the bridge's local
//! session survives a reload that changes the bridge with everything
//! queued and in flight (all of it reaches mosquitto), and goes with a
//! bridge the reload removes. (Across a restart of tidemq with a store:
//! broker/tests/bridge_restart.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{Event, MqttOptions, Packet, QoS as RQoS};
use tidemq::config::{BridgeConfig, BridgeTls};
use tidemq::{Broker, QoS, Settings};
use tidemq_tests::http::get;
use tidemq_tests::tls::Pki;
use tidemq_tests::{
    mqtt_options, settings, Client, ConnectOptions, RawClient, TestBroker, QUIET, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

/// How long the restart test waits for all of its messages.
const RESTART_WAIT: Duration = Duration::from_secs(30);

/// The default notification topic of the bridge named `name`.
fn state_topic(name: &str) -> String {
    format!("$SYS/broker/connection/tidemq-bridge-{name}/state")
}

/// A free port for mosquitto, below Linux's ephemeral range (32768 and
/// up by default): a listener bound to port 0 elsewhere in the suite
/// cannot take it between this check and mosquitto's bind.
fn mosquitto_port() -> u16 {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new();
    (0u64..)
        .map(|n| 10_000 + (random.hash_one(n) % 22_000) as u16)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .unwrap()
}

/// How mosquitto's TLS listener is set up.
struct TlsListener<'a> {
    pki: &'a Pki,
    require_certificate: bool,
}

/// A mosquitto broker run by a test; killed when dropped. Test clients use
/// its plain listener (`port`); with TLS, the bridge uses `tls_port`.
struct Mosquitto {
    port: u16,
    tls_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// The test clients' user name and password, when mosquitto has a
    /// password file (see [`Mosquitto::start_with_users`]).
    login: Option<(&'static str, &'static str)>,
}

/// The user the test clients log in as on a mosquitto with a password file.
const WATCHER: (&str, &str) = ("watcher", "watch");

impl Mosquitto {
    /// Starts mosquitto on a free port, with its persistence file in a
    /// directory of its own, and waits until it accepts connections.
    async fn start(name: &str) -> Mosquitto {
        Mosquitto::start_with(name, None).await
    }

    /// As [`Mosquitto::start`], plus a TLS listener on `tls_port` with the
    /// PKI's server certificate, asking for client certificates signed by
    /// its CA when `require_certificate`.
    async fn start_tls(name: &str, pki: &Pki, require_certificate: bool) -> Mosquitto {
        let tls = TlsListener {
            pki,
            require_certificate,
        };
        Mosquitto::start_with(name, Some(tls)).await
    }

    /// As [`Mosquitto::start`], refusing anonymous clients: a password file
    /// (written by the real `mosquitto_passwd`) holds `users` and
    /// [`WATCHER`], whom the test clients log in as.
    async fn start_with_users(name: &str, users: &[(&str, &str)]) -> Mosquitto {
        let mut mosquitto = Mosquitto::start_with(name, None).await;
        mosquitto.end("-TERM").await;
        let passwords = mosquitto.dir.join("passwords");
        std::fs::write(&passwords, "").unwrap();
        for (user, password) in users.iter().chain([&WATCHER]) {
            let status = Command::new("mosquitto_passwd")
                .args(["-b", passwords.to_str().unwrap(), user, password])
                .status()
                .expect("mosquitto_passwd (package mosquitto)");
            assert!(status.success());
        }
        // Readable by the user mosquitto drops to.
        std::fs::set_permissions(&passwords, std::fs::Permissions::from_mode(0o644)).unwrap();
        let conf = mosquitto.dir.join("mosquitto.conf");
        let config = std::fs::read_to_string(&conf)
            .unwrap()
            .replace("allow_anonymous true", "allow_anonymous false")
            + &format!("password_file {}\n", passwords.display());
        std::fs::write(&conf, config).unwrap();
        mosquitto.login = Some(WATCHER);
        mosquitto.run().await;
        mosquitto
    }

    /// Writes its config on two free ports and starts it; when one of them
    /// is taken before mosquitto binds it (another test's listener got it
    /// meanwhile), picks two others.
    async fn start_with(name: &str, tls: Option<TlsListener<'_>>) -> Mosquitto {
        let dir = std::env::temp_dir().join(format!("tidemq-bridge-{name}-{}", std::process::id()));
        for _ in 0..3 {
            // Afresh each try: a failed one's value removed it when dropped.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            // Run as root, mosquitto drops to its own user, which must be
            // able to write its persistence file here.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            let (port, tls_port) = (mosquitto_port(), mosquitto_port());
            let mut config = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 autosave_on_changes true\nautosave_interval 1\n",
                dir.display()
            );
            if let Some(TlsListener {
                pki,
                require_certificate,
            }) = tls
            {
                config.push_str(&format!(
                    "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_certificate}\n",
                    pki.path("ca.pem").display(),
                    pki.path("server.pem").display(),
                    pki.path("server.key").display(),
                ));
            }
            std::fs::write(dir.join("mosquitto.conf"), config).unwrap();
            let mut mosquitto = Mosquitto {
                port,
                tls_port,
                dir: dir.clone(),
                child: None,
                login: None,
            };
            if mosquitto.try_run().await {
                return mosquitto;
            }
        }
        panic!("mosquitto found no free port in 3 tries");
    }

    /// Starts it again on its ports, which must still be free.
    async fn run(&mut self) {
        assert!(self.try_run().await, "mosquitto could not listen");
    }

    /// Starts it and waits for its `running` line (its listeners are open);
    /// false if it exited first, which it does when a port is taken. A
    /// connect alone would not tell: the taker may be listening.
    async fn try_run(&mut self) -> bool {
        let before = self.log_lines(" running");
        // Its log (stderr), kept across restarts: a test counts its lines.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot run mosquitto: install the mosquitto package, CI does");
        // Held by `self` from now on, so a failed wait leaves no process.
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while self.log_lines(" running") == before {
            let exited = self.child.as_mut().map(|child| child.try_wait().unwrap());
            if let Some(Some(_)) = exited {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "mosquitto did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The first line of mosquitto's log containing `text`, waited for.
    async fn log_line(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|line| line.contains(text)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {text:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// mosquitto's log so far (its stderr, kept across restarts).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// How many lines of mosquitto's log contain `text`.
    fn log_lines(&self, text: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(text))
            .count()
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
        self.end("-KILL").await;
    }

    /// Sends `signal` and waits for the exit.
    async fn end(&mut self, signal: &str) {
        self.signal(signal);
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
        if let Some((user, password)) = self.login {
            options.set_credentials(user, password);
        }
        options
    }

    fn bridge(&self, topics: &[&str]) -> BridgeConfig {
        self.named_bridge("test", topics)
    }

    /// A plain TCP bridge named `name` (client id `tidemq-bridge-<name>`).
    fn named_bridge(&self, name: &str, topics: &[&str]) -> BridgeConfig {
        bridge_config(name, self.port, topics)
    }

    /// A bridge to the TLS listener, by address (the certificate names
    /// 127.0.0.1), trusting `ca_file`.
    fn tls_bridge(&self, topics: &[&str], pki: &Pki, ca_file: &str) -> BridgeConfig {
        BridgeConfig {
            address: format!("127.0.0.1:{}", self.tls_port),
            tls: Some(BridgeTls {
                ca_file: pki.path(ca_file),
                cert_file: None,
                key_file: None,
                server_name: None,
                insecure: false,
            }),
            ..self.bridge(topics)
        }
    }
}

/// A bridge named `name` to 127.0.0.1:`port`, retrying quickly.
fn bridge_config(name: &str, port: u16, topics: &[&str]) -> BridgeConfig {
    BridgeConfig {
        name: name.to_owned(),
        address: format!("127.0.0.1:{port}"),
        client_id: None,
        username: None,
        password: None,
        clean_session: false,
        topics: topics.iter().map(|line| line.to_string()).collect(),
        reconnect_min_ms: 20,
        reconnect_max_ms: 200,
        max_inflight: 20,
        tls: None,
        notifications: true,
        notification_topic: None,
        notifications_local_only: false,
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
    start_with_bridges(vec![mosquitto.bridge(topics)]).await
}

async fn start_with_bridges(bridges: Vec<BridgeConfig>) -> TestBroker {
    let mut settings = settings();
    settings.bridges = bridges;
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

/// Publishes `payload` to `topic` at QoS 1 from an MQTT client of `broker`
/// (not through the embedding API); the client is returned, to be kept
/// until its message has arrived.
async fn publish_from_client(broker: &TestBroker, topic: &str, payload: &'static str) -> Client {
    let publisher = Client::connect(mqtt_options(broker, "local-pub")).await;
    publisher
        .client
        .publish(topic, RQoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    publisher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_the_bridge_both_ways() {
    let mosquitto = Mosquitto::start("both-ways").await;
    let mut remote = remote_with_ready(&mosquitto).await;
    let broker = start_bridged(&mosquitto, &["out/# out 1", "in/# in 1"]).await;
    assert_carries_both_ways(&broker, &mosquitto, &mut remote).await;
    // From an MQTT client here too, not only from the embedding API.
    let _publisher = publish_from_client(&broker, "out/b", "from a client").await;
    let out = next_on(&mut remote, "out/b").await;
    assert_eq!(&out.payload[..], b"from a client");
    // Larger than rumqttc's default packet limit (10 KiB).
    let large = vec![b'x'; 50_000];
    publish_here(&broker, "out/large", large.clone()).await;
    assert_eq!(next_on(&mut remote, "out/large").await.payload, large);
    broker
        .wait_metrics("bridged both ways", |m| {
            m.bridge_messages_in >= 2 && m.bridge_messages_out >= 2
        })
        .await;
    broker.stop().await;
}

/// Publishes `payloads` at QoS 2 on `topic` to mosquitto, and returns
/// once mosquitto has completed every exchange (PUBCOMP).
async fn publish_qos2_on_remote(
    mosquitto: &Mosquitto,
    topic: &str,
    payloads: std::ops::Range<usize>,
) {
    let count = payloads.len();
    let mut options = mosquitto.options("remote-qos2-pub");
    // mosquitto takes 20 incoming QoS 2 messages at a time from a client
    // (`max_inflight_messages`) and drops the rest.
    options.set_inflight(10);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, count + 1);
    for n in payloads {
        client
            .publish(topic, RQoS::ExactlyOnce, false, n.to_string())
            .await
            .unwrap();
    }
    let deadline = Instant::now() + WAIT;
    let mut completed = 0;
    while completed < count {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubComp(_)))) => completed += 1,
            Ok(Ok(_)) => {}
            other => panic!("{completed} of {count} completed at mosquitto: {other:?}"),
        }
    }
}

/// A bridge with its default persistent remote session and `in/# in 2`,
/// and a local QoS 2 subscriber of `in/#` that has seen the bridge
/// subscribed (the retained `in/ready` came in).
async fn bringing_qos2_in(mosquitto: &Mosquitto) -> (TestBroker, Client) {
    bringing_qos2_in_through(mosquitto, mosquitto.port).await
}

/// As [`bringing_qos2_in`], the bridge connecting to `port` (a relay).
async fn bringing_qos2_in_through(mosquitto: &Mosquitto, port: u16) -> (TestBroker, Client) {
    let remote = remote_with_ready(mosquitto).await;
    let broker = start_with_bridges(vec![bridge_config("test", port, &["in/# in 2"])]).await;
    let mut local = Client::connect(mqtt_options(&broker, "local-qos2")).await;
    local.subscribe("in/#", RQoS::ExactlyOnce).await;
    next_on(&mut local, "in/ready").await;
    drop(remote.client.disconnect().await);
    (broker, local)
}

/// Receives on `topic` until every payload of `0..count` came, then for
/// [`QUIET`] more; asserts each came once, at QoS 2.
async fn assert_each_once_at_qos2(local: &mut Client, topic: &str, count: usize) {
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let deadline = Instant::now() + RESTART_WAIT;
    while seen.len() < count {
        let publish = tokio::time::timeout_at(deadline, next_on(local, topic))
            .await
            .unwrap_or_else(|_| panic!("{} of {count} arrived", seen.len()));
        assert_eq!(publish.qos, RQoS::ExactlyOnce, "QoS 2 end to end");
        *seen
            .entry(String::from_utf8_lossy(&publish.payload).into_owned())
            .or_default() += 1;
    }
    assert_eq!(count_quietly(local, topic).await, 0, "nothing more");
    let twice: Vec<_> = seen.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "brought in more than once: {twice:?}");
    let expected: HashSet<String> = (0..count).map(|n| n.to_string()).collect();
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_line_at_qos_2_is_exactly_once_end_to_end() {
    let mosquitto = Mosquitto::start("qos2-in").await;
    let (broker, mut local) = bringing_qos2_in(&mosquitto).await;
    publish_qos2_on_remote(&mosquitto, "in/n", 0..50).await;
    assert_each_once_at_qos2(&mut local, "in/n", 50).await;
    broker.stop().await;
}

/// An `out` line at QoS 2: local QoS 2 messages reach a QoS 2 subscriber
/// on mosquitto at QoS 2, each once (the bridge publishes them at QoS 2
/// and completes each exchange). 50 at once: more than the 20 QoS 2
/// messages mosquitto takes from a client at a time (it acknowledges and
/// drops the rest), which the bridge's `max_inflight` keeps to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_line_at_qos_2_is_exactly_once_end_to_end() {
    let mosquitto = Mosquitto::start("qos2-out").await;
    let mut remote = Client::connect(mosquitto.options("remote-qos2-sub")).await;
    remote.subscribe("out/#", RQoS::ExactlyOnce).await;
    let broker = start_bridged(&mosquitto, &["out/# out 2"]).await;
    let local = Client::connect(mqtt_options(&broker, "local-qos2-pub")).await;
    for n in 0..50 {
        local
            .client
            .publish("out/n", RQoS::ExactlyOnce, false, n.to_string())
            .await
            .unwrap();
    }
    assert_each_once_at_qos2(&mut remote, "out/n", 50).await;
    broker
        .wait_metrics("50 carried out", |m| m.bridge_messages_out == 50)
        .await;
    broker.stop().await;
}

/// The bridge logs in to a mosquitto that refuses anonymous clients with
/// its `client_id`, `username`, `password` and `clean_session`, as
/// mosquitto's log of the CONNECT shows, and carries both ways; a bridge
/// with a wrong password is refused there, keeps trying, and carries
/// nothing. mosquitto's one-topic lines (`""` as the pattern, the prefixes
/// as the topics) map `here/lamp` to `there/lamp` and back for
/// `there/switch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_logs_in_with_its_client_id_and_credentials() {
    let mosquitto = Mosquitto::start_with_users("login", &[("bridge-user", "s3cret")]).await;
    let mut remote = remote_with_ready(&mosquitto).await;
    remote.subscribe("there/lamp", RQoS::AtLeastOnce).await;
    remote.subscribe("intruder/#", RQoS::AtLeastOnce).await;
    let bridge = BridgeConfig {
        client_id: Some("site-7".to_owned()),
        username: Some("bridge-user".to_owned()),
        password: Some("s3cret".to_owned()),
        clean_session: true,
        ..mosquitto.bridge(&[
            "out/# out 1",
            "in/# in 1",
            "\"\" out 1 here/lamp there/lamp",
            "\"\" in 1 here/switch there/switch",
        ])
    };
    let intruder = BridgeConfig {
        client_id: Some("intruder".to_owned()),
        username: Some("bridge-user".to_owned()),
        password: Some("wrong".to_owned()),
        ..mosquitto.named_bridge("intruder", &["intruder/# out 1"])
    };
    let broker = start_with_bridges(vec![bridge, intruder]).await;
    publish_here(&broker, "intruder/x", "refused").await;
    assert_carries_both_ways(&broker, &mosquitto, &mut remote).await;
    // mosquitto: "New client connected from ADDR as ID (p2, c1, k60, u'USER')."
    let login = mosquitto.log_line("as site-7 (").await;
    assert!(
        login.contains("(p2, c1,") && login.contains("u'bridge-user'"),
        "MQTT 3.1.1, clean session, the user name: {login}"
    );

    carries_out_to(&broker, &mut remote, "here/lamp", "there/lamp").await;
    let mut local = Client::connect(mqtt_options(&broker, "local-switch")).await;
    local.subscribe("here/#", RQoS::AtLeastOnce).await;
    let remote_pub = Client::connect(mosquitto.options("remote-switch")).await;
    remote_pub
        .client
        .publish("there/switch", RQoS::AtLeastOnce, false, "on")
        .await
        .unwrap();
    expect_next(&mut local, "here/switch", "on").await;

    // Refused at every attempt; "intruder/x" never reached mosquitto.
    wait_for_log(&mosquitto, "disconnected, not authorised", 2).await;
    remote.assert_no_publish().await;
    broker.stop().await;
}

/// Between failed attempts the bridge waits `reconnect_min_ms`, doubling
/// up to `reconnect_max_ms`: a remote that accepts and at once closes
/// every connection sees attempts at least 100, then 200 ms apart (lower
/// bounds: a busy machine only stretches them), and the third to fifth
/// gaps, 400, 800 and 1600 ms uncapped, stay under 600 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_back_off_doubling_up_to_the_maximum() {
    let remote = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = remote.local_addr().unwrap().port();
    let bridge = BridgeConfig {
        reconnect_min_ms: 100,
        reconnect_max_ms: 200,
        ..bridge_config("backoff", port, &["t/# out 1"])
    };
    let broker = start_with_bridges(vec![bridge]).await;
    let mut attempts = Vec::new();
    while attempts.len() < 6 {
        let (socket, _) = timeout(WAIT, remote.accept()).await.unwrap().unwrap();
        attempts.push(Instant::now());
        drop(socket);
    }
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, at_least) in gaps.iter().zip([100, 200, 200, 200, 200]) {
        assert!(
            *gap >= Duration::from_millis(at_least - 5),
            "gaps {gaps:?}: one under {at_least} ms"
        );
    }
    assert!(
        gaps[2..]
            .iter()
            .all(|gap| *gap < Duration::from_millis(600)),
        "not capped at 200 ms: {gaps:?}"
    );
    broker.stop().await;
}

/// Several addresses, as mosquitto's `address a b`: the first one that
/// answers is used (a closed port is passed over), and when it is lost the
/// bridge moves to the next. Killed with SIGKILL, the first mosquitto
/// loses nothing the bridge had not yet carried: what is published while
/// it is down reaches the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_with_several_addresses_fails_over_to_the_next() {
    let mut first = Mosquitto::start("failover-1").await;
    let second = Mosquitto::start("failover-2").await;
    let closed = mosquitto_port();
    let mut on_first = Client::connect(first.options("watch-1")).await;
    on_first.subscribe("fo/#", RQoS::AtLeastOnce).await;
    let mut on_second = Client::connect(second.options("watch-2")).await;
    on_second.subscribe("fo/#", RQoS::AtLeastOnce).await;
    let bridge = BridgeConfig {
        address: format!(
            "127.0.0.1:{closed} 127.0.0.1:{} 127.0.0.1:{}",
            first.port, second.port
        ),
        ..bridge_config("failover", first.port, &["fo/# out 1"])
    };
    let broker = start_with_bridges(vec![bridge]).await;
    carries_out(&broker, &mut on_first, "fo/one").await;
    first.kill().await;
    // Published while the bridge finds the first gone: queued, then
    // carried to the second.
    carries_out(&broker, &mut on_second, "fo/two").await;
    let log = second.log_line(" as tidemq-bridge-failover ").await;
    assert!(log.contains("New client connected"), "{log}");
    broker
        .wait_metrics("the bridge reconnected", |m| m.bridge_reconnects >= 1)
        .await;
    broker.stop().await;
}

// The remote keeps the bridge's session through a restart and resumes the
// QoS 2 exchanges it had open with it: resent PUBLISHes (DUP) and PUBRELs
// on the new connection [MQTT-4.4.0-1]. Each message still comes in once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_2_comes_in_exactly_once_across_a_remote_restart() {
    let mut mosquitto = Mosquitto::start("qos2-restart").await;
    let (broker, mut local) = bringing_qos2_in(&mosquitto).await;
    publish_qos2_on_remote(&mosquitto, "in/n", 0..100).await;
    // SIGTERM: mosquitto saves its sessions, open exchanges included.
    mosquitto.end("-TERM").await;
    mosquitto.run().await;
    publish_qos2_on_remote(&mosquitto, "in/n", 100..200).await;
    assert_each_once_at_qos2(&mut local, "in/n", 200).await;
    broker
        .wait_metrics("the bridge reconnected", |m| m.bridge_reconnects >= 1)
        .await;
    broker.stop().await;
}

/// Which way a packet goes through a [`Relay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Towards {
    Remote,
    Bridge,
}

type Armed = Arc<Mutex<Option<(Towards, u8)>>>;

/// A TCP relay between the bridge and mosquitto that loses a connection at
/// a chosen packet: it passes whole packets both ways, and the next packet
/// of the armed type going the armed way is dropped and ends the
/// connection on both sides, as a network failure at that point would.
struct Relay {
    port: u16,
    armed: Armed,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed: Armed = Arc::default();
        let cut = armed.clone();
        tokio::spawn(async move {
            while let Ok((bridge, _)) = listener.accept().await {
                let Ok(remote) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (bridge_in, bridge_out) = bridge.into_split();
                let (remote_in, remote_out) = remote.into_split();
                let cut = cut.clone();
                tokio::spawn(async move {
                    // Either way ending ends both: the sockets drop.
                    tokio::select! {
                        _ = pass(bridge_in, remote_out, Towards::Remote, cut.clone()) => {}
                        _ = pass(remote_in, bridge_out, Towards::Bridge, cut) => {}
                    }
                });
            }
        });
        Relay { port, armed }
    }

    /// Loses the connection at the next packet of `packet_type` (the high
    /// nibble of its first byte: 5 PUBREC, 6 PUBREL) going `towards`.
    fn arm(&self, towards: Towards, packet_type: u8) {
        *self.armed.lock().unwrap() = Some((towards, packet_type));
    }

    fn fired(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }
}

/// Passes whole packets from `from` to `to` until either ends or the armed
/// packet comes.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    towards: Towards,
    armed: Armed,
) {
    let framer = tidemq_protocol::Framer::new(1 << 21);
    let mut buf = bytes::BytesMut::new();
    loop {
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let frame = match framer.next_frame(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return,
            };
            let packet_type = frame.bytes[0] >> 4;
            {
                let mut armed = armed.lock().unwrap();
                if *armed == Some((towards, packet_type)) {
                    *armed = None;
                    return;
                }
            }
            if to.write_all(&frame.bytes).await.is_err() {
                return;
            }
        }
    }
}

/// Publishes 20 QoS 2 messages on mosquitto with the relay armed to cut
/// the bridge's connection at the first `packet_type` going `towards`, then
/// 20 more; asserts each of the 40 comes in once, at QoS 2. The second 20
/// show the connections after the cut work: they may be the first to
/// carry anything new, the first 20 having all been sent before the cut.
async fn assert_exactly_once_across_a_cut(towards: Towards, packet_type: u8) {
    let mosquitto = Mosquitto::start(&format!("qos2-cut-{packet_type}")).await;
    let relay = Relay::start(mosquitto.port).await;
    let (broker, mut local) = bringing_qos2_in_through(&mosquitto, relay.port).await;
    relay.arm(towards, packet_type);
    publish_qos2_on_remote(&mosquitto, "in/n", 0..20).await;
    publish_qos2_on_remote(&mosquitto, "in/n", 20..40).await;
    assert_each_once_at_qos2(&mut local, "in/n", 40).await;
    assert!(relay.fired(), "the connection was cut");
    broker
        .wait_metrics("the bridge reconnected", |m| m.bridge_reconnects >= 1)
        .await;
    broker.stop().await;
}

// The remote sent PUBREL and the connection was lost with it: the remote
// sends it again on the next connection [MQTT-4.4.0-1], and the bridge
// must complete it (PUBCOMP) rather than fail that connection and every
// one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubrel_lost_with_the_connection_is_completed_on_the_next() {
    assert_exactly_once_across_a_cut(Towards::Bridge, 6).await;
}

// The bridge's PUBREC was lost with the connection: the remote sends the
// PUBLISH again (DUP) on the next one, which is acknowledged again and
// not brought in twice ([MQTT-4.3.3-2] in 3.1.1, which the bridge speaks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubrec_lost_with_the_connection_does_not_bring_the_message_in_twice() {
    assert_exactly_once_across_a_cut(Towards::Remote, 5).await;
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
    publish_here(&broker, "out/0", "0").await;
    collect_until(&mut received, &mut seen, 1, WAIT).await;

    for n in 1..100 {
        let payload = n.to_string();
        publish_here(&broker, "out/n", payload).await;
    }
    collect_until(&mut received, &mut seen, 100, WAIT).await;
    // The second half goes to a mosquitto that takes it and acknowledges
    // nothing, then dies with it: the bridge must send it again.
    mosquitto.freeze();
    for n in 100..200 {
        let payload = n.to_string();
        publish_here(&broker, "out/n", payload).await;
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

    let _publisher = publish_from_client(&broker, "loop/x", "once").await;
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

/// The next PUBLISH `client` receives, which must be `payload` on `topic`.
async fn expect_next(client: &mut Client, topic: &str, payload: &str) -> rumqttc::Publish {
    let publish = client.next_publish().await;
    assert_eq!(
        (publish.topic.as_str(), &publish.payload[..]),
        (topic, payload.as_bytes()),
        "expected {payload:?} on {topic}"
    );
    publish
}

/// Publishes `payload` on `topic` here at QoS 1, from embedding code.
async fn publish_here(broker: &TestBroker, topic: &str, payload: impl Into<bytes::Bytes>) {
    broker
        .broker()
        .publish(topic, payload, QoS::AtLeastOnce, false)
        .await
        .unwrap();
}

/// Publishes on `topic` here (its name as the payload) and asserts it is
/// the next thing `remote` receives.
async fn carries_out(broker: &TestBroker, remote: &mut Client, topic: &str) {
    carries_out_to(broker, remote, topic, topic).await;
}

/// Publishes on `topic` here (its name as the payload) and asserts it is
/// the next thing `remote` receives, on `remote_topic`.
async fn carries_out_to(broker: &TestBroker, remote: &mut Client, topic: &str, remote_topic: &str) {
    publish_here(broker, topic, topic.to_owned()).await;
    expect_next(remote, remote_topic, topic).await;
}

/// With `remote` subscribed to `out/#` and `in/#` on mosquitto, and
/// `in/ready` retained there before the bridge started: the retained
/// message comes in once the bridge has subscribed, a live one follows, and
/// one published here goes out.
async fn assert_carries_both_ways(broker: &TestBroker, mosquitto: &Mosquitto, remote: &mut Client) {
    let mut local = Client::connect(mqtt_options(broker, "local-sub")).await;
    local.subscribe("in/#", RQoS::AtLeastOnce).await;
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
    publish_here(broker, "out/a", "from tidemq").await;
    assert_eq!(&next_on(remote, "out/a").await.payload[..], b"from tidemq");
}

/// A subscriber on mosquitto to `out/#` and `in/#`, with `in/ready`
/// retained there.
async fn remote_with_ready(mosquitto: &Mosquitto) -> Client {
    let mut remote = Client::connect(mosquitto.options("remote-sub")).await;
    remote.subscribe("out/#", RQoS::AtLeastOnce).await;
    remote.subscribe("in/#", RQoS::AtLeastOnce).await;
    retain_on_remote(mosquitto, &mut remote, "in/ready").await;
    remote
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_a_tls_bridge_both_ways() {
    let pki = Pki::new("bridge-tls");
    let mosquitto = Mosquitto::start_tls("tls", &pki, false).await;
    let mut remote = remote_with_ready(&mosquitto).await;
    // The server certificate is checked against the address's 127.0.0.1.
    let bridge = mosquitto.tls_bridge(&["out/# out 1", "in/# in 1"], &pki, "ca.pem");
    let broker = start_with_bridges(vec![bridge]).await;
    assert_carries_both_ways(&broker, &mosquitto, &mut remote).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_cert_file_and_key_file() {
    let pki = Pki::new("bridge-mutual-tls");
    let mosquitto = Mosquitto::start_tls("mutual-tls", &pki, true).await;
    let mut remote = remote_with_ready(&mosquitto).await;
    remote.subscribe("anonymous/#", RQoS::AtLeastOnce).await;
    let mut with_cert = mosquitto.tls_bridge(&["out/# out 1", "in/# in 1"], &pki, "ca.pem");
    let tls = with_cert.tls.as_mut().unwrap();
    tls.cert_file = Some(pki.path("client.pem"));
    tls.key_file = Some(pki.path("client.key"));
    // Checked against this name instead of the address's 127.0.0.1.
    tls.server_name = Some("localhost".to_owned());
    // The same CA, no certificate of its own: mosquitto turns it away.
    let without_cert = BridgeConfig {
        name: "anonymous".to_owned(),
        topics: vec!["anonymous/# out 1".to_owned()],
        ..mosquitto.tls_bridge(&[], &pki, "ca.pem")
    };
    let broker = start_with_bridges(vec![with_cert, without_cert]).await;
    publish_here(&broker, "anonymous/x", "refused").await;
    assert_carries_both_ways(&broker, &mosquitto, &mut remote).await;
    // The one without was turned away, twice at least: it keeps trying.
    wait_for_log(&mosquitto, "peer did not return a certificate", 2).await;
    remote.assert_no_publish().await;
    broker.stop().await;
}

/// Waits until `count` lines of mosquitto's log contain `text`.
async fn wait_for_log(mosquitto: &Mosquitto, text: &str, count: usize) {
    let deadline = Instant::now() + WAIT;
    while mosquitto.log_lines(text) < count {
        assert!(
            Instant::now() < deadline,
            "fewer than {count} log lines with {text:?}; mosquitto's log:\n{}",
            mosquitto.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_trusting_another_ca_carries_nothing_and_keeps_trying() {
    let pki = Pki::new("bridge-other-ca");
    let mosquitto = Mosquitto::start_tls("other-ca", &pki, false).await;
    let mut remote = Client::connect(mosquitto.options("remote-sub")).await;
    remote.subscribe("out/#", RQoS::AtLeastOnce).await;
    remote
        .subscribe("$SYS/broker/connection/#", RQoS::AtLeastOnce)
        .await;
    let bridge = mosquitto.tls_bridge(&["out/# out 1"], &pki, "other-ca.pem");
    let broker = start_with_bridges(vec![bridge]).await;
    publish_here(&broker, "out/x", "never").await;
    // Mosquitto logs every connection to its TLS listener (before the
    // handshake): the bridge keeps trying.
    let tls_connections = format!("on port {}.", mosquitto.tls_port);
    wait_for_log(&mosquitto, &tls_connections, 3).await;
    // Neither the message nor a "1" notification got through.
    remote.assert_no_publish().await;
    assert_eq!(broker.metrics().bridge_messages_out, 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_file_that_does_not_load_stops_the_start() {
    let pki = Pki::new("bridge-bad-file");
    let mut settings = settings();
    let mut bridge = bridge_config("hq", 1, &["a/# out 1"]);
    bridge.tls = Some(BridgeTls {
        ca_file: pki.path("missing-ca.pem"),
        cert_file: None,
        key_file: None,
        server_name: None,
        insecure: false,
    });
    settings.bridges = vec![bridge.clone()];
    settings.validate().unwrap();
    let error = Broker::start(settings.clone()).await.unwrap_err();
    assert_eq!(error.exit_code(), 2);
    assert!(error.to_string().contains("missing-ca.pem"), "{error}");
    let checked = tidemq::check_config(&settings).unwrap_err();
    assert!(checked.to_string().contains("missing-ca.pem"), "{checked}");
    // A key file without a key is named as well.
    bridge.tls = Some(BridgeTls {
        ca_file: pki.path("ca.pem"),
        cert_file: Some(pki.path("client.pem")),
        key_file: Some(pki.path("client.pem")),
        server_name: None,
        insecure: false,
    });
    settings.bridges = vec![bridge];
    let error = Broker::start(settings).await.unwrap_err();
    assert_eq!(error.exit_code(), 2);
    let message = error.to_string();
    assert!(
        message.contains("client.pem") && message.contains("private key"),
        "{message}"
    );
}

/// A broker on a runtime of its own, ended as a crash would end it: the
/// runtime goes with every task, so every socket closes without a
/// DISCONNECT.
struct Crashable {
    port: u16,
    crash: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Crashable {
    async fn start(settings: Settings) -> Crashable {
        let (ready, started) = oneshot::channel();
        let (crash, crashed) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let broker = TestBroker::start_with(settings).await;
                let _ = ready.send(broker.port());
                let _ = crashed.await;
                // Not stopped: it goes with the runtime.
                drop(broker);
            });
            runtime.shutdown_timeout(WAIT);
        });
        let port = timeout(WAIT, started).await.unwrap().unwrap();
        Crashable {
            port,
            crash,
            thread,
        }
    }

    async fn crash(self) {
        let _ = self.crash.send(());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
    }
}

/// `payload` is retained on `topic` in the broker on `port`: a new
/// subscriber gets it with the retain flag. (A subscriber that was there
/// before it was published got it live, without the flag
/// [MQTT-3.3.1-9], so it cannot tell.)
async fn assert_retained_here(port: u16, topic: &str, payload: &str) {
    let options = MqttOptions::new("late-local-watcher", "127.0.0.1", port);
    let mut late = Client::connect(options).await;
    late.subscribe(topic, RQoS::AtLeastOnce).await;
    let retained = expect_next(&mut late, topic, payload).await;
    assert!(retained.retain, "{topic} {payload:?} retained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_say_1_on_both_sides_and_the_will_says_0() {
    let mosquitto = Mosquitto::start("notify-will").await;
    let mut remote = Client::connect(mosquitto.options("remote-watcher")).await;
    remote
        .subscribe("$SYS/broker/connection/#", RQoS::AtLeastOnce)
        .await;
    let mut settings = settings();
    settings.bridges = vec![mosquitto.bridge(&["out/# out 1"])];
    let tidemq = Crashable::start(settings).await;
    let topic = state_topic("test");
    expect_next(&mut remote, &topic, "1").await;

    let options = MqttOptions::new("local-watcher", "127.0.0.1", tidemq.port);
    let mut local = Client::connect(options).await;
    local
        .subscribe("$SYS/broker/connection/+/state", RQoS::AtLeastOnce)
        .await;
    expect_next(&mut local, &topic, "1").await;
    assert_retained_here(tidemq.port, &topic, "1").await;

    tidemq.crash().await;
    expect_next(&mut remote, &topic, "0").await;
    // Retained on mosquitto, for whoever asks next.
    let mut late = Client::connect(mosquitto.options("late-watcher")).await;
    late.subscribe(&topic, RQoS::AtLeastOnce).await;
    assert!(expect_next(&mut late, &topic, "0").await.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_local_only_say_1_here_and_nothing_on_the_remote() {
    let mosquitto = Mosquitto::start("notify-local").await;
    let mut remote = Client::connect(mosquitto.options("remote-watcher")).await;
    remote
        .subscribe("$SYS/broker/connection/#", RQoS::AtLeastOnce)
        .await;
    remote.subscribe("out/#", RQoS::AtLeastOnce).await;
    let mut settings = settings();
    let mut bridge = mosquitto.bridge(&["out/# out 1"]);
    bridge.notifications_local_only = true;
    settings.bridges = vec![bridge];
    let tidemq = Crashable::start(settings).await;
    let topic = state_topic("test");
    let options = MqttOptions::new("local-watcher", "127.0.0.1", tidemq.port);
    let mut local = Client::connect(options).await;
    local.subscribe(&topic, RQoS::AtLeastOnce).await;
    expect_next(&mut local, &topic, "1").await;
    assert_retained_here(tidemq.port, &topic, "1").await;

    // The bridge sends its "1" to the remote before anything else after
    // a CONNACK: what comes first shows it sent none.
    let publisher = Client::connect(MqttOptions::new("local-pub", "127.0.0.1", tidemq.port)).await;
    publisher
        .client
        .publish("out/first", RQoS::AtLeastOnce, false, "out/first")
        .await
        .unwrap();
    expect_next(&mut remote, "out/first", "out/first").await;

    // No will on the remote either: once mosquitto is done with the
    // bridge's connection, nothing is retained on the topic. Taking over
    // the bridge's client id makes sure it is done: either it saw the
    // crash or it closes the old connection now (a takeover), and a
    // will would be published either way. (Its log line for a lost
    // connection is not a safe signal: one CI run never logged it.)
    tidemq.crash().await;
    let _takeover = Client::connect(mosquitto.options("tidemq-bridge-test")).await;
    let mut late = Client::connect(mosquitto.options("late-watcher")).await;
    late.subscribe(&topic, RQoS::AtLeastOnce).await;
    assert_eq!(count_quietly(&mut late, &topic).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_says_0_here_and_the_next_one_1() {
    let mut mosquitto = Mosquitto::start("notify-loss").await;
    let mut remote = Client::connect(mosquitto.options("remote-watcher")).await;
    remote.subscribe("bridges/#", RQoS::AtLeastOnce).await;
    let mut bridge = mosquitto.bridge(&["out/# out 1"]);
    bridge.notification_topic = Some("bridges/test".to_owned());
    let broker = start_with_bridges(vec![bridge]).await;
    expect_next(&mut remote, "bridges/test", "1").await;
    let mut local = Client::connect(mqtt_options(&broker, "local-watcher")).await;
    local.subscribe("bridges/#", RQoS::AtLeastOnce).await;
    expect_next(&mut local, "bridges/test", "1").await;

    mosquitto.kill().await;
    expect_next(&mut local, "bridges/test", "0").await;
    mosquitto.run().await;
    expect_next(&mut local, "bridges/test", "1").await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_starts_added_bridges_stops_removed_ones_and_keeps_the_rest() {
    let mosquitto = Mosquitto::start("reload").await;
    let mut remote = Client::connect(mosquitto.options("remote-sub")).await;
    for filter in ["keep/#", "gone/#", "more/#", "$SYS/broker/connection/#"] {
        remote.subscribe(filter, RQoS::AtLeastOnce).await;
    }
    let remote_pub = Client::connect(mosquitto.options("remote-pub")).await;
    let keep = mosquitto.named_bridge("keep", &["keep/# out 1"]);
    let gone = mosquitto.named_bridge("gone", &["gone/# out 1", "back/# in 1"]);
    let mut settings = settings();
    settings.bridges = vec![keep.clone()];
    let broker = TestBroker::start_with(settings.clone()).await;
    let mut local = Client::connect(mqtt_options(&broker, "local-sub")).await;
    local.subscribe("back/#", RQoS::AtLeastOnce).await;
    expect_next(&mut remote, &state_topic("keep"), "1").await;
    carries_out(&broker, &mut remote, "keep/1").await;

    // Added: connected (its `in` subscription made before the "1") and
    // carrying both ways.
    settings.bridges = vec![keep.clone(), gone];
    settings.validate().unwrap();
    broker.broker().reload(&settings).await;
    expect_next(&mut remote, &state_topic("gone"), "1").await;
    carries_out(&broker, &mut remote, "gone/1").await;
    remote_pub
        .client
        .publish("back/1", RQoS::AtLeastOnce, false, "in")
        .await
        .unwrap();
    expect_next(&mut local, "back/1", "in").await;

    // Removed: "0" and DISCONNECT on the remote, nothing carried after.
    settings.bridges = vec![keep.clone()];
    broker.broker().reload(&settings).await;
    expect_next(&mut remote, &state_topic("gone"), "0").await;
    publish_here(&broker, "gone/2", "after").await;
    remote_pub
        .client
        .publish("back/2", RQoS::AtLeastOnce, false, "after")
        .await
        .unwrap();
    // Nothing either way; and `keep`, unchanged, said neither "0" nor "1".
    remote.assert_no_publish().await;
    local.assert_no_publish().await;
    carries_out(&broker, &mut remote, "keep/2").await;

    // Changed: stopped, then started with its new lines.
    let changed = BridgeConfig {
        topics: vec!["keep/# out 1".to_owned(), "more/# out 1".to_owned()],
        ..keep
    };
    settings.bridges = vec![changed];
    broker.broker().reload(&settings).await;
    expect_next(&mut remote, &state_topic("keep"), "0").await;
    expect_next(&mut remote, &state_topic("keep"), "1").await;
    carries_out(&broker, &mut remote, "more/1").await;
    broker.stop().await;
}

/// QoS 1 messages published here while the remote cannot take them: more
/// than the bridge's `max_inflight` (20), so some are in flight to the remote and
/// the rest wait in the bridge's queue.
const HELD_BACK: usize = 150;

/// The bridge's local session as `GET /api/clients` lists it, if it does.
async fn bridge_session(broker: &TestBroker, name: &str) -> Option<serde_json::Value> {
    let http = broker.broker().http_addr().expect("http listener on");
    // `$embedded-bridge/<name>`, percent-encoded.
    let path = format!("/api/clients?q=%24embedded-bridge%2F{name}");
    let page = get(http, &path).await.json();
    page["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|client| client["client_id"] == format!("$embedded-bridge/{name}"))
        .cloned()
}

/// Waits until the bridge's session has `queued` deliveries in its queue.
async fn wait_queued(broker: &TestBroker, name: &str, queued: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let session = bridge_session(broker, name).await;
        let now = session.as_ref().and_then(|s| s["queued"].as_u64());
        if now == Some(queued) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the bridge's queue never held {queued}: {session:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes `out/n` for each `n` in `range` from a local MQTT client,
/// each acknowledged (PUBACK) before the next.
async fn publish_acked_out(broker: &TestBroker, client_id: &str, range: std::ops::Range<usize>) {
    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new(client_id)).await;
    for n in range {
        let packet_id = u16::try_from(n % 60_000 + 1).unwrap();
        publisher
            .publish_acked(
                "out/n",
                QoS::AtLeastOnce,
                packet_id,
                n.to_string().as_bytes(),
                false,
            )
            .await;
    }
}

/// Settings with an HTTP listener (for the admin API) and `bridges`.
fn settings_with_http(bridges: Vec<BridgeConfig>) -> Settings {
    let mut settings = settings();
    settings.http.bind = "127.0.0.1:0".to_owned();
    settings.bridges = bridges;
    settings.validate().unwrap();
    settings
}

/// A broker bridged to `mosquitto` with `out/# out 1`, an HTTP listener,
/// and a persistent collector on mosquitto that has already received
/// message "0" through the bridge.
struct Carrying {
    received: mpsc::UnboundedReceiver<String>,
    bridge: BridgeConfig,
    settings: Settings,
    broker: TestBroker,
    seen: HashSet<String>,
}

async fn carrying_out(mosquitto: &Mosquitto) -> Carrying {
    let mut options = mosquitto.options("collector");
    options.set_clean_session(false);
    let mut received = collector(options, "out/#");
    let bridge = mosquitto.bridge(&["out/# out 1"]);
    let settings = settings_with_http(vec![bridge.clone()]);
    let broker = TestBroker::start_with(settings.clone()).await;
    let subscribed = timeout(WAIT, received.recv()).await.unwrap().unwrap();
    assert_eq!(subscribed, SUBSCRIBED);
    let mut seen = HashSet::new();
    publish_acked_out(&broker, "local-pub-0", 0..1).await;
    collect_until(&mut received, &mut seen, 1, WAIT).await;
    Carrying {
        received,
        bridge,
        settings,
        broker,
        seen,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_bridge_loses_nothing_queued_or_in_flight() {
    let mut mosquitto = Mosquitto::start("reload-changed").await;
    let Carrying {
        mut received,
        bridge,
        mut settings,
        broker,
        mut seen,
    } = carrying_out(&mosquitto).await;

    // Mosquitto takes nothing more: the bridge's window fills (its
    // publishes sit unread in mosquitto's socket), the rest stays queued.
    mosquitto.freeze();
    publish_acked_out(&broker, "local-pub", 1..HELD_BACK + 1).await;
    let in_flight = usize::from(bridge.max_inflight);
    wait_queued(&broker, "test", (HELD_BACK - in_flight) as u64).await;

    // Changed: the old bridge task stops, the new one resumes its session.
    settings.bridges = vec![BridgeConfig {
        reconnect_max_ms: 300,
        ..bridge
    }];
    broker.broker().reload(&settings).await;
    let session = bridge_session(&broker, "test")
        .await
        .expect("the session stays");
    assert_eq!(session["persistent"], true, "{session}");

    // What mosquitto read of the old connection dies with it: the resumed
    // session must send its window again, then its queue.
    mosquitto.kill().await;
    mosquitto.run().await;
    collect_until(&mut received, &mut seen, HELD_BACK + 1, RESTART_WAIT).await;
    let expected: HashSet<String> = (0..=HELD_BACK).map(|n| n.to_string()).collect();
    assert_eq!(seen, expected);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_bridge_takes_its_session_and_queue_with_it() {
    let mut mosquitto = Mosquitto::start("reload-removed").await;
    let Carrying {
        mut received,
        bridge,
        mut settings,
        broker,
        seen: _,
    } = carrying_out(&mosquitto).await;

    // Queued for the bridge (in flight to a mosquitto that reads nothing),
    // then the bridge is removed: its session goes with what it held.
    mosquitto.freeze();
    publish_acked_out(&broker, "local-pub-1", 1..2).await;
    settings.bridges = Vec::new();
    broker.broker().reload(&settings).await;
    assert_eq!(bridge_session(&broker, "test").await, None);
    // Nobody subscribes to it here now.
    publish_acked_out(&broker, "local-pub-2", 2..3).await;

    // Added again: a new session, which carries only what follows.
    settings.bridges = vec![bridge];
    broker.broker().reload(&settings).await;
    let session = bridge_session(&broker, "test")
        .await
        .expect("a new session");
    assert_eq!(session["queued"], 0, "{session}");
    publish_acked_out(&broker, "local-pub-3", 3..4).await;
    mosquitto.kill().await;
    mosquitto.run().await;
    let first = timeout(RESTART_WAIT, received.recv())
        .await
        .expect("the message published after the bridge came back")
        .unwrap();
    assert_eq!(first, "3", "only what followed the new session arrives");
    assert!(
        timeout(QUIET, received.recv()).await.is_err(),
        "nothing else arrives"
    );
    broker.stop().await;
}
