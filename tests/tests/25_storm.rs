//! A connect storm with the default `[connections]` settings (only the
//! listeners differ: a plain and a TLS one on 127.0.0.1 port 0): thousands
//! of sockets that never send a byte, split over both listeners, are
//! evicted under the default `max_pending`, and a client that connects
//! afterwards over TCP or over TLS still completes its QoS 1 round trip,
//! connect and handshake included, within a second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tidemq::config::ListenerConfig;
use tidemq::Settings;
use tidemq_protocol::QoS;
use tidemq_tests::tls::{tls_connect, ClientCert, Pki, StreamClient, Trust};
use tidemq_tests::{settings, TestBroker, LIVE_BOUND, WAIT};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Silent sockets the storm opens, at most.
const STORM: usize = 3000;
/// Descriptors kept free for everything else in the process.
const SPARE_FILES: usize = 200;

/// The soft limit on open files, from `/proc/self/limits` (`None` where
/// there is no such file).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
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

/// Connects a client over `stream`, subscribes to `topic`, publishes a QoS
/// 1 message to it and waits for the PUBACK and the delivery.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    client_id: &str,
    topic: &str,
) -> StreamClient<S> {
    let mut client = StreamClient::connected(stream, client_id).await;
    client
        .subscribe_granted(1, &[(topic, QoS::AtLeastOnce)])
        .await;
    client.publish_qos1(topic, 1, client_id.as_bytes()).await;
    client.expect_publish(topic, client_id.as_bytes()).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_silent_sockets_does_not_delay_a_tcp_or_tls_client() {
    let defaults = Settings::defaults().unwrap().connections;
    let max_pending = defaults.max_pending;
    // This process holds both ends of a pending socket.
    let silent = match open_files_limit() {
        Some(limit) => STORM.min(limit.saturating_sub(max_pending + SPARE_FILES)),
        None => STORM,
    };
    println!(
        "opening {silent} silent sockets (open files limit {:?}, max_pending {max_pending})",
        open_files_limit()
    );
    assert!(
        silent > max_pending,
        "{silent} sockets cannot overflow max_pending {max_pending}: raise `ulimit -n`"
    );

    let pki = Pki::new("storm");
    let mut settings = settings();
    settings.connections = defaults;
    let mut tls = ListenerConfig::mqtt(SocketAddr::from(([127, 0, 0, 1], 0)));
    tls.tls = Some(pki.server_tls());
    settings.listeners.push(tls);
    let broker = TestBroker::start_with(settings).await;
    let (plain_addr, tls_addr) = (broker.addrs[0], broker.addrs[1]);

    let mut sockets = Vec::with_capacity(silent);
    for n in 0..silent {
        let addr = if n % 2 == 0 { plain_addr } else { tls_addr };
        sockets.push(TcpStream::connect(addr).await.unwrap());
    }
    broker
        // Each accept is counted before its admission evicts: wait for
        // both, or the last eviction may not be counted yet.
        .wait_metrics("the storm accepted and admitted", |m| {
            m.connections_accepted >= silent as u64
                && m.pending_evicted >= (silent - max_pending) as u64
        })
        .await;
    let metrics = broker.metrics();
    assert!(
        metrics.pending_current <= max_pending as u64,
        "{} pending over max_pending {max_pending}",
        metrics.pending_current
    );
    assert_eq!(
        metrics.pending_evicted,
        (silent - max_pending) as u64,
        "every silent socket past max_pending evicts one: {metrics:?}"
    );

    let started = Instant::now();
    let tcp = TcpStream::connect(plain_addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut tcp_client = round_trip(tcp, "storm-tcp", "storm/tcp").await;
    let tcp_elapsed = started.elapsed();

    let started = Instant::now();
    let config = pki.client_config(Trust::OurCa, ClientCert::None);
    let tls_stream = tls_connect(tls_addr, config).await.unwrap();
    let mut tls_client = round_trip(tls_stream, "storm-tls", "storm/tls").await;
    let tls_elapsed = started.elapsed();
    println!("round trips after the storm: TCP {tcp_elapsed:?}, TLS {tls_elapsed:?}");
    assert!(
        tcp_elapsed < LIVE_BOUND,
        "TCP connect + QoS 1 round trip took {tcp_elapsed:?}"
    );
    assert!(
        tls_elapsed < LIVE_BOUND,
        "TLS connect + QoS 1 round trip took {tls_elapsed:?}"
    );

    // The TCP client's pending place evicted one more silent socket and
    // was freed by its CONNECT; the TLS client took that free place.
    let evicted = (silent - max_pending + 1) as u64;
    let metrics = broker.metrics();
    assert_eq!(metrics.pending_evicted, evicted, "{metrics:?}");
    assert_eq!(metrics.connections_current, 2, "{metrics:?}");
    // Exactly the evicted sockets are closed; the rest still wait.
    let deadline = Instant::now() + WAIT;
    loop {
        let closed = sockets.iter().filter(|s| !is_open(s)).count();
        if closed as u64 == evicted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{closed} silent sockets closed, {evicted} evicted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both clients are still served.
    tcp_client.ping().await;
    tls_client.ping().await;
    drop(sockets);
    broker.stop().await;
}
