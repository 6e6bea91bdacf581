//! TLS for the end-to-end tests, and a raw MQTT client over any byte stream.
//!
//! [`Pki`] is a throw-away public-key infrastructure made with rcgen for one
//! test and written to its own [`ScratchDir`] (removed on drop), so the
//! broker loads real PEM files:
//!
//! | file                        | what                                          |
//! |-----------------------------|-----------------------------------------------|
//! | `ca.pem`                    | the CA every other certificate is signed by   |
//! | `server.pem`, `server.key`  | server, for `127.0.0.1` and `localhost`       |
//! | `expired.pem`, `expired.key`| the same names, valid only in 2020            |
//! | `client.pem`, `client.key`  | client, Common Name [`CLIENT_CN`]             |
//! | `client-san.pem`, `.key`    | client, no Common Name, DNS SAN [`CLIENT_SAN`] |
//! | `other-ca.pem`              | a second CA that signed nothing of ours       |
//!
//! [`Pki::client_config`] builds the rustls configuration of a client that
//! trusts one CA or the other and shows one of the client certificates or
//! none. [`StreamClient`] writes exact bytes and reads whole packets over a
//! TLS stream (or any `AsyncRead + AsyncWrite`), as [`crate::RawClient`]
//! does over TCP.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tidemq::config::TlsConfig;
use tidemq_protocol::{encode_connect, Connect, ConnectProperties, Framer, ProtocolVersion, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, SupportedProtocolVersion};

use crate::scratch::ScratchDir;
use crate::{publish_bytes, subscribe_bytes, RawPacket, WAIT};

/// The Common Name of `client.pem`.
pub const CLIENT_CN: &str = "sensor-17";
/// The only name of `client-san.pem`: a DNS Subject Alternative Name.
pub const CLIENT_SAN: &str = "gateway-3.example";
/// The name the test clients ask the server certificate for.
pub const SERVER_NAME: &str = "localhost";

/// A certificate and its key, as rustls wants them.
struct Signed {
    cert: Certificate,
    key: KeyPair,
}

impl Signed {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone()]
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

fn distinguished_name(common_name: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    if let Some(common_name) = common_name {
        name.push(DnType::CommonName, common_name);
    }
    name
}

fn certificate_authority(common_name: &str) -> Signed {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(Some(common_name));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Signed { cert, key }
}

/// How a leaf certificate differs from a valid server one.
struct Leaf<'a> {
    common_name: Option<&'a str>,
    names: &'a [&'a str],
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
}

fn leaf(issuer: &Signed, leaf: Leaf<'_>) -> Signed {
    let names: Vec<String> = leaf.names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name = distinguished_name(leaf.common_name);
    params.extended_key_usages = vec![leaf.usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    if leaf.expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    Signed { cert, key }
}

/// Which CA a test client trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The CA that signed the broker's certificates.
    OurCa,
    /// A CA that signed nothing the broker shows.
    OtherCa,
}

/// Which certificate a test client shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    None,
    /// `client.pem`: Common Name [`CLIENT_CN`].
    WithCommonName,
    /// `client-san.pem`: no Common Name, DNS SAN [`CLIENT_SAN`].
    SanOnly,
}

/// One test's certificates, on disk until dropped.
pub struct Pki {
    dir: ScratchDir,
    ca: Signed,
    other_ca: Signed,
    client: Signed,
    client_san: Signed,
}

impl Pki {
    /// Generates every certificate and writes them to a new directory
    /// named after `test`.
    pub fn new(test: &str) -> Pki {
        let dir = ScratchDir::new("tls", test);
        let ca = certificate_authority("tidemq test CA");
        let other_ca = certificate_authority("some other CA");
        let server_names = ["127.0.0.1", SERVER_NAME];
        let server = leaf(
            &ca,
            Leaf {
                common_name: Some("tidemq test broker"),
                names: &server_names,
                usage: ExtendedKeyUsagePurpose::ServerAuth,
                expired: false,
            },
        );
        let expired = leaf(
            &ca,
            Leaf {
                common_name: Some("tidemq expired broker"),
                names: &server_names,
                usage: ExtendedKeyUsagePurpose::ServerAuth,
                expired: true,
            },
        );
        let client = leaf(
            &ca,
            Leaf {
                common_name: Some(CLIENT_CN),
                names: &[],
                usage: ExtendedKeyUsagePurpose::ClientAuth,
                expired: false,
            },
        );
        let client_san = leaf(
            &ca,
            Leaf {
                common_name: None,
                names: &[CLIENT_SAN],
                usage: ExtendedKeyUsagePurpose::ClientAuth,
                expired: false,
            },
        );
        let pki = Pki {
            dir,
            ca,
            other_ca,
            client,
            client_san,
        };
        pki.write("ca.pem", &pki.ca.cert.pem());
        pki.write("other-ca.pem", &pki.other_ca.cert.pem());
        for (name, signed) in [
            ("server", &server),
            ("expired", &expired),
            ("client", &pki.client),
            ("client-san", &pki.client_san),
        ] {
            pki.write(&format!("{name}.pem"), &signed.cert.pem());
            pki.write(&format!("{name}.key"), &signed.key.serialize_pem());
        }
        pki
    }

    fn write(&self, file: &str, contents: &str) {
        std::fs::write(self.path(file), contents).unwrap();
    }

    /// A file in this PKI's directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path(file)
    }

    /// The CA certificate as PEM (what rumqttc wants).
    pub fn ca_pem(&self) -> Vec<u8> {
        self.ca.cert.pem().into_bytes()
    }

    /// A listener's `tls` with the valid server certificate and no client
    /// certificates.
    pub fn server_tls(&self) -> TlsConfig {
        TlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: None,
            require_certificate: false,
            use_identity_as_username: false,
        }
    }

    /// As [`Pki::server_tls`], with the expired server certificate.
    pub fn expired_server_tls(&self) -> TlsConfig {
        TlsConfig {
            cert: self.path("expired.pem"),
            key: self.path("expired.key"),
            ..self.server_tls()
        }
    }

    /// As [`Pki::server_tls`], asking clients for a certificate signed by
    /// our CA.
    pub fn mutual_tls(&self, require_certificate: bool, use_identity: bool) -> TlsConfig {
        TlsConfig {
            client_ca: Some(self.path("ca.pem")),
            require_certificate,
            use_identity_as_username: use_identity,
            ..self.server_tls()
        }
    }

    /// A client configuration offering TLS 1.3 and 1.2.
    pub fn client_config(&self, trust: Trust, cert: ClientCert) -> Arc<ClientConfig> {
        self.client_config_with(trust, cert, rustls::DEFAULT_VERSIONS)
    }

    /// A client configuration offering only `versions`.
    pub fn client_config_with(
        &self,
        trust: Trust,
        cert: ClientCert,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let ca = match trust {
            Trust::OurCa => &self.ca,
            Trust::OtherCa => &self.other_ca,
        };
        roots.add(ca.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let config = match cert {
            ClientCert::None => builder.with_no_client_auth(),
            ClientCert::WithCommonName => builder
                .with_client_auth_cert(self.client.chain(), self.client.private_key())
                .unwrap(),
            ClientCert::SanOnly => builder
                .with_client_auth_cert(self.client_san.chain(), self.client_san.private_key())
                .unwrap(),
        };
        Arc::new(config)
    }
}

/// Connects to `addr` and runs the TLS handshake as a client of
/// [`SERVER_NAME`]. The error is the handshake's (see [`rustls_error`]).
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// The rustls error inside an I/O error from a TLS stream, if it is one.
pub fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A CONNECT with Clean Session 1, keepalive 60 and no user name.
pub fn connect_packet(client_id: &str, version: ProtocolVersion) -> Connect {
    Connect {
        version,
        client_id: client_id.to_owned(),
        clean_session: true,
        keep_alive: 60,
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// The bytes of `connect`, by the protocol crate's encoder.
pub fn encoded_connect(connect: &Connect) -> Vec<u8> {
    let mut wire = BytesMut::new();
    encode_connect(connect, &mut wire);
    wire.to_vec()
}

/// A client that writes exact bytes and reads whole packets over any
/// byte stream.
pub struct StreamClient<S> {
    pub stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> StreamClient<S> {
    pub fn new(stream: S) -> StreamClient<S> {
        StreamClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Wraps `stream`, sends a 3.1.1 CONNECT and asserts CONNACK 0.
    pub async fn connected(stream: S, client_id: &str) -> StreamClient<S> {
        let mut client = StreamClient::new(stream);
        let connack = client
            .connack(&connect_packet(client_id, ProtocolVersion::V311))
            .await;
        assert_eq!(
            connack.wire_bytes(),
            [0x20, 0x02, 0x00, 0x00],
            "CONNACK for {client_id}"
        );
        client
    }

    /// Sends `connect` and returns what came back, which must be a CONNACK.
    pub async fn connack(&mut self, connect: &Connect) -> RawPacket {
        self.send(&encoded_connect(connect)).await;
        let connack = self.recv().await.expect("a CONNACK in time");
        assert_eq!(connack.packet_type, 2, "expected CONNACK, got {connack:?}");
        connack
    }

    /// Writes `bytes` and flushes them (a TLS stream holds them otherwise).
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next packet within `wait`; `None` if the connection ended or
    /// nothing came.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<RawPacket> {
        self.recv_or_end(wait).await.ok()
    }

    pub async fn recv(&mut self) -> Option<RawPacket> {
        self.recv_within(WAIT).await
    }

    /// The next packet within `wait`, or how the stream ended instead:
    /// `Ok(())` for EOF, the read error otherwise. Nothing within `wait`
    /// fails the test.
    pub async fn recv_or_end(&mut self, wait: Duration) -> Result<RawPacket, Option<io::Error>> {
        let framer = Framer::new(usize::MAX);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = framer.next_frame(&mut self.buf).unwrap() {
                return Ok(RawPacket {
                    packet_type: frame.packet_type(),
                    flags: frame.flags(),
                    body: frame.body().to_vec(),
                });
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => return Err(None),
                Ok(Err(error)) => return Err(Some(error)),
                Ok(Ok(_)) => {}
                Err(_) => panic!("neither a packet nor the end of the stream within {wait:?}"),
            }
        }
    }

    /// Asserts the broker ends the stream within [`WAIT`] without sending
    /// a packet first; returns the read error, if the end was one.
    pub async fn assert_ended_without_packet(&mut self) -> Option<io::Error> {
        match self.recv_or_end(WAIT).await {
            Ok(packet) => panic!("expected the end of the stream, got {packet:?}"),
            Err(error) => error,
        }
    }

    /// Sends PINGREQ and waits for PINGRESP: the session has handled every
    /// packet sent before.
    pub async fn ping(&mut self) {
        self.send(&[0xC0, 0x00]).await;
        let pingresp = self.recv().await.expect("PINGRESP");
        assert_eq!(pingresp.wire_bytes(), [0xD0, 0x00]);
    }

    /// Sends SUBSCRIBE and asserts the SUBACK's return codes are `codes`.
    pub async fn subscribe_expect(
        &mut self,
        packet_id: u16,
        filters: &[(&str, QoS)],
        codes: &[u8],
    ) {
        self.send(&subscribe_bytes(packet_id, filters)).await;
        let suback = self.recv().await.expect("SUBACK");
        let mut expected = vec![0x90, 2 + codes.len() as u8];
        expected.extend_from_slice(&packet_id.to_be_bytes());
        expected.extend_from_slice(codes);
        assert_eq!(suback.wire_bytes(), expected, "SUBACK for {filters:?}");
    }

    /// Sends SUBSCRIBE and asserts every filter is granted its QoS.
    pub async fn subscribe_granted(&mut self, packet_id: u16, filters: &[(&str, QoS)]) {
        let codes: Vec<u8> = filters.iter().map(|(_, qos)| *qos as u8).collect();
        self.subscribe_expect(packet_id, filters, &codes).await;
    }

    /// Publishes at QoS 1 and waits for the PUBACK: the message has reached
    /// the router.
    pub async fn publish_qos1(&mut self, topic: &str, packet_id: u16, payload: &[u8]) {
        self.send(&publish_bytes(
            topic,
            QoS::AtLeastOnce,
            packet_id,
            payload,
            false,
        ))
        .await;
        let puback = self.recv().await.expect("PUBACK");
        let [hi, lo] = packet_id.to_be_bytes();
        assert_eq!(puback.wire_bytes(), [0x40, 0x02, hi, lo]);
    }

    /// The next packet, which must be a PUBLISH of `payload` on `topic`;
    /// acknowledged when it is QoS 1.
    pub async fn expect_publish(&mut self, topic: &str, payload: &[u8]) {
        let packet = self.recv().await.expect("a PUBLISH in time");
        assert_eq!(packet.packet_type, 3, "expected PUBLISH, got {packet:?}");
        let (got_topic, got_payload, qos, id) = packet.publish();
        assert_eq!(
            (got_topic.as_str(), got_payload.as_slice()),
            (topic, payload)
        );
        if qos == QoS::AtLeastOnce {
            let [hi, lo] = id.unwrap().to_be_bytes();
            self.send(&[0x40, 0x02, hi, lo]).await;
        }
    }
}
