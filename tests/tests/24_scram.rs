//! Proves SCRAM-SHA-256 (RFC 5802, RFC 7677) as MQTT 5 enhanced
//! authentication against the password file's SCRAM entries, driven by the
//! harness's own SCRAM client (`tidemq_tests::scram`, written from the RFC
//! apart from the broker's): CONNECT carries client-first, AUTH 0x18 carries
//! server-first and client-final, and CONNACK carries server-final, which
//! the client checks. A wrong password, a user with no SCRAM credential, an
//! unknown user and a SCRAM user other than the CONNECT's user name are all
//! refused with 0x86 (the first two only after the same challenge a real
//! user gets); a connected client re-authenticates with AUTH 0x19; the same
//! entry is an ordinary password for CONNECT; and repeated failures are
//! answered ever later, as plain logins are.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tidemq::security::passwd::{hash_password, HashKind};
use tidemq::Settings;
use tidemq_protocol::{
    encode_connect, Auth, ConnAck, Connect, Outgoing, Packet, ProtocolVersion, QoS, ReasonCode,
};
use tidemq_tests::scram::ScramClient;
use tidemq_tests::scratch::ScratchDir;
use tidemq_tests::v5::{self, V5Client};
use tidemq_tests::{settings, RawClient, TestBroker};

const METHOD: &str = "SCRAM-SHA-256";

/// A password file in a directory of the test's own, removed when dropped.
struct Passwords(ScratchDir);

impl Passwords {
    /// alice has a SCRAM entry; the others given are added as they say.
    fn new(name: &str, others: &[(&str, &str, HashKind)]) -> Passwords {
        let dir = ScratchDir::new("24", name);
        let mut text = format!(
            "alice:{}\n",
            hash_password("alice-pw", HashKind::Scram).unwrap()
        );
        for (user, password, kind) in others {
            text += &format!("{user}:{}\n", hash_password(password, *kind).unwrap());
        }
        assert!(text.starts_with("alice:SCRAM-SHA-256$4096:"), "{text}");
        std::fs::write(dir.path("passwd"), text).unwrap();
        Passwords(dir)
    }

    /// SCRAM on (the default), no anonymous access, no failure delays.
    fn settings(&self) -> Settings {
        let mut s = settings();
        s.auth.password_file = self.0.path("passwd");
        s.auth.allow_anonymous = false;
        s.auth.failed_login_delay_ms = 0;
        s.auth.failed_login_max_delay_ms = 0;
        s
    }
}

async fn scram_broker(name: &str) -> (TestBroker, Passwords) {
    let passwords = Passwords::new(name, &[]);
    let broker = TestBroker::start_with(passwords.settings()).await;
    (broker, passwords)
}

/// An MQTT 5 CONNECT naming SCRAM-SHA-256, with `first` as its data.
fn scram_connect(client_id: &str, user: Option<&str>, first: Vec<u8>) -> Connect {
    let mut connect = v5::connect(client_id);
    connect.username = user.map(str::to_owned);
    connect.properties.authentication_method = Some(METHOD.to_owned());
    connect.properties.authentication_data = Some(Bytes::from(first));
    connect
}

fn auth(reason: ReasonCode, data: Vec<u8>) -> Packet {
    Packet::Auth(Auth {
        reason,
        authentication_method: Some(METHOD.to_owned()),
        authentication_data: Some(Bytes::from(data)),
        ..Auth::default()
    })
}

/// The data of an AUTH 0x18 naming the method [MQTT-4.12.0-2], [MQTT-4.12.0-5].
fn challenge(packet: Option<Outgoing>) -> Vec<u8> {
    match packet {
        Some(Outgoing::Auth(auth)) => {
            assert_eq!(auth.reason, ReasonCode::CONTINUE_AUTHENTICATION);
            assert_eq!(auth.authentication_method.as_deref(), Some(METHOD));
            auth.authentication_data.expect("server-first").to_vec()
        }
        other => panic!("expected AUTH 0x18, got {other:?}"),
    }
}

/// Connects to `addr` and sends the CONNECT that opens the exchange:
/// SCRAM-SHA-256 with `scram`'s client-first.
async fn send_client_first(
    addr: SocketAddr,
    client_id: &str,
    user: Option<&str>,
    scram: &mut ScramClient,
) -> V5Client {
    let mut wire = BytesMut::new();
    encode_connect(
        &scram_connect(client_id, user, scram.client_first()),
        &mut wire,
    );
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut client = V5Client::from_stream(stream);
    client.send_raw(&wire).await;
    client
}

/// How a SCRAM login went: the CONNACK, and whether the broker sent
/// server-first before it.
struct Login {
    client: V5Client,
    connack: ConnAck,
    challenged: bool,
}

/// Runs the exchange as far as the broker lets it: CONNECT with
/// client-first, then, if the broker answers AUTH 0x18 with server-first,
/// AUTH 0x18 with client-final; returns at the CONNACK.
async fn scram_login(
    addr: SocketAddr,
    client_id: &str,
    user: Option<&str>,
    scram: &mut ScramClient,
) -> Login {
    let mut client = send_client_first(addr, client_id, user, scram).await;
    let mut challenged = false;
    let connack = loop {
        match client.recv().await {
            Some(Outgoing::ConnAck(connack)) => break connack,
            packet => {
                assert!(!challenged, "a second challenge: {packet:?}");
                challenged = true;
                let server_first = challenge(packet);
                let client_final = scram.client_final(&server_first).unwrap();
                let answer = auth(ReasonCode::CONTINUE_AUTHENTICATION, client_final);
                client.send(&answer).await;
            }
        }
    };
    Login {
        client,
        connack,
        challenged,
    }
}

/// A SCRAM login that must succeed: CONNACK 0x00 naming the method and
/// carrying server-final, which proves the broker holds alice's credential.
async fn logged_in(addr: SocketAddr, client_id: &str) -> V5Client {
    let mut scram = ScramClient::new("alice", "alice-pw");
    let login = scram_login(addr, client_id, Some("alice"), &mut scram).await;
    assert!(login.challenged, "server-first before CONNACK");
    let connack = login.connack;
    assert_eq!(connack.reason, ReasonCode::SUCCESS);
    let properties = &connack.properties;
    assert_eq!(properties.authentication_method.as_deref(), Some(METHOD));
    let server_final = properties
        .authentication_data
        .as_deref()
        .expect("server-final");
    scram.verify_server_final(server_final).unwrap();
    login.client
}

/// A plain MQTT 5 login, user name and password and no Authentication
/// Method, which must be accepted.
async fn plain_login(addr: SocketAddr, client_id: &str, user: &str, password: &'static [u8]) {
    let mut connect = v5::connect(client_id);
    connect.username = Some(user.into());
    connect.password = Some(Bytes::from_static(password));
    V5Client::connected(addr, &connect).await;
}

/// Re-authenticates a connected client as `scram`'s user: AUTH 0x19 with
/// client-first, the broker's AUTH 0x18 with server-first, AUTH 0x18 with
/// client-final. The broker's verdict is the caller's to read.
async fn reauthenticate(client: &mut V5Client, scram: &mut ScramClient) {
    client
        .send(&auth(ReasonCode::RE_AUTHENTICATE, scram.client_first()))
        .await;
    let server_first = challenge(client.recv().await);
    let client_final = scram.client_final(&server_first).unwrap();
    client
        .send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, client_final))
        .await;
}

/// Asserts a refusal with `reason`, then the close [MQTT-4.12.0-4].
async fn assert_refused(mut login: Login, reason: ReasonCode) {
    assert_eq!(login.connack.reason, reason);
    assert!(!login.connack.session_present);
    assert!(login.client.recv().await.is_none(), "closed after CONNACK");
}

/// Subscribes to a topic and publishes to it at QoS 1: the connection works.
async fn assert_usable(client: &mut V5Client, topic: &str) {
    client.subscribe_qos(topic, QoS::AtLeastOnce).await;
    let publish = v5::publish(topic, QoS::AtLeastOnce, 9, b"usable", None);
    client.send(&publish).await;
    // The PUBACK and our own message, in either order.
    let mut got_ack = false;
    let mut got_message = false;
    while !(got_ack && got_message) {
        match client.recv().await {
            Some(Outgoing::PubAck(ack)) => {
                assert_eq!(ack.reason, ReasonCode::SUCCESS);
                got_ack = true;
            }
            Some(Outgoing::Publish(publish)) => {
                assert_eq!(&publish.payload[..], b"usable");
                client.acknowledge(&publish).await;
                got_message = true;
            }
            other => panic!("expected PUBACK and PUBLISH, got {other:?}"),
        }
    }
}

// -------------------------------------------------------- before CONNACK

#[tokio::test]
async fn mqtt_4_12_0_2_to_5_scram_sha_256_runs_before_connack_and_proves_the_server() {
    let (broker, _passwords) = scram_broker("ok").await;
    let mut alice = logged_in(broker.addr, "alice-1").await;
    assert_usable(&mut alice, "scram/t").await;
    assert_eq!(broker.metrics().logins_refused, 0);
}

#[tokio::test]
async fn mqtt_4_12_0_4_a_wrong_password_gets_connack_0x86() {
    let (broker, _passwords) = scram_broker("wrong").await;
    let mut scram = ScramClient::new("alice", "alice-PW");
    let login = scram_login(broker.addr, "alice-w", Some("alice"), &mut scram).await;
    assert!(login.challenged);
    assert_eq!(login.connack.properties.authentication_data, None);
    assert_refused(login, ReasonCode::BAD_USER_NAME_OR_PASSWORD).await;
    assert_eq!(broker.metrics().logins_refused, 1);
}

#[tokio::test]
async fn a_user_with_no_scram_credential_or_no_entry_gets_0x86_after_the_same_challenge() {
    let passwords = Passwords::new("no-scram", &[("carol", "carol-pw", HashKind::Argon2id)]);
    let broker = TestBroker::start_with(passwords.settings()).await;
    // carol's argon2id entry cannot answer SCRAM; mallory has no entry.
    // Both are challenged like alice, so names cannot be probed.
    for (user, password) in [("carol", "carol-pw"), ("mallory", "anything")] {
        let mut scram = ScramClient::new(user, password);
        let login = scram_login(broker.addr, user, Some(user), &mut scram).await;
        assert!(login.challenged, "{user} gets server-first");
        assert_refused(login, ReasonCode::BAD_USER_NAME_OR_PASSWORD).await;
    }
    assert_eq!(broker.metrics().logins_refused, 2);
    // carol's password is still good for a plain CONNECT.
    plain_login(broker.addr, "carol-plain", "carol", b"carol-pw").await;
}

#[tokio::test]
async fn the_scram_user_must_be_the_connect_user_name() {
    let passwords = Passwords::new("other-user", &[("carol", "carol-pw", HashKind::Scram)]);
    let broker = TestBroker::start_with(passwords.settings()).await;
    // alice's own password, but CONNECT says carol: the ACL and takeover
    // rules would go by carol.
    let mut scram = ScramClient::new("alice", "alice-pw");
    let login = scram_login(broker.addr, "as-carol", Some("carol"), &mut scram).await;
    assert_refused(login, ReasonCode::BAD_USER_NAME_OR_PASSWORD).await;
    // Control: alice as alice.
    logged_in(broker.addr, "alice-ok").await;
}

#[tokio::test]
async fn scram_without_a_user_name_is_refused() {
    // Where anonymous clients are refused, before any exchange (0x87).
    let passwords = Passwords::new("nameless", &[]);
    let broker = TestBroker::start_with(passwords.settings()).await;
    let mut scram = ScramClient::new("alice", "alice-pw");
    let login = scram_login(broker.addr, "nameless", None, &mut scram).await;
    assert!(!login.challenged);
    assert_refused(login, ReasonCode::NOT_AUTHORIZED).await;
    // Where they are welcome, SCRAM still cannot make one alice (0x86).
    let mut s = passwords.settings();
    s.auth.allow_anonymous = true;
    let broker = TestBroker::start_with(s).await;
    let mut scram = ScramClient::new("alice", "alice-pw");
    let login = scram_login(broker.addr, "nameless", None, &mut scram).await;
    assert_refused(login, ReasonCode::BAD_USER_NAME_OR_PASSWORD).await;
}

#[tokio::test]
async fn mqtt_4_12_0_5_an_auth_naming_another_method_closes_the_connection() {
    let (broker, _passwords) = scram_broker("other-method").await;
    let mut scram = ScramClient::new("alice", "alice-pw");
    let mut client = send_client_first(broker.addr, "switch", Some("alice"), &mut scram).await;
    let server_first = challenge(client.recv().await);
    let client_final = scram.client_final(&server_first).unwrap();
    client
        .send(&Packet::Auth(Auth {
            reason: ReasonCode::CONTINUE_AUTHENTICATION,
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(Bytes::from(client_final)),
            ..Auth::default()
        }))
        .await;
    assert_eq!(client.recv().await, None, "closed without CONNACK");
}

#[tokio::test]
async fn mqtt_4_12_0_1_without_scram_the_method_gets_connack_0x8c() {
    let passwords = Passwords::new("off", &[]);
    let mut s = passwords.settings();
    s.auth.scram = false;
    let broker = TestBroker::start_with(s).await;
    let mut scram = ScramClient::new("alice", "alice-pw");
    let login = scram_login(broker.addr, "off", Some("alice"), &mut scram).await;
    assert!(!login.challenged);
    assert_refused(login, ReasonCode::BAD_AUTHENTICATION_METHOD).await;
    // SCRAM needs a password file to check against.
    let mut s = settings();
    s.auth.scram = true;
    let broker = TestBroker::start_with(s).await;
    let mut scram = ScramClient::new("alice", "alice-pw");
    let login = scram_login(broker.addr, "no-file", Some("alice"), &mut scram).await;
    assert_refused(login, ReasonCode::BAD_AUTHENTICATION_METHOD).await;
}

// ---------------------------------------------------- re-authentication

#[tokio::test]
async fn mqtt_4_12_1_1_re_authentication_with_scram_keeps_the_connection() {
    let (broker, _passwords) = scram_broker("reauth").await;
    let mut alice = logged_in(broker.addr, "alice-re").await;
    for round in 0..2 {
        let mut scram = ScramClient::new("alice", "alice-pw");
        reauthenticate(&mut alice, &mut scram).await;
        match alice.recv().await {
            Some(Outgoing::Auth(done)) => {
                assert_eq!(done.reason, ReasonCode::SUCCESS, "round {round}");
                assert_eq!(done.authentication_method.as_deref(), Some(METHOD));
                let server_final = done.authentication_data.expect("server-final");
                scram.verify_server_final(&server_final).unwrap();
            }
            other => panic!("expected AUTH 0x00, got {other:?}"),
        }
        assert_usable(&mut alice, &format!("reauth/{round}")).await;
    }
}

#[tokio::test]
async fn mqtt_4_12_1_2_a_failed_re_authentication_gets_disconnect_0x87() {
    let (broker, _passwords) = scram_broker("reauth-fail").await;
    let mut alice = logged_in(broker.addr, "alice-re").await;
    let mut scram = ScramClient::new("alice", "not-alice-pw");
    reauthenticate(&mut alice, &mut scram).await;
    // DISCONNECT has no 0x86: 0x87 Not authorized.
    let disconnect = alice.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::NOT_AUTHORIZED);
    // Re-authenticating as another user fails the same way, at once.
    let passwords = Passwords::new("reauth-other", &[("carol", "carol-pw", HashKind::Scram)]);
    let broker = TestBroker::start_with(passwords.settings()).await;
    let mut alice = logged_in(broker.addr, "alice-re").await;
    let mut carol = ScramClient::new("carol", "carol-pw");
    alice
        .send(&auth(ReasonCode::RE_AUTHENTICATE, carol.client_first()))
        .await;
    let disconnect = alice.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::NOT_AUTHORIZED);
}

// ---------------------------------------------------------- plain login

#[tokio::test]
async fn a_scram_entry_is_also_a_plain_password() {
    let (broker, _passwords) = scram_broker("plain").await;
    let v311 = |password: &'static [u8]| {
        let mut connect = v5::connect("alice-311");
        connect.version = ProtocolVersion::V311;
        connect.username = Some("alice".into());
        connect.password = Some(Bytes::from_static(password));
        let mut wire = BytesMut::new();
        encode_connect(&connect, &mut wire);
        wire
    };
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&v311(b"alice-pw")).await;
    assert_eq!(
        client.recv().await.unwrap().wire_bytes(),
        [0x20, 2, 0, 0x00]
    );
    client.ping().await;
    let mut refused = RawClient::connect(broker.addr).await;
    refused.send(&v311(b"alice-pw ")).await;
    assert_eq!(
        refused.recv().await.unwrap().wire_bytes(),
        [0x20, 2, 0, 0x05]
    );
    assert!(refused.closed_by_broker().await);
    // MQTT 5 without an Authentication Method: the same password check.
    plain_login(broker.addr, "alice-5", "alice", b"alice-pw").await;
}

// ------------------------------------------------------ failed logins

#[tokio::test]
async fn failed_scram_logins_delay_the_next_answers_as_plain_ones_do() {
    let passwords = Passwords::new("delay", &[]);
    let mut s = passwords.settings();
    s.auth.failed_login_delay_ms = 300;
    s.auth.failed_login_max_delay_ms = 5_000;
    let broker = TestBroker::start_with(s).await;
    for n in 0..2 {
        let mut scram = ScramClient::new("alice", "guess");
        let login = scram_login(broker.addr, "guesser", Some("alice"), &mut scram).await;
        assert_refused(login, ReasonCode::BAD_USER_NAME_OR_PASSWORD).await;
        assert_eq!(
            broker.metrics().logins_delayed,
            n,
            "after {} failures",
            n + 1
        );
    }
    // Two failures: the third attempt's first answer waits 2 × 300 ms.
    let started = Instant::now();
    let mut scram = ScramClient::new("alice", "guess");
    let login = scram_login(broker.addr, "guesser", Some("alice"), &mut scram).await;
    let waited = started.elapsed();
    assert_refused(login, ReasonCode::BAD_USER_NAME_OR_PASSWORD).await;
    assert!(
        waited >= Duration::from_millis(600),
        "answered after {waited:?}"
    );
    assert_eq!(broker.metrics().logins_delayed, 2);
    // The right password gets in (after its wait) and clears the record.
    logged_in(broker.addr, "alice-ok").await;
    assert_eq!(broker.metrics().logins_delayed, 3);
    let mut scram = ScramClient::new("alice", "guess");
    let login = scram_login(broker.addr, "guesser", Some("alice"), &mut scram).await;
    assert_refused(login, ReasonCode::BAD_USER_NAME_OR_PASSWORD).await;
    assert_eq!(broker.metrics().logins_delayed, 3);
}
