#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A bridge's local session across a restart of the `tidemq` process with
//! `storage.enabled`: QoS 1 messages acknowledged to their publisher while
//! the remote (a real mosquitto, Debian package `mosquitto`) was down
//! reach a subscriber on mosquitto once both are back, every one of them,
//! after a SIGTERM and after a SIGKILL (PUBACK waits for the store's
//! fsync, `storage.sync = "batch"`). A restart whose config no longer has
//! the bridge discards its stored session. (Reloads: tests/tests/28_bridge.rs;
//! the harness: tests/support/.)

mod support;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidemq_protocol::QoS;

use support::*;

/// QoS 1 messages published while the remote is down: more than the
/// bridge's `max_inflight` (20), so some were taken by the bridge task when the
/// broker stopped and the rest were still queued.
const HELD_BACK: usize = 150;

/// A mosquitto on a free port, its persistence file in a directory of its
/// own; killed and its directory removed when dropped.
struct Mosquitto {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Writes its config; [`Mosquitto::run`] starts it.
    fn new(name: &str) -> Mosquitto {
        let port = mosquitto_port();
        let dir = std::env::temp_dir().join(format!(
            "tidemq-bridge-restart-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Run as root, mosquitto drops to its own user, which must be able
        // to write its persistence file here.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config).unwrap();
        Mosquitto {
            port,
            dir,
            child: None,
        }
    }

    /// Starts it and waits for its `running` line (its listener is open;
    /// a connect alone would not tell whether mosquitto or a taker of its
    /// port answers).
    fn run(&mut self) {
        let log_path = self.dir.join("mosquitto.log");
        let running = || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .matches(" running")
                .count()
        };
        let before = running();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot run mosquitto: install the mosquitto package, CI does");
        let child = self.child.insert(child);
        let deadline = Instant::now() + WAIT;
        while running() == before {
            assert!(
                child.try_wait().unwrap().is_none(),
                "mosquitto exited: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait for the exit: it saves its sessions first.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(10));
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

/// A config file in `dir` with one listener (the harness replaces its
/// address) and, when `bridged`, a bridge `hq` carrying `out/#` at QoS 1
/// to `remote_port`.
fn write_config(dir: &Path, remote_port: u16, bridged: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = "[[listener]]\nbind = \"127.0.0.1:1\"\n".to_owned();
    if bridged {
        text.push_str(&format!(
            "[[bridge]]\nname = \"hq\"\naddress = \"127.0.0.1:{remote_port}\"\n\
             topics = [\"out/# out 1\"]\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n"
        ));
    }
    let path = dir.join("tidemq.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(store: &TempDir, config: &Path) -> Broker {
    Broker::start_with_args(
        store.path(),
        &[("TIDEMQ_STORAGE__SYNC", "batch")],
        &["-c", config.to_str().unwrap()],
    )
}

/// Leaves a persistent session on mosquitto subscribed to `out/#`, then
/// stops mosquitto (which saves it): the remote is down.
fn subscribe_on_remote_and_stop_it(mosquitto: &mut Mosquitto) {
    mosquitto.run();
    let (mut collector, _) = Client::connect(mosquitto.port, &v311("collector", false));
    collector.subscribe(1, &[("out/#", QoS::AtLeastOnce)]);
    collector.disconnect();
    mosquitto.stop();
}

/// Publishes `out/n` for `n` in `0..count` at QoS 1, each PUBACKed.
fn publish_acked_out(port: u16, count: usize) {
    let (mut publisher, _) = Client::connect(port, &v311("local-pub", true));
    for n in 0..count {
        let packet_id = u16::try_from(n + 1).unwrap();
        publisher.publish_acked(
            "out/n",
            QoS::AtLeastOnce,
            packet_id,
            n.to_string().as_bytes(),
            false,
        );
    }
}

/// The collector's session on mosquitto, resumed: every payload it gets
/// until it has `count` different ones (each PUBACKed), or none for
/// [`WAIT`].
fn collect(mosquitto: &Mosquitto, count: usize) -> HashSet<String> {
    let (mut collector, connack) = Client::connect(mosquitto.port, &v311("collector", false));
    assert!(
        connack.session_present,
        "mosquitto kept the collector's session"
    );
    let mut seen = HashSet::new();
    while seen.len() < count {
        let Some(frame) = collector.recv_within(WAIT) else {
            break;
        };
        let tidemq_protocol::Outgoing::Publish(publish) = collector.decode(&frame) else {
            continue;
        };
        if let Some(packet_id) = publish.packet_id {
            collector.ack(PUBACK, packet_id.get());
        }
        seen.insert(String::from_utf8(publish.payload.to_vec()).unwrap());
    }
    seen
}

/// Everything `publish_acked_out` sent.
fn all(count: usize) -> HashSet<String> {
    (0..count).map(|n| n.to_string()).collect()
}

/// The bridge's first failed attempt: its local subscription is in place
/// (it is made before the bridge task starts), so what is published now is
/// the bridge's to carry.
fn wait_bridge_started(broker: &Broker) {
    broker
        .stdout
        .wait_for("bridge: cannot connect; retrying", WAIT)
        .expect("the bridge to try the remote");
}

/// Publishes while the remote is down, ends the broker with `end`, starts
/// it again on the same store and brings the remote back: mosquitto's
/// subscriber must get every message.
fn survives(name: &str, end: impl FnOnce(Broker)) {
    let store = TempDir::new(name);
    let mut mosquitto = Mosquitto::new(name);
    subscribe_on_remote_and_stop_it(&mut mosquitto);
    let config = write_config(store.path(), mosquitto.port, true);
    let broker = start(&store, &config);
    wait_bridge_started(&broker);
    publish_acked_out(broker.port, HELD_BACK);
    end(broker);

    let broker = start(&store, &config);
    let recovered = broker.recovered();
    assert_eq!(field(&recovered, "sessions"), 1, "{recovered}");
    assert_eq!(
        field(&recovered, "queued") + field(&recovered, "inflight"),
        HELD_BACK as u64,
        "{recovered}"
    );
    mosquitto.run();
    let seen = collect(&mosquitto, HELD_BACK);
    assert_eq!(
        seen,
        all(HELD_BACK),
        "{} of {HELD_BACK} arrived",
        seen.len()
    );
    broker.stop();
}

#[test]
fn a_bridge_resumes_what_it_had_not_delivered_after_sigterm() {
    survives("bridge-term", |broker| {
        broker.stop();
    });
}

#[test]
fn a_bridge_resumes_what_it_had_not_delivered_after_sigkill() {
    survives("bridge-kill", Broker::crash);
}

/// Once delivered, nothing is sent again after a restart (the bridge wrote
/// each delivery done when mosquitto acknowledged it); a restart without
/// the bridge in the config drops its stored session.
#[test]
fn what_the_remote_acknowledged_is_not_resent_and_a_removed_bridge_is_forgotten() {
    let store = TempDir::new("bridge-done");
    let mut mosquitto = Mosquitto::new("bridge-done");
    subscribe_on_remote_and_stop_it(&mut mosquitto);
    let config = write_config(store.path(), mosquitto.port, true);
    let broker = start(&store, &config);
    wait_bridge_started(&broker);
    mosquitto.run();
    broker
        .stdout
        .wait_for("bridge connected", WAIT)
        .expect("the bridge to connect");
    publish_acked_out(broker.port, 3);
    assert_eq!(collect(&mosquitto, 3), all(3));
    broker.stop();

    let broker = start(&store, &config);
    let recovered = broker.recovered();
    assert_eq!(field(&recovered, "sessions"), 1, "{recovered}");
    assert_eq!(field(&recovered, "queued"), 0, "{recovered}");
    assert_eq!(field(&recovered, "inflight"), 0, "{recovered}");
    broker.stop();

    let without = write_config(store.path(), mosquitto.port, false);
    let broker = start(&store, &without);
    broker
        .stdout
        .wait_for(
            "the session of a bridge no longer configured is discarded",
            WAIT,
        )
        .expect("the stale bridge session discarded");
    broker.stop();
    let broker = start(&store, &without);
    let recovered = broker.recovered();
    assert_eq!(field(&recovered, "sessions"), 0, "{recovered}");
    broker.stop();
}
