//! MQTT over TLS on a `[[listener]]` with `tls`: round trips with rumqttc
//! and raw bytes over TLS 1.2 and 1.3; the client refuses an expired
//! server certificate and one from a CA it does not trust; client
//! certificates (`require_certificate`, `use_identity_as_username`, the
//! identity as the ACL's user name); unreadable PEM files stop the start
//! with an error naming the file; a reload serves new certificate files to
//! new handshakes; TLS connections rest and wake; sockets
//! that never finish the handshake are closed after `connect_timeout_ms`
//! and evicted under `max_pending`. Certificates are made per test (see
//! `tidemq_tests::tls`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tidemq::config::{ListenerConfig, TlsConfig};
use tidemq::{Broker, Settings};
use tidemq_protocol::{ProtocolVersion, QoS};
use tidemq_tests::tls::{
    connect_packet, rustls_error, tls_connect, ClientCert, Pki, StreamClient, Trust, CLIENT_CN,
    CLIENT_SAN,
};
use tidemq_tests::transports::{
    assert_a_large_message_crosses, assert_woken_by_deliveries, exchange_with_plain, plain_expect,
    plain_subscriber,
};
use tidemq_tests::{settings, Client, ConnectOptions, RawClient, TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, AlertDescription, CertificateError};

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn tls_listener(tls: TlsConfig) -> ListenerConfig {
    let mut listener = ListenerConfig::mqtt(local());
    listener.tls = Some(tls);
    listener
}

/// The test settings with TLS listeners after the plain one: `addrs[0]` is
/// plain, `addrs[1..]` are `tls` in order.
fn with_tls(tls: impl IntoIterator<Item = TlsConfig>) -> Settings {
    let mut settings = settings();
    settings.listeners.extend(tls.into_iter().map(tls_listener));
    settings
}

/// Whether the broker still holds a silent `stream` open (it never sends a
/// silent socket anything, so a readable one has seen EOF or a reset).
fn is_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Err(error) => error.kind() == std::io::ErrorKind::WouldBlock,
        Ok(read) => read > 0,
    }
}

/// Waits for the broker to close `stream`, which sent nothing it answers.
async fn assert_closed(stream: &mut TcpStream, what: &str) {
    let mut scratch = [0u8; 64];
    match tokio::time::timeout(WAIT, stream.read(&mut scratch)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: expected a close, got {:02x?}", &scratch[..n]),
        Err(_) => panic!("{what}: still open after {WAIT:?}"),
    }
}

/// rumqttc with `TlsConfiguration::Simple` (our CA's PEM) connects to the
/// TLS listener by IP address, gets its own QoS 1 message back, and
/// exchanges messages with a plain TCP client both ways.
#[tokio::test]
async fn rumqttc_round_trips_over_tls() {
    let pki = Pki::new("rumqttc");
    let broker = TestBroker::start_with(with_tls([pki.server_tls()])).await;
    let mut options = rumqttc::MqttOptions::new("tls-rumqttc", "127.0.0.1", broker.addrs[1].port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: pki.ca_pem(),
            alpn: None,
            client_auth: None,
        },
    ));
    let mut client = Client::connect(options).await;
    assert_eq!(client.connack.code, rumqttc::ConnectReturnCode::Success);
    client
        .subscribe("tls/echo", rumqttc::QoS::AtLeastOnce)
        .await;
    client
        .client
        .publish(
            "tls/echo",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"over tls".to_vec(),
        )
        .await
        .unwrap();
    let echoed = client.next_publish().await;
    assert_eq!(
        (echoed.topic.as_str(), echoed.payload.as_ref(), echoed.qos),
        ("tls/echo", &b"over tls"[..], rumqttc::QoS::AtLeastOnce)
    );

    let mut plain = plain_subscriber(broker.addrs[0], "plain", "tls/to-plain").await;
    client
        .client
        .publish(
            "tls/to-plain",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"from tls".to_vec(),
        )
        .await
        .unwrap();
    plain_expect(&mut plain, "tls/to-plain", b"from tls").await;
    plain
        .publish_acked("tls/echo", QoS::AtLeastOnce, 7, b"from plain", false)
        .await;
    let delivered = client.next_publish().await;
    assert_eq!(delivered.payload.as_ref(), b"from plain");
    assert_eq!(broker.metrics().handshakes_failed, 0);
    client.kill();
    broker.stop().await;
}

/// Raw MQTT bytes over tokio-rustls, once with TLS 1.3 and once with TLS
/// 1.2 (the broker offers both): CONNACK 0, SUBACK, and a QoS 1 message
/// published to the client's own subscription comes back.
#[tokio::test]
async fn raw_mqtt_round_trips_over_tls_12_and_13() {
    let pki = Pki::new("raw");
    let broker = TestBroker::start_with(with_tls([pki.server_tls()])).await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = pki.client_config_with(Trust::OurCa, ClientCert::None, &[version]);
        let stream = tls_connect(broker.addrs[1], config).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
        let id = format!("raw-{:?}", version.version);
        let mut client = StreamClient::connected(stream, &id).await;
        client
            .subscribe_granted(1, &[("raw/tls", QoS::AtLeastOnce)])
            .await;
        client.publish_qos1("raw/tls", 1, id.as_bytes()).await;
        client.expect_publish("raw/tls", id.as_bytes()).await;
        client.ping().await;
    }
    assert_eq!(broker.metrics().handshakes_failed, 0);
    broker.stop().await;
}

/// A message near `max_packet_size` (900 KB, many TLS records) crosses
/// TLS both ways: from a TLS publisher to a TCP subscriber and from a TCP
/// publisher to a TLS subscriber, intact.
#[tokio::test]
async fn a_large_message_crosses_tls_both_ways() {
    let pki = Pki::new("large");
    let broker = TestBroker::start_with(with_tls([pki.server_tls()])).await;
    let config = pki.client_config(Trust::OurCa, ClientCert::None);
    let stream = tls_connect(broker.addrs[1], config).await.unwrap();
    let mut tls = StreamClient::connected(stream, "tls-large").await;
    assert_a_large_message_crosses(&broker, &mut tls, "large/to-tls").await;
    broker.stop().await;
}

/// A listener showing a certificate that expired in 2020 is refused by a
/// client that trusts its CA (rustls: certificate expired), and the broker
/// counts the failed handshake; the same client configuration is accepted
/// by a listener with a valid certificate from the same CA.
#[tokio::test]
async fn an_expired_server_certificate_is_refused_by_the_client() {
    let pki = Pki::new("expired");
    let broker =
        TestBroker::start_with(with_tls([pki.expired_server_tls(), pki.server_tls()])).await;
    let config = pki.client_config(Trust::OurCa, ClientCert::None);
    let error = tls_connect(broker.addrs[1], config.clone())
        .await
        .expect_err("a handshake with an expired certificate");
    assert!(
        matches!(
            rustls_error(&error),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "expected an expired certificate, got {error:?}"
    );
    broker
        .wait_metrics("the refused handshake counted", |m| {
            m.handshakes_failed == 1
        })
        .await;
    let stream = tls_connect(broker.addrs[2], config).await.unwrap();
    let mut client = StreamClient::connected(stream, "after-expired").await;
    client.ping().await;
    assert_eq!(broker.metrics().handshakes_failed, 1);
    broker.stop().await;
}

/// A client that trusts another CA refuses the broker's certificate
/// (unknown issuer) and the broker counts the failed handshake; a client
/// trusting our CA is served by the same listener right after.
#[tokio::test]
async fn a_client_trusting_another_ca_refuses_the_server() {
    let pki = Pki::new("other-ca");
    let broker = TestBroker::start_with(with_tls([pki.server_tls()])).await;
    let error = tls_connect(
        broker.addrs[1],
        pki.client_config(Trust::OtherCa, ClientCert::None),
    )
    .await
    .expect_err("a handshake with a certificate from an untrusted CA");
    assert_eq!(
        rustls_error(&error),
        Some(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )),
        "{error:?}"
    );
    broker
        .wait_metrics("the refused handshake counted", |m| {
            m.handshakes_failed == 1
        })
        .await;
    let config = pki.client_config(Trust::OurCa, ClientCert::None);
    let stream = tls_connect(broker.addrs[1], config).await.unwrap();
    let mut client = StreamClient::connected(stream, "trusting").await;
    client.ping().await;
    broker.stop().await;
}

/// A reload (`Broker::reload`, what SIGHUP calls) loads a listener's
/// certificate and key again: the next handshake gets the new certificate,
/// so a client trusting only the old CA now refuses the broker, and one
/// trusting the new CA is served; a TLS client connected before the reload
/// stays connected and gets a message the new client publishes. The plain
/// listener beside it, also on port 0, keeps serving plain MQTT (each
/// listener is paired with its own config, not the first on that address).
#[tokio::test]
async fn a_reload_serves_the_new_certificate_and_keeps_connected_clients() {
    let old = Pki::new("reload-old");
    let new = Pki::new("reload-new");
    let settings = with_tls([old.server_tls()]);
    let broker = TestBroker::start_with(settings.clone()).await;
    let addr = broker.addrs[1];
    let trusts_old = || old.client_config(Trust::OurCa, ClientCert::None);
    let stream = tls_connect(addr, trusts_old()).await.unwrap();
    let mut connected = StreamClient::connected(stream, "before-reload").await;
    connected
        .subscribe_granted(1, &[("reload/t", QoS::AtLeastOnce)])
        .await;

    // The same paths, new contents: a certificate from another CA.
    std::fs::copy(new.path("server.pem"), old.path("server.pem")).unwrap();
    std::fs::copy(new.path("server.key"), old.path("server.key")).unwrap();
    broker.broker().reload(&settings).await;

    let error = tls_connect(addr, trusts_old())
        .await
        .expect_err("the old CA does not vouch for the reloaded certificate");
    assert!(
        matches!(
            rustls_error(&error),
            Some(rustls::Error::InvalidCertificate(_))
        ),
        "{error:?}"
    );
    let stream = tls_connect(addr, new.client_config(Trust::OurCa, ClientCert::None))
        .await
        .unwrap();
    let mut after = StreamClient::connected(stream, "after-reload").await;
    after.publish_qos1("reload/t", 1, b"new certificate").await;
    connected
        .expect_publish("reload/t", b"new certificate")
        .await;
    connected.ping().await;
    // Asserts a CONNACK accepting the client.
    let (mut plain, _) =
        RawClient::connected(broker.addrs[0], &ConnectOptions::new("plain-after")).await;
    plain.send(&[0xC0, 0x00]).await;
    let pingresp = plain.recv().await.expect("PINGRESP on the plain listener");
    assert_eq!(pingresp.wire_bytes(), [0xD0, 0x00]);
    broker.stop().await;
}

/// With `require_certificate = true`, a client without a certificate never
/// gets to MQTT: over TLS 1.3 its first read gets the broker's
/// certificate_required alert, over TLS 1.2 the handshake itself fails.
/// Both are counted in `handshakes_failed`, and nothing else breaks: a
/// client with a certificate on the same listener and a plain client
/// exchange messages afterwards.
#[tokio::test]
async fn require_certificate_refuses_a_client_without_one() {
    let pki = Pki::new("require");
    let broker = TestBroker::start_with(with_tls([pki.mutual_tls(true, false)])).await;

    let tls13 = pki.client_config_with(Trust::OurCa, ClientCert::None, &[&rustls::version::TLS13]);
    // TLS 1.3: the client's part of the handshake ends before the broker
    // has checked its (empty) certificate; the refusal is the next thing
    // it reads.
    let stream = tls_connect(broker.addrs[1], tls13).await.unwrap();
    let mut refused = StreamClient::new(stream);
    let error = refused
        .assert_ended_without_packet()
        .await
        .expect("a TLS alert, not a clean end");
    assert_eq!(
        rustls_error(&error),
        Some(&rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
        )),
        "{error:?}"
    );
    broker
        .wait_metrics("the refused handshake counted", |m| {
            m.handshakes_failed == 1
        })
        .await;

    let tls12 = pki.client_config_with(Trust::OurCa, ClientCert::None, &[&rustls::version::TLS12]);
    let error = tls_connect(broker.addrs[1], tls12)
        .await
        .expect_err("a TLS 1.2 handshake without a certificate");
    assert!(
        matches!(rustls_error(&error), Some(rustls::Error::AlertReceived(_))),
        "{error:?}"
    );
    broker
        .wait_metrics("both refused handshakes counted", |m| {
            m.handshakes_failed == 2
        })
        .await;

    let certified = pki.client_config(Trust::OurCa, ClientCert::WithCommonName);
    let stream = tls_connect(broker.addrs[1], certified).await.unwrap();
    let mut client = StreamClient::connected(stream, "certified").await;
    client
        .subscribe_granted(1, &[("req/in", QoS::AtLeastOnce)])
        .await;
    let mut plain = plain_subscriber(broker.addrs[0], "plain", "req/out").await;
    exchange_with_plain(
        &mut client,
        &mut plain,
        ("req/out", 1, b"certified says"),
        ("req/in", 2, b"plain says"),
    )
    .await;
    let metrics = broker.metrics();
    assert_eq!(metrics.handshakes_failed, 2);
    assert_eq!(metrics.connections_current, 2);
    broker.stop().await;
}

/// `use_identity_as_username` on a listener with `allow_anonymous = false`
/// and no password file: a CONNECT without a user name is accepted from a
/// client whose certificate gives it one (CONNACK 0), and the same CONNECT
/// on a connection without a client certificate is refused with 0x05
/// (3.1.1) and 0x87 (MQTT 5), counted in `logins_refused`.
#[tokio::test]
async fn the_certificate_identity_is_the_user_name() {
    let pki = Pki::new("identity");
    let mut settings = settings();
    let mut listener = tls_listener(pki.mutual_tls(false, true));
    listener.allow_anonymous = Some(false);
    settings.listeners = vec![listener];
    let broker = TestBroker::start_with(settings).await;
    let addr = broker.addrs[0];

    let certified = pki.client_config(Trust::OurCa, ClientCert::WithCommonName);
    let stream = tls_connect(addr, certified).await.unwrap();
    let mut client = StreamClient::connected(stream, "no-user-name").await;
    client.ping().await;

    let anonymous = pki.client_config(Trust::OurCa, ClientCert::None);
    let stream = tls_connect(addr, anonymous.clone()).await.unwrap();
    let mut refused = StreamClient::new(stream);
    let connack = refused
        .connack(&connect_packet("no-user-name-2", ProtocolVersion::V311))
        .await;
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x05]);
    refused.assert_ended_without_packet().await;

    let stream = tls_connect(addr, anonymous).await.unwrap();
    let mut refused = StreamClient::new(stream);
    let connack = refused
        .connack(&connect_packet("no-user-name-5", ProtocolVersion::V5))
        .await;
    assert_eq!(
        connack.body.get(..2),
        Some(&[0x00, 0x87][..]),
        "{connack:?}"
    );
    refused.assert_ended_without_packet().await;

    let metrics = broker.metrics();
    assert_eq!(metrics.logins_refused, 2);
    assert_eq!(metrics.handshakes_failed, 0);
    assert_eq!(metrics.connections_current, 1);
    broker.stop().await;
}

/// The identity is the user name the ACL sees, whatever the CONNECT says:
/// with `pattern readwrite users/%u/#`, the client whose certificate's
/// Common Name is `sensor-17` but whose CONNECT claims user `mallory` is
/// granted `users/sensor-17/#` and refused `users/mallory/#`; a certificate
/// without a Common Name gives its DNS SAN instead.
#[tokio::test]
async fn the_acl_sees_the_certificate_identity() {
    let pki = Pki::new("identity-acl");
    let acl = pki.path("acl");
    std::fs::write(&acl, "pattern readwrite users/%u/#\n").unwrap();
    let mut settings = settings();
    let mut listener = tls_listener(pki.mutual_tls(true, true));
    listener.acl_file = Some(acl);
    settings.listeners = vec![listener];
    let broker = TestBroker::start_with(settings).await;
    let addr = broker.addrs[0];

    let own = format!("users/{CLIENT_CN}/#");
    let stream = tls_connect(
        addr,
        pki.client_config(Trust::OurCa, ClientCert::WithCommonName),
    )
    .await
    .unwrap();
    let mut client = StreamClient::new(stream);
    let mut connect = connect_packet("claims-mallory", ProtocolVersion::V311);
    connect.username = Some("mallory".to_string());
    connect.password = Some(bytes::Bytes::from_static(b"whatever"));
    let connack = client.connack(&connect).await;
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x00]);
    client
        .subscribe_expect(
            1,
            &[
                (&own, QoS::AtLeastOnce),
                ("users/mallory/#", QoS::AtLeastOnce),
            ],
            &[0x01, 0x80],
        )
        .await;
    let topic = format!("users/{CLIENT_CN}/temp");
    client.publish_qos1(&topic, 2, b"21.5").await;
    client.expect_publish(&topic, b"21.5").await;

    let stream = tls_connect(addr, pki.client_config(Trust::OurCa, ClientCert::SanOnly))
        .await
        .unwrap();
    let mut san = StreamClient::connected(stream, "san-only").await;
    let san_filter = format!("users/{CLIENT_SAN}/#");
    san.subscribe_expect(
        1,
        &[(&san_filter, QoS::AtLeastOnce), (&own, QoS::AtLeastOnce)],
        &[0x01, 0x80],
    )
    .await;
    assert_eq!(broker.metrics().acl_denied_subscribe, 2);
    broker.stop().await;
}

/// A `tls` file that cannot be used stops `Broker::start` with an error
/// naming the file: a certificate or key path that does not exist, a
/// certificate file holding no PEM certificate, a key file holding no key,
/// a `client_ca` that does not exist. Exit code 2 (the operator must act).
#[tokio::test]
async fn an_unusable_certificate_file_is_a_start_error_naming_it() {
    let pki = Pki::new("bad-path");
    let not_pem = pki.path("not-a-certificate.pem");
    std::fs::write(&not_pem, "this is not PEM\n").unwrap();
    let cases = [
        (
            TlsConfig {
                cert: pki.path("missing-server.pem"),
                ..pki.server_tls()
            },
            pki.path("missing-server.pem"),
        ),
        (
            TlsConfig {
                key: pki.path("missing-server.key"),
                ..pki.server_tls()
            },
            pki.path("missing-server.key"),
        ),
        (
            TlsConfig {
                cert: not_pem.clone(),
                ..pki.server_tls()
            },
            not_pem.clone(),
        ),
        (
            TlsConfig {
                key: pki.path("server.pem"),
                ..pki.server_tls()
            },
            pki.path("server.pem"),
        ),
        (
            TlsConfig {
                client_ca: Some(pki.path("missing-ca.pem")),
                ..pki.server_tls()
            },
            pki.path("missing-ca.pem"),
        ),
    ];
    for (tls, named) in cases {
        let error = match Broker::start(with_tls([tls])).await {
            Ok(broker) => {
                broker.shutdown().await;
                panic!("the broker started with an unusable {}", named.display());
            }
            Err(error) => error,
        };
        let text = error.to_string();
        assert!(
            text.contains(&named.display().to_string()),
            "{text:?} does not name {}",
            named.display()
        );
        assert_eq!(error.exit_code(), 2, "{text}");
    }
}

/// A TLS connection rests like a TCP one and keeps its session: with TLS
/// 1.3 and with TLS 1.2, a resting subscriber is woken by a delivery, acks
/// it, rests again, is woken by its own PINGREQ, and gets a second
/// delivery, all over the one TLS session.
#[tokio::test]
async fn a_resting_tls_connection_is_woken_by_a_delivery() {
    let pki = Pki::new("rest");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let broker = TestBroker::start_with(with_tls([pki.server_tls()])).await;
        let config = pki.client_config_with(Trust::OurCa, ClientCert::None, &[version]);
        let stream = tls_connect(broker.addrs[1], config).await.unwrap();
        let mut subscriber = StreamClient::connected(stream, "resting").await;
        assert_woken_by_deliveries(
            &broker,
            &mut subscriber,
            "rest/tls",
            &format!("{version:?}"),
        )
        .await;
        assert_eq!(broker.metrics().handshakes_failed, 0);
        broker.stop().await;
    }
}

/// Reads from `tcp` through the client session `tls` until `len` bytes of
/// plaintext have come.
async fn read_plaintext(
    tcp: &mut TcpStream,
    tls: &mut rustls::ClientConnection,
    len: usize,
) -> Vec<u8> {
    use std::io::Read;
    let mut plaintext = Vec::new();
    while plaintext.len() < len {
        let mut chunk = [0u8; 1024];
        match tls.reader().read(&mut chunk) {
            Ok(0) => panic!("the broker closed the TLS session"),
            Ok(n) => {
                plaintext.extend_from_slice(&chunk[..n]);
                continue;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("{error}"),
        }
        let mut records = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut records))
            .await
            .expect("TLS records in time")
            .unwrap();
        assert!(n > 0, "the broker closed the socket");
        let mut records = &records[..n];
        while !records.is_empty() {
            tls.read_tls(&mut records).unwrap();
        }
        tls.process_new_packets().unwrap();
    }
    plaintext
}

/// A TLS connection may rest with part of a TLS record read (the session
/// keeps it): a PINGREQ's record sent in two parts, cut inside the record
/// header, right after it and before its last byte, lets the connection
/// rest in between each time, and the rest of the record gets PINGRESP.
#[tokio::test]
async fn a_tls_connection_rests_inside_a_tls_record() {
    use std::io::Write;
    let pki = Pki::new("record");
    let broker = TestBroker::start_with(with_tls([pki.server_tls()])).await;
    let config = pki.client_config(Trust::OurCa, ClientCert::None);
    let stream = tls_connect(broker.addrs[1], config).await.unwrap();
    let client = StreamClient::connected(stream, "record").await;
    broker.wait_resting(1).await;
    // The session, driven by hand, to cut its records where we like.
    let (mut tcp, mut tls) = client.stream.into_inner();
    for cut in [2, 5, 6, usize::MAX] {
        tls.writer().write_all(&[0xC0, 0x00]).unwrap();
        let mut record = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut record).unwrap();
        }
        let cut = cut.min(record.len() - 1);
        let rested = broker.metrics().connections_rested;
        tcp.write_all(&record[..cut]).await.unwrap();
        broker
            .wait_metrics("a rest with part of a record read", |m| {
                m.connections_rested > rested
            })
            .await;
        broker.wait_resting(1).await;
        tcp.write_all(&record[cut..]).await.unwrap();
        assert_eq!(
            read_plaintext(&mut tcp, &mut tls, 2).await,
            [0xD0, 0x00],
            "cut at {cut} of {}",
            record.len()
        );
    }
    broker.stop().await;
}

/// Sockets on a TLS listener that never start the handshake, and one that
/// stops after a TLS record header, are closed after `connect_timeout_ms`
/// and counted in `connect_timeouts`; a client that completes its handshake
/// meanwhile is served.
#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_after_connect_timeout() {
    const SILENT: usize = 4;
    let pki = Pki::new("timeout");
    let mut settings = with_tls([pki.server_tls()]);
    settings.connections.connect_timeout_ms = 300;
    let broker = TestBroker::start_with(settings).await;
    let addr = broker.addrs[1];
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    // A handshake record promising 512 bytes, then nothing.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();

    let stream = tls_connect(addr, pki.client_config(Trust::OurCa, ClientCert::None))
        .await
        .unwrap();
    let mut client = StreamClient::connected(stream, "punctual").await;

    broker
        .wait_metrics("the stalled handshakes timed out", |m| {
            m.connect_timeouts == SILENT as u64 + 1
        })
        .await;
    for socket in &mut silent {
        assert_closed(socket, "a silent socket").await;
    }
    assert_closed(&mut stalled, "a stalled handshake").await;
    client.ping().await;
    let metrics = broker.metrics();
    assert_eq!(metrics.pending_current, 0, "{metrics:?}");
    assert_eq!(metrics.handshakes_failed, 0, "{metrics:?}");
    broker.stop().await;
}

/// A socket in the TLS handshake counts as pending: with `max_pending` 4,
/// a fifth silent socket on the TLS listener evicts the oldest (closed,
/// `pending_evicted`), the others stay open, and a client that completes
/// its handshake and CONNECT evicts the next oldest and is served.
#[tokio::test]
async fn silent_tls_sockets_are_evicted_under_max_pending() {
    const MAX_PENDING: usize = 4;
    let pki = Pki::new("evict");
    let mut settings = with_tls([pki.server_tls()]);
    settings.connections.max_pending = MAX_PENDING;
    let broker = TestBroker::start_with(settings).await;
    let addr = broker.addrs[1];
    let mut silent = Vec::new();
    for n in 1..=MAX_PENDING {
        silent.push(TcpStream::connect(addr).await.unwrap());
        broker
            .wait_metrics("the silent socket pending", |m| {
                m.pending_current == n as u64
            })
            .await;
    }
    silent.push(TcpStream::connect(addr).await.unwrap());
    broker
        .wait_metrics("the oldest evicted", |m| m.pending_evicted == 1)
        .await;
    assert_closed(&mut silent[0], "the oldest silent socket").await;
    assert!(silent[1..].iter().all(is_open), "a newer socket was closed");

    let stream = tls_connect(addr, pki.client_config(Trust::OurCa, ClientCert::None))
        .await
        .unwrap();
    let mut client = StreamClient::connected(stream, "evicts").await;
    client.ping().await;
    let metrics = broker.metrics();
    assert_eq!(metrics.pending_evicted, 2, "{metrics:?}");
    assert_closed(&mut silent[1], "the next oldest silent socket").await;
    assert!(silent[2..].iter().all(is_open), "a newer socket was closed");
    assert_eq!(
        metrics.pending_current,
        MAX_PENDING as u64 - 1,
        "{metrics:?}"
    );
    broker.stop().await;
}

/// A client that finished its TLS handshake but sends no CONNECT is still
/// pending: with `max_pending` 2, two silent sockets after it evict it,
/// and the broker ends its TLS session.
#[tokio::test]
async fn a_tls_client_without_connect_is_evicted_like_a_silent_socket() {
    let pki = Pki::new("evict-handshaken");
    let mut settings = with_tls([pki.server_tls()]);
    settings.connections.max_pending = 2;
    let broker = TestBroker::start_with(settings).await;
    let addr = broker.addrs[1];
    let stream = tls_connect(addr, pki.client_config(Trust::OurCa, ClientCert::None))
        .await
        .unwrap();
    let mut handshaken = StreamClient::new(stream);
    broker
        .wait_metrics("the TLS client pending", |m| m.pending_current == 1)
        .await;
    let _silent = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    broker
        .wait_metrics("the TLS client evicted", |m| m.pending_evicted == 1)
        .await;
    handshaken.assert_ended_without_packet().await;
    let metrics = broker.metrics();
    assert_eq!(metrics.pending_current, 2, "{metrics:?}");
    assert_eq!(metrics.handshakes_failed, 0, "{metrics:?}");
    broker.stop().await;
}

/// The wrong protocol on each port: plain MQTT on the TLS listener gets
/// no CONNACK (the handshake fails, counted in `handshakes_failed`), and a
/// TLS client on the plain listener fails its handshake; both listeners
/// serve their own clients afterwards.
#[tokio::test]
async fn the_wrong_protocol_on_a_port_gets_no_mqtt_answer() {
    let pki = Pki::new("wrong-port");
    let broker = TestBroker::start_with(with_tls([pki.server_tls()])).await;
    let (plain_addr, tls_addr) = (broker.addrs[0], broker.addrs[1]);

    let mut plain_on_tls = RawClient::connect(tls_addr).await;
    plain_on_tls
        .send(&tidemq_tests::connect_bytes(&ConnectOptions::new("lost")))
        .await;
    // At most a TLS alert comes back, never a CONNACK.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, plain_on_tls.stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the broker kept the socket open");
    assert!(answer.first() != Some(&0x20), "a CONNACK: {answer:02x?}");
    broker
        .wait_metrics("the failed handshake counted", |m| m.handshakes_failed == 1)
        .await;

    let config = pki.client_config(Trust::OurCa, ClientCert::None);
    tls_connect(plain_addr, config.clone())
        .await
        .expect_err("a TLS handshake with a plain MQTT listener");

    let mut tls =
        StreamClient::connected(tls_connect(tls_addr, config).await.unwrap(), "tls").await;
    tls.ping().await;
    let (mut plain, _) = RawClient::connected(plain_addr, &ConnectOptions::new("plain")).await;
    plain.ping().await;
    assert_eq!(broker.metrics().handshakes_failed, 1);
    broker.stop().await;
}
