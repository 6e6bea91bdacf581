//! Proves who may connect, as a client sees it on the wire: password files
//! written by the real `mosquitto_passwd` ($7$) and by `tidemq` (argon2id)
//! let the right password in and refuse a wrong one or an unknown user
//! (CONNACK 0x05 / 0x86), anonymous clients are let in or refused (0x05 /
//! 0x87) by `auth.allow_anonymous` and each listener's override, the
//! mosquitto command-line clients log in with `-u`/`-P`, repeated failures
//! from one address are answered ever later, a storm of argon2id logins
//! leaves connected clients served, and a client id belongs to its user
//! unless `auth.takeover = "any"`.
//!
//! `mosquitto_passwd` comes with the Debian package `mosquitto`; CI
//! installs it. Without it the tests that need it say so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tidemq::config::{ListenerConfig, Takeover};
use tidemq::security::passwd::{hash_password, HashKind};
use tidemq::Settings;
use tidemq_protocol::{encode_connect, Connect, ProtocolVersion, QoS, ReasonCode};
use tidemq_tests::mosquitto::{run_pub, start_sub, Process};
use tidemq_tests::scratch::ScratchDir;
use tidemq_tests::v5::{self, V5Client};
use tidemq_tests::{publish_bytes, settings, ConnectOptions, RawClient, TestBroker, WAIT};

/// 3.1.1 CONNACK return codes.
const ACCEPTED: u8 = 0x00;
const NOT_AUTHORIZED: u8 = 0x05;

/// Logins in the storm, and how long each may take: argon2id in a debug
/// build costs far more than in a release build, and the broker hashes
/// `auth.max_concurrent_hashes` (2) at once.
const STORM_LOGINS: usize = 50;
const STORM_WAIT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------- helpers

/// A directory of this test's own, removed when dropped.
struct Scratch(ScratchDir);

impl Scratch {
    fn new(name: &str) -> Scratch {
        Scratch(ScratchDir::new("22", name))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path(name)
    }

    /// A password file of `user:hash` lines, hashed by tidemq.
    fn passwords(&self, users: &[(&str, &str, HashKind)]) -> PathBuf {
        let text: String = users
            .iter()
            .map(|(user, password, kind)| {
                format!("{user}:{}\n", hash_password(password, *kind).unwrap())
            })
            .collect();
        let file = self.path("passwd");
        std::fs::write(&file, text).unwrap();
        file
    }
}

/// Runs `mosquitto_passwd -b FILE USER PASSWORD` (with `-c` to create the
/// file). False when the binary is missing, so the caller can skip.
fn mosquitto_passwd(file: &Path, user: &str, password: &str, create: bool) -> bool {
    let mut command = std::process::Command::new("mosquitto_passwd");
    if create {
        command.arg("-c");
    }
    command.arg("-b").arg(file).args([user, password]);
    match command.output() {
        Ok(output) => {
            assert!(
                output.status.success(),
                "mosquitto_passwd failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            true
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED: mosquitto_passwd is not installed (Debian package `mosquitto`; CI installs it)"
            );
            false
        }
        Err(error) => panic!("cannot run mosquitto_passwd: {error}"),
    }
}

/// A password file from `mosquitto_passwd` with alice/secret and bob/hunter2;
/// `None` (test skipped) when the binary is missing.
fn mosquitto_password_file(scratch: &Scratch) -> Option<PathBuf> {
    let file = scratch.path("passwd");
    let made = mosquitto_passwd(&file, "alice", "secret", true)
        && mosquitto_passwd(&file, "bob", "hunter2", false);
    if made {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("alice:$7$"),
            "mosquitto 2 writes $7$: {text}"
        );
    }
    made.then_some(file)
}

/// Default settings with `password_file`, no anonymous access, and no
/// delay after failures (tests that refuse on purpose would wait).
fn secured(password_file: &Path) -> Settings {
    let mut s = settings();
    s.auth.password_file = password_file.to_owned();
    s.auth.allow_anonymous = false;
    s.auth.failed_login_delay_ms = 0;
    s.auth.failed_login_max_delay_ms = 0;
    s
}

/// A CONNECT of `version` with clean session and optional credentials.
fn connect(
    version: ProtocolVersion,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Connect {
    let mut connect = v5::connect(client_id);
    connect.version = version;
    connect.username = user.map(str::to_owned);
    connect.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    connect
}

/// Sends a 3.1.1 CONNECT and returns the client and the CONNACK's return
/// code. A refusal must come with Session Present 0 [MQTT-3.2.2-4] and be
/// followed by the close [MQTT-3.2.2-5].
async fn login_v311(
    addr: std::net::SocketAddr,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (RawClient, u8) {
    let connect = connect(ProtocolVersion::V311, client_id, user, password);
    let mut wire = BytesMut::new();
    encode_connect(&connect, &mut wire);
    let mut client = RawClient::connect(addr).await;
    client.send(&wire).await;
    let connack = client.recv().await.expect("CONNACK");
    assert_eq!(connack.packet_type, 2, "expected CONNACK, got {connack:?}");
    let code = connack.body[1];
    if code != ACCEPTED {
        assert_eq!(connack.body[0], 0, "[MQTT-3.2.2-4] session present 0");
        assert!(client.closed_by_broker().await, "[MQTT-3.2.2-5] closed");
    }
    (client, code)
}

/// Sends an MQTT 5 CONNECT and returns the client and the CONNACK's reason.
async fn login_v5(
    addr: std::net::SocketAddr,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (V5Client, ReasonCode) {
    let connect = connect(ProtocolVersion::V5, client_id, user, password);
    let (mut client, connack) = V5Client::connect(addr, &connect).await;
    if connack.reason != ReasonCode::SUCCESS {
        // [MQTT-3.2.2-7] no session present on a refusal; [MQTT-3.1.4-2] closed.
        assert!(!connack.session_present);
        assert!(client.recv().await.is_none(), "closed after the refusal");
    }
    (client, connack.reason)
}

// ---------------------------------------------- password files and CONNACK

#[tokio::test]
async fn mqtt_3_1_4_4_a_mosquitto_passwd_user_is_accepted_on_3_1_1_and_5() {
    let scratch = Scratch::new("mosq-ok");
    let Some(file) = mosquitto_password_file(&scratch) else {
        return;
    };
    let broker = TestBroker::start_with(secured(&file)).await;
    let (mut alice, code) = login_v311(broker.addr, "a311", Some("alice"), Some("secret")).await;
    assert_eq!(code, ACCEPTED);
    alice.ping().await;
    let (_bob, reason) = login_v5(broker.addr, "b5", Some("bob"), Some("hunter2")).await;
    assert_eq!(reason, ReasonCode::SUCCESS);
    assert_eq!(broker.metrics().logins_refused, 0);
}

#[tokio::test]
async fn mqtt_3_1_4_2_a_wrong_password_is_refused_0x05_and_0x86() {
    let scratch = Scratch::new("mosq-wrong");
    let Some(file) = mosquitto_password_file(&scratch) else {
        return;
    };
    let broker = TestBroker::start_with(secured(&file)).await;
    let (_c, code) = login_v311(broker.addr, "w311", Some("alice"), Some("hunter2")).await;
    assert_eq!(code, NOT_AUTHORIZED);
    let (_c, reason) = login_v5(broker.addr, "w5", Some("alice"), Some("Secret")).await;
    assert_eq!(reason, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    // A user name without a password is a wrong password too.
    let (_c, reason) = login_v5(broker.addr, "w5-none", Some("alice"), None).await;
    assert_eq!(reason, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    assert_eq!(broker.metrics().logins_refused, 3);
}

#[tokio::test]
async fn mqtt_3_1_4_2_an_unknown_user_is_refused_0x05_and_0x86() {
    let scratch = Scratch::new("mosq-unknown");
    let Some(file) = mosquitto_password_file(&scratch) else {
        return;
    };
    let broker = TestBroker::start_with(secured(&file)).await;
    let (_c, code) = login_v311(broker.addr, "u311", Some("mallory"), Some("secret")).await;
    assert_eq!(code, NOT_AUTHORIZED);
    let (_c, reason) = login_v5(broker.addr, "u5", Some("mallory"), Some("secret")).await;
    assert_eq!(reason, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    assert_eq!(broker.metrics().logins_refused, 2);
}

#[tokio::test]
async fn an_argon2id_entry_from_tidemq_accepts_its_password_only() {
    let scratch = Scratch::new("argon2");
    let file = scratch.passwords(&[("carol", "c0rrect horse", HashKind::Argon2id)]);
    let line = std::fs::read_to_string(&file).unwrap();
    assert!(line.starts_with("carol:$argon2id$"), "{line}");
    let broker = TestBroker::start_with(secured(&file)).await;
    let (_c, code) = login_v311(broker.addr, "c311", Some("carol"), Some("c0rrect horse")).await;
    assert_eq!(code, ACCEPTED);
    let (_c, reason) = login_v5(broker.addr, "c5", Some("carol"), Some("c0rrect horse")).await;
    assert_eq!(reason, ReasonCode::SUCCESS);
    let (_c, code) = login_v311(broker.addr, "c311-bad", Some("carol"), Some("c0rrect")).await;
    assert_eq!(code, NOT_AUTHORIZED);
}

// ------------------------------------------------------------ anonymous

#[tokio::test]
async fn mqtt_3_1_4_2_no_user_name_is_refused_0x05_and_0x87_unless_anonymous_is_allowed() {
    let scratch = Scratch::new("anon");
    let file = scratch.passwords(&[("alice", "secret", HashKind::Scram)]);
    let refusing = TestBroker::start_with(secured(&file)).await;
    let (_c, code) = login_v311(refusing.addr, "anon311", None, None).await;
    assert_eq!(code, NOT_AUTHORIZED);
    let (_c, reason) = login_v5(refusing.addr, "anon5", None, None).await;
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(refusing.metrics().logins_refused, 2);

    let mut s = secured(&file);
    s.auth.allow_anonymous = true;
    let allowing = TestBroker::start_with(s).await;
    let (mut anon, code) = login_v311(allowing.addr, "anon311", None, None).await;
    assert_eq!(code, ACCEPTED);
    anon.ping().await;
    let (_c, reason) = login_v5(allowing.addr, "anon5", None, None).await;
    assert_eq!(reason, ReasonCode::SUCCESS);
    // A user name is still checked where anonymous clients are welcome.
    let (_c, code) = login_v311(allowing.addr, "bad311", Some("alice"), Some("guess")).await;
    assert_eq!(code, NOT_AUTHORIZED);
}

#[tokio::test]
async fn a_listeners_allow_anonymous_overrides_the_auth_setting() {
    let scratch = Scratch::new("listeners");
    let file = scratch.passwords(&[("alice", "secret", HashKind::Scram)]);
    let mut s = secured(&file);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut open = ListenerConfig::mqtt(local);
    open.allow_anonymous = Some(true);
    s.listeners = vec![open, ListenerConfig::mqtt(local)];
    let broker = TestBroker::start_with(s).await;
    let (open, closed) = (broker.addrs[0], broker.addrs[1]);

    let (mut anon, code) = login_v311(open, "anon-open", None, None).await;
    assert_eq!(code, ACCEPTED);
    anon.ping().await;
    let (_c, code) = login_v311(closed, "anon-closed", None, None).await;
    assert_eq!(code, NOT_AUTHORIZED);
    let (_c, reason) = login_v5(closed, "anon-closed5", None, None).await;
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    // Both listeners check the same password file.
    for (addr, id) in [(open, "alice-open"), (closed, "alice-closed")] {
        let (_c, code) = login_v311(addr, id, Some("alice"), Some("secret")).await;
        assert_eq!(code, ACCEPTED, "{id}");
    }
}

// ------------------------------------------------ mosquitto command-line

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_log_in_with_u_and_capital_p() {
    let scratch = Scratch::new("mosq-clients");
    let Some(file) = mosquitto_password_file(&scratch) else {
        return;
    };
    let broker = TestBroker::start_with(secured(&file)).await;
    let sub = start_sub(
        &broker,
        &[
            "-i", "msub", "-u", "alice", "-P", "secret", "-t", "auth/t", "-q", "1", "-C", "1",
        ],
    );
    broker
        .wait_metrics("mosquitto_sub's subscription", |m| {
            m.subscriptions_current == 1
        })
        .await;
    run_pub(
        &broker,
        &[
            "-i",
            "mpub",
            "-u",
            "bob",
            "-P",
            "hunter2",
            "-t",
            "auth/t",
            "-q",
            "1",
            "-m",
            "logged in",
        ],
    )
    .await;
    assert_eq!(sub.succeeds().await, "logged in\n");

    for version in ["311", "5"] {
        let mut refused = start_sub(
            &broker,
            &[
                "-V", version, "-i", "msub-bad", "-u", "alice", "-P", "wrong", "-t", "auth/t",
            ],
        );
        let exit = refused
            .exit_within(WAIT)
            .await
            .expect("mosquitto_sub gives up when refused");
        assert!(
            !exit.status.success(),
            "MQTT {version}: mosquitto_sub exits non-zero on a wrong -P: {:?}",
            exit.stderr
        );
    }
    let mut publisher = Process::start(
        "mosquitto_pub",
        &broker,
        &["-u", "bob", "-P", "wrong", "-t", "auth/t", "-m", "x"],
    );
    let exit = publisher
        .exit_within(WAIT)
        .await
        .expect("mosquitto_pub exits");
    assert!(!exit.status.success(), "mosquitto_pub: {:?}", exit.stderr);
    assert_eq!(broker.metrics().logins_refused, 3);
}

// ------------------------------------------------------ failed logins

#[tokio::test]
async fn failed_logins_from_one_address_delay_its_next_answers_until_a_success() {
    let scratch = Scratch::new("delay");
    let file = scratch.passwords(&[("alice", "secret", HashKind::Scram)]);
    let mut s = secured(&file);
    s.auth.failed_login_delay_ms = 300;
    s.auth.failed_login_max_delay_ms = 5_000;
    let broker = TestBroker::start_with(s).await;
    let addr = broker.addr;

    // The first failure is answered at once: nothing to go by yet.
    let (_c, code) = login_v311(addr, "d1", Some("alice"), Some("guess1")).await;
    assert_eq!(code, NOT_AUTHORIZED);
    assert_eq!(broker.metrics().logins_delayed, 0);
    let (_c, code) = login_v311(addr, "d2", Some("alice"), Some("guess2")).await;
    assert_eq!(code, NOT_AUTHORIZED);
    assert_eq!(broker.metrics().logins_delayed, 1);
    // The third waits the base delay doubled once (two failures before it).
    let started = Instant::now();
    let (_c, code) = login_v311(addr, "d3", Some("alice"), Some("guess3")).await;
    let waited = started.elapsed();
    assert_eq!(code, NOT_AUTHORIZED);
    assert!(
        waited >= Duration::from_millis(600),
        "third failure answered after {waited:?}"
    );
    assert_eq!(broker.metrics().logins_delayed, 2);
    // The right password is let in (after its own wait), and clears the
    // address's record: the next failure is answered at once again.
    let (_c, code) = login_v311(addr, "d4", Some("alice"), Some("secret")).await;
    assert_eq!(code, ACCEPTED);
    assert_eq!(broker.metrics().logins_delayed, 3);
    let (_c, code) = login_v311(addr, "d5", Some("alice"), Some("guess4")).await;
    assert_eq!(code, NOT_AUTHORIZED);
    assert_eq!(broker.metrics().logins_delayed, 3);
    assert_eq!(broker.metrics().logins_refused, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_of_argon2id_connects_leaves_connected_clients_served() {
    let scratch = Scratch::new("storm");
    let file = scratch.passwords(&[("storm", "storm-pw", HashKind::Argon2id)]);
    let mut s = secured(&file);
    s.auth.allow_anonymous = true;
    let broker = TestBroker::start_with(s).await;
    let addr = broker.addr;
    let (mut subscriber, _) = RawClient::connected(addr, &ConnectOptions::new("live-sub")).await;
    subscriber
        .subscribe_granted(1, &[("live/t", QoS::AtMostOnce)])
        .await;
    let (mut publisher, _) = RawClient::connected(addr, &ConnectOptions::new("live-pub")).await;

    let logged_in = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut storm = tokio::task::JoinSet::new();
    for n in 0..STORM_LOGINS {
        let logged_in = logged_in.clone();
        storm.spawn(async move {
            let connect = connect(
                ProtocolVersion::V311,
                &format!("storm-{n}"),
                Some("storm"),
                Some("storm-pw"),
            );
            let mut wire = BytesMut::new();
            encode_connect(&connect, &mut wire);
            let mut client = RawClient::connect(addr).await;
            client.send(&wire).await;
            let connack = client.recv_within(STORM_WAIT).await.expect("CONNACK");
            assert_eq!(connack.wire_bytes(), [0x20, 2, 0, ACCEPTED], "storm-{n}");
            logged_in.fetch_add(1, Ordering::SeqCst);
            (client, started.elapsed())
        });
    }

    // QoS 0 round trips between the two connected clients, one after the
    // other, for as long as the storm lasts.
    let mut round_trips = 0u32;
    let mut during_storm = 0u32;
    let mut slowest = Duration::ZERO;
    while logged_in.load(Ordering::SeqCst) < STORM_LOGINS {
        let payload = round_trips.to_be_bytes();
        let sent = Instant::now();
        publisher
            .send(&publish_bytes(
                "live/t",
                QoS::AtMostOnce,
                0,
                &payload,
                false,
            ))
            .await;
        let (topic, received, _, _) = subscriber.next_publish().await.publish();
        assert_eq!(
            (topic.as_str(), received.as_slice()),
            ("live/t", &payload[..])
        );
        slowest = slowest.max(sent.elapsed());
        round_trips += 1;
        if logged_in.load(Ordering::SeqCst) < STORM_LOGINS {
            during_storm += 1;
        }
    }
    let mut clients = Vec::new();
    let mut last_connack = Duration::ZERO;
    while let Some(joined) = storm.join_next().await {
        let (client, at) = joined.unwrap();
        last_connack = last_connack.max(at);
        clients.push(client);
    }
    eprintln!(
        "login storm: {STORM_LOGINS} argon2id logins in {last_connack:?}; \
         {round_trips} QoS 0 round trips meanwhile ({during_storm} before the last CONNACK), \
         slowest {slowest:?}"
    );
    assert!(
        during_storm > 0,
        "no round trip completed while logins were pending"
    );
    assert_eq!(clients.len(), STORM_LOGINS);
    assert_eq!(broker.metrics().logins_refused, 0);
}

// ------------------------------------------------------------ takeover

/// A broker where alice and bob have passwords, with the takeover rule.
async fn takeover_broker(scratch: &Scratch, takeover: Takeover) -> TestBroker {
    let file = scratch.passwords(&[
        ("alice", "alice-pw", HashKind::Scram),
        ("bob", "bob-pw", HashKind::Scram),
    ]);
    let mut s = secured(&file);
    s.auth.takeover = takeover;
    TestBroker::start_with(s).await
}

#[tokio::test]
async fn mqtt_3_1_4_2_with_same_user_takeover_another_user_cannot_take_a_client_id() {
    let scratch = Scratch::new("takeover-same");
    let broker = takeover_broker(&scratch, Takeover::SameUser).await;
    let (mut alice, code) = login_v311(broker.addr, "c1", Some("alice"), Some("alice-pw")).await;
    assert_eq!(code, ACCEPTED);

    let (_c, code) = login_v311(broker.addr, "c1", Some("bob"), Some("bob-pw")).await;
    assert_eq!(code, NOT_AUTHORIZED);
    let (_c, reason) = login_v5(broker.addr, "c1", Some("bob"), Some("bob-pw")).await;
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(broker.metrics().takeovers_refused, 2);
    // Alice was not disturbed.
    alice.ping().await;

    // Alice herself takes her client id over [MQTT-3.1.4-2]: the old
    // connection is closed.
    let (mut again, code) = login_v311(broker.addr, "c1", Some("alice"), Some("alice-pw")).await;
    assert_eq!(code, ACCEPTED);
    assert!(alice.closed_by_broker().await, "the old connection closes");
    again.ping().await;
    assert_eq!(broker.metrics().takeovers_refused, 2);
}

#[tokio::test]
async fn a_client_id_of_an_anonymous_client_is_not_taken_by_a_user_nor_the_reverse() {
    let scratch = Scratch::new("takeover-anon");
    let file = scratch.passwords(&[("alice", "alice-pw", HashKind::Scram)]);
    let mut s = secured(&file);
    s.auth.allow_anonymous = true;
    let broker = TestBroker::start_with(s).await;
    let (mut anon, code) = login_v311(broker.addr, "shared", None, None).await;
    assert_eq!(code, ACCEPTED);
    let (_c, code) = login_v311(broker.addr, "shared", Some("alice"), Some("alice-pw")).await;
    assert_eq!(code, NOT_AUTHORIZED);
    anon.ping().await;
    let (mut alice, code) = login_v311(broker.addr, "hers", Some("alice"), Some("alice-pw")).await;
    assert_eq!(code, ACCEPTED);
    let (_c, code) = login_v311(broker.addr, "hers", None, None).await;
    assert_eq!(code, NOT_AUTHORIZED);
    alice.ping().await;
    assert_eq!(broker.metrics().takeovers_refused, 2);
}

#[tokio::test]
async fn mqtt_3_1_4_2_with_takeover_any_another_user_takes_the_client_id_over() {
    let scratch = Scratch::new("takeover-any");
    let broker = takeover_broker(&scratch, Takeover::Any).await;
    let (mut alice, code) = login_v311(broker.addr, "c1", Some("alice"), Some("alice-pw")).await;
    assert_eq!(code, ACCEPTED);
    let (mut bob, reason) = login_v5(broker.addr, "c1", Some("bob"), Some("bob-pw")).await;
    assert_eq!(reason, ReasonCode::SUCCESS);
    assert!(alice.closed_by_broker().await, "alice's connection closes");
    bob.send(&tidemq_protocol::Packet::PingReq).await;
    assert_eq!(bob.recv().await, Some(tidemq_protocol::Outgoing::PingResp));
    assert_eq!(broker.metrics().takeovers_refused, 0);
}
