#![allow(clippy::unwrap_used, clippy::expect_used)]
//! SIGHUP, through the `tidemq` process: the password file and the
//! listeners change while clients stay connected. A user added to the file
//! gets in and a removed one is refused, a listener added to the config is
//! bound and one removed stops accepting while its connections stay, a
//! `[limits]` change is named as needing a restart, nothing connected
//! is dropped, and a new `log.level` takes effect. (The harness: tests/support/.)

mod support;

use std::path::Path;
use std::process::Command;

use support::{free_port, publish, v311, v5, Broker, Client, TempDir, WAIT};
use tidemq_protocol::{Outgoing, QoS, ReasonCode};

fn tidemq_passwd(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_tidemq"))
        .arg("passwd")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tidemq passwd {args:?}: {stderr}");
}

/// Whether `mosquitto_pub` as `user` gets in (it exits 0 only after a
/// CONNACK 0 and its PUBLISH).
fn logs_in(port: u16, user: &str, password: &str) -> bool {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            user,
            "-P",
            password,
        ])
        .args(["-t", "reload/check", "-m", "x"])
        .status()
        .expect("mosquitto_pub (Debian package mosquitto-clients)")
        .success()
}

/// The reason code of the PUBACK an MQTT 5 client gets for a QoS 1 PUBLISH.
fn puback_reason(client: &mut Client, topic: &str, packet_id: u16) -> ReasonCode {
    client.send(&publish(topic, QoS::AtLeastOnce, packet_id, b"x", false));
    let frame = client.recv("PUBACK");
    match client.decode(&frame) {
        Outgoing::PubAck(ack) => ack.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

fn write_config(path: &Path, passwd: &Path, extra: &str) {
    let text = format!(
        "[[listener]]\nbind = \"127.0.0.1:1\"\n{extra}\n[auth]\npassword_file = \"{}\"\n",
        passwd.display()
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn sighup_reloads_the_password_file_and_listeners_without_dropping_anyone() {
    let dir = TempDir::new("reload");
    std::fs::create_dir_all(dir.path()).unwrap();
    let passwd = dir.path().join("passwd");
    let config = dir.path().join("tidemq.toml");
    tidemq_passwd(&["-b", "secret", passwd.to_str().unwrap(), "alice"]);
    write_config(&config, &passwd, "");
    let broker = Broker::start_with_args(
        dir.path(),
        &[("TIDEMQ_STORAGE__ENABLED", "false")],
        &["-c", config.to_str().unwrap()],
    );
    let port = broker.port;
    // Anonymous clients are allowed: this one must survive every reload.
    let (mut stays, _) = Client::connect(port, &v311("stays", true));
    let (mut publisher, _) = Client::connect(port, &v5("publisher", true, 0));
    // Allowed: 0x00, or 0x10 "no matching subscribers".
    assert!(!puback_reason(&mut publisher, "t/secret", 1).is_failure());
    assert!(logs_in(port, "alice", "secret"));
    assert!(!logs_in(port, "bob", "hunter2"));

    // bob in, alice out, a second listener.
    tidemq_passwd(&["-b", "hunter2", passwd.to_str().unwrap(), "bob"]);
    tidemq_passwd(&["-D", passwd.to_str().unwrap(), "alice"]);
    // An ACL from now on: anonymous clients may use t/open only.
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic readwrite t/open\n").unwrap();
    let second = free_port();
    let extra = format!(
        "acl_file = \"{}\"\n\n[[listener]]\nbind = \"127.0.0.1:{second}\"\nacl_file = \"{}\"\n",
        acl.display(),
        acl.display()
    );
    write_config(&config, &passwd, &extra);
    broker.signal("HUP");
    let added = format!("listening addr=127.0.0.1:{second}");
    assert!(
        broker.stdout.wait_for(&added, WAIT).is_some(),
        "{}",
        broker.stdout.text()
    );
    assert!(broker
        .stdout
        .wait_for("SIGHUP: listener files reloaded", WAIT)
        .is_some());
    assert!(broker
        .stdout
        .wait_for("SIGHUP: log filter set", WAIT)
        .is_some());
    assert!(logs_in(port, "bob", "hunter2"));
    assert!(!logs_in(port, "alice", "secret"));
    assert!(logs_in(second, "bob", "hunter2"));
    stays.ping();
    // The still-connected publisher is held to the new ACL.
    assert_eq!(
        puback_reason(&mut publisher, "t/secret", 2),
        ReasonCode::NOT_AUTHORIZED
    );
    assert!(!puback_reason(&mut publisher, "t/open", 3).is_failure());

    // The second listener goes; a client on it stays connected.
    let (mut on_second, _) = Client::connect(second, &v311("on-second", true));
    write_config(&config, &passwd, "\n[limits]\nrouter_queue = 77\n");
    broker.signal("HUP");
    assert!(broker
        .stdout
        .wait_for("SIGHUP: listener removed", WAIT)
        .is_some());
    let restart = broker
        .stdout
        .wait_for("needs a restart", WAIT)
        .expect("a line naming what needs a restart");
    assert!(restart.contains("limits"), "{restart}");
    on_second.ping();
    stays.ping();
    assert!(std::net::TcpStream::connect(("127.0.0.1", second)).is_err());

    // A password file that no longer loads leaves the old one in force.
    std::fs::write(&passwd, "bob:not-a-hash\n").unwrap();
    broker.signal("HUP");
    assert!(broker
        .stdout
        .wait_for("the old files stay in force", WAIT)
        .is_some());
    assert!(logs_in(port, "bob", "hunter2"));
    stays.ping();
    broker.stop_without_store();
}

/// The reason code of the DISCONNECT an MQTT 5 client is sent.
fn disconnect_reason(client: &mut Client) -> ReasonCode {
    let frame = client.recv("DISCONNECT");
    match client.decode(&frame) {
        Outgoing::Disconnect(disconnect) => disconnect.reason,
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[test]
fn sighup_applies_connection_and_topic_caps_to_what_comes_next() {
    let dir = TempDir::new("reload-limits");
    std::fs::create_dir_all(dir.path()).unwrap();
    let config = dir.path().join("tidemq.toml");
    let write = |max_connections: u32, max_topic_levels: u32, extra: &str| {
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:1\"\n\n[connections]\nmax_connections = {max_connections}\n\n\
             [limits]\nmax_topic_levels = {max_topic_levels}\n{extra}"
        );
        std::fs::write(&config, text).unwrap();
    };
    write(3, 5, "");
    let broker = Broker::start_with_args(
        dir.path(),
        &[("TIDEMQ_STORAGE__ENABLED", "false")],
        &["-c", config.to_str().unwrap()],
    );
    let port = broker.port;
    let (mut a, _) = Client::connect(port, &v5("a", true, 0));
    let (mut b, _) = Client::connect(port, &v5("b", true, 0));
    let (mut c, c_connack) = Client::connect(port, &v5("c", true, 0));
    // Four levels are within five. Allowed: 0x00 or 0x10.
    assert!(!puback_reason(&mut a, "l/1/2/3", 1).is_failure());

    // Lowered below what is open: nobody is dropped, newcomers are refused.
    write(2, 3, "router_queue = 77\nreceive_maximum = 9\n");
    broker.signal("HUP");
    assert!(
        broker
            .stdout
            .wait_for("SIGHUP: limits applied", WAIT)
            .is_some(),
        "{}",
        broker.stdout.text()
    );
    let restart = broker
        .stdout
        .wait_for("needs a restart", WAIT)
        .expect("a line naming what needs a restart");
    assert!(restart.contains("limits.router_queue"), "{restart}");
    assert!(!restart.contains("max_topic_levels"), "{restart}");
    assert!(!restart.contains("receive_maximum"), "{restart}");
    a.ping();
    b.ping();
    c.ping();
    // Connections keep the settings of their accept: what c was told in
    // its CONNACK stays true, and the next one is told the new value.
    assert_ne!(c_connack.properties.receive_maximum, Some(9));
    // Refused with a CONNACK (MQTT 5: 0x89 Server busy), then closed.
    let (_, refused) = Client::connect_any(port, &v5("d", true, 0));
    assert_eq!(refused.reason, ReasonCode::SERVER_BUSY, "{refused:?}");
    // The connected publisher is held to the new topic cap at once.
    a.send(&publish("l/1/2/3", QoS::AtLeastOnce, 2, b"x", false));
    assert_eq!(disconnect_reason(&mut a), ReasonCode::QUOTA_EXCEEDED);
    assert!(!puback_reason(&mut b, "l/1/2", 3).is_failure());
    // Two left open, at the new cap of two: still no room...
    let (_, refused) = Client::connect_any(port, &v5("d", true, 0));
    assert_eq!(refused.reason, ReasonCode::SERVER_BUSY);
    // ...until one more leaves.
    c.disconnect();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (mut d, connack) = Client::connect_any(port, &v5("d", true, 0));
        if connack.reason == ReasonCode::SUCCESS {
            assert_eq!(
                connack.properties.receive_maximum,
                Some(9),
                "{}",
                broker.stdout.text()
            );
            d.ping();
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no room after c left");
        // Polling for the slot c gives back as its tasks end.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    b.ping();
    broker.stop_without_store();
}

/// `log.level` changed by SIGHUP takes effect at once: at `info` (the
/// default) the log has no DEBUG line; after a reload to `debug`, a
/// client's DISCONNECT is logged (at DEBUG, "client disconnected").
#[test]
fn sighup_changes_the_log_level() {
    let dir = TempDir::new("reload-log");
    std::fs::create_dir_all(dir.path()).unwrap();
    let config = dir.path().join("tidemq.toml");
    let write = |level: &str| {
        let text = format!("[[listener]]\nbind = \"127.0.0.1:1\"\n[log]\nlevel = \"{level}\"\n");
        std::fs::write(&config, text).unwrap();
    };
    write("info");
    let broker = Broker::start_with_args(
        dir.path(),
        &[("TIDEMQ_STORAGE__ENABLED", "false")],
        &["-c", config.to_str().unwrap()],
    );
    let (before, _) = Client::connect(broker.port, &v311("before", true));
    before.disconnect();
    // Whatever the broker logged by now: at info, no DEBUG line.
    let so_far = broker.stdout.so_far();
    assert!(!so_far.contains("DEBUG"), "{so_far}");

    write("debug");
    broker.signal("HUP");
    let set = broker
        .stdout
        .wait_for("SIGHUP: log filter set", WAIT)
        .expect("the reload's log line");
    assert!(set.contains("level=debug"), "{set}");
    let (after, _) = Client::connect(broker.port, &v311("after", true));
    after.disconnect();
    let line = broker
        .stdout
        .wait_for("client disconnected", WAIT)
        .expect("a DEBUG line once the level is debug");
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains("client_id=after"), "{line}");
    broker.stop_without_store();
}
