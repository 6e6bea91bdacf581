//! The WebSocket layer over an in-memory pipe: the upgrade, the MQTT byte
//! stream carried across every split of frames and reads, control frames,
//! and the frames that end a connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::time::Duration;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: FIN as given, masked with `MASK`.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// Upgrades a pipe; returns the server stream and the client's end, with
/// the 101 answer read off it.
async fn upgraded(early: &[u8]) -> (WsConn<DuplexStream>, DuplexStream) {
    let (mut client, server) = duplex(1 << 20);
    let mut request = UPGRADE.as_bytes().to_vec();
    request.extend_from_slice(early);
    client.write_all(&request).await.unwrap();
    let conn = accept(server, "/mqtt", 1 << 20).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        answer.push(client.read_u8().await.unwrap());
    }
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    // RFC 6455 section 1.3's example key and answer.
    assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert!(
        answer.contains("Sec-WebSocket-Protocol: mqtt\r\n"),
        "{answer}"
    );
    (conn, client)
}

async fn read_exactly(conn: &mut WsConn<DuplexStream>, len: usize) -> Vec<u8> {
    let mut got = vec![0; len];
    conn.read_exact(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn the_stream_survives_every_split_into_frames() {
    // Two MQTT packets (a PINGREQ and a small PUBLISH) as one byte stream.
    let stream: Vec<u8> = [
        &[0xC0, 0x00][..],
        &[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i'],
    ]
    .concat();
    for first in 0..=stream.len() {
        for second in first..=stream.len() {
            let parts = [&stream[..first], &stream[first..second], &stream[second..]];
            let mut frames = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let opcode = if i == 0 { OP_BINARY } else { OP_CONTINUATION };
                frames.extend(client_frame(i == 2, opcode, part));
            }
            let (mut conn, mut client) = upgraded(&[]).await;
            // Written a byte at a time: headers split too.
            for byte in &frames {
                client.write_all(&[*byte]).await.unwrap();
            }
            assert_eq!(
                read_exactly(&mut conn, stream.len()).await,
                stream,
                "split {first}/{second}"
            );
        }
    }
}

#[tokio::test]
async fn many_frames_and_bytes_sent_with_the_upgrade_arrive_in_order() {
    let mut early = client_frame(true, OP_BINARY, b"abc");
    early.extend(client_frame(true, OP_BINARY, b"def"));
    let (mut conn, mut client) = upgraded(&early).await;
    client
        .write_all(&client_frame(true, OP_BINARY, &[7; 300]))
        .await
        .unwrap();
    let mut expected = b"abcdef".to_vec();
    expected.extend([7; 300]);
    assert_eq!(read_exactly(&mut conn, expected.len()).await, expected);
}

#[tokio::test]
async fn writes_go_out_as_unmasked_binary_frames() {
    let (mut conn, mut client) = upgraded(&[]).await;
    conn.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    conn.flush().await.unwrap();
    let mut frame = [0; 6];
    client.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame, [0x82, 0x04, 0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test]
async fn a_ping_is_answered_with_its_payload_and_the_stream_goes_on() {
    let (mut conn, mut client) = upgraded(&[]).await;
    let mut frames = client_frame(true, OP_PING, b"hi");
    frames.extend(client_frame(true, OP_PONG, b""));
    frames.extend(client_frame(true, OP_BINARY, b"x"));
    client.write_all(&frames).await.unwrap();
    assert_eq!(read_exactly(&mut conn, 1).await, b"x");
    let mut pong = [0; 4];
    client.read_exact(&mut pong).await.unwrap();
    assert_eq!(pong, [0x8A, 0x02, b'h', b'i']);
}

#[tokio::test]
async fn a_close_frame_is_echoed_and_ends_the_stream() {
    let (mut conn, mut client) = upgraded(&[]).await;
    client
        .write_all(&client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(conn.read_to_end(&mut rest).await.unwrap(), 0);
    let mut close = [0; 4];
    client.read_exact(&mut close).await.unwrap();
    assert_eq!(close, [0x88, 0x02, 0x03, 0xE8]);
}

async fn read_error(frame: Vec<u8>, max_frame: usize) -> io::Error {
    let (mut client, server) = duplex(1 << 20);
    client.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut conn = accept(server, "/mqtt", max_frame).await.unwrap();
    client.write_all(&frame).await.unwrap();
    let mut buf = [0; 16];
    conn.read(&mut buf).await.unwrap_err()
}

#[tokio::test]
async fn text_unmasked_oversized_and_stray_continuation_frames_are_errors() {
    // [MQTT-6.0.0-1]: MQTT travels in binary frames only.
    let text = read_error(client_frame(true, OP_TEXT, b"hello"), 1 << 20).await;
    assert!(text.to_string().contains("text frame"), "{text}");
    let mut unmasked = client_frame(true, OP_BINARY, b"x");
    unmasked[1] &= 0x7F;
    let unmasked = read_error(unmasked, 1 << 20).await;
    assert!(unmasked.to_string().contains("unmasked"), "{unmasked}");
    let oversized = read_error(client_frame(true, OP_BINARY, &[0; 2000]), 1024).await;
    assert!(oversized.to_string().contains("larger"), "{oversized}");
    let stray = read_error(client_frame(true, OP_CONTINUATION, b"x"), 1 << 20).await;
    assert!(stray.to_string().contains("out of order"), "{stray}");
}

#[tokio::test]
async fn upgrades_to_another_path_or_without_the_headers_are_refused() {
    for (request, status) in [
        (UPGRADE.replace("/mqtt", "/other"), "404"),
        (UPGRADE.replace("Upgrade: websocket\r\n", ""), "400"),
        (UPGRADE.replace("Version: 13", "Version: 8"), "400"),
        ("POST /mqtt HTTP/1.1\r\n\r\n".to_string(), "400"),
    ] {
        let (mut client, server) = duplex(1 << 16);
        client.write_all(request.as_bytes()).await.unwrap();
        assert!(accept(server, "/mqtt", 1 << 20).await.is_err());
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_parked_stream_keeps_its_place_in_a_frame() {
    let (mut conn, mut client) = upgraded(&[]).await;
    let frame = client_frame(true, OP_BINARY, b"abcdefgh");
    client.write_all(&frame[..frame.len() - 4]).await.unwrap();
    assert_eq!(read_exactly(&mut conn, 4).await, b"abcd");
    assert!(!conn.has_buffered_input());
    let (io, state) = conn.into_parts();
    let mut conn = WsConn::from_parts(io, state);
    client.write_all(&frame[frame.len() - 4..]).await.unwrap();
    assert_eq!(read_exactly(&mut conn, 4).await, b"efgh");
}

/// Polls one read: the bytes waiting are taken in and handled; `Pending`
/// when they give nothing to hand on.
async fn poll_read_once(conn: &mut WsConn<DuplexStream>) -> Poll<io::Result<Vec<u8>>> {
    let mut scratch = [0u8; 64];
    std::future::poll_fn(|cx| {
        let mut buf = ReadBuf::new(&mut scratch);
        let polled = Pin::new(&mut *conn)
            .poll_read(cx, &mut buf)
            .map_ok(|()| buf.filled().to_vec());
        Poll::Ready(polled)
    })
    .await
}

#[tokio::test]
async fn a_parked_stream_keeps_part_of_a_header_or_a_control_frame() {
    let (mut conn, mut client) = upgraded(&[]).await;
    let data = client_frame(true, OP_BINARY, b"abcdefgh");
    let ping = client_frame(true, OP_PING, b"ping!");
    for (frame, cut) in [(&data, 1), (&data, 5), (&ping, 8)] {
        client.write_all(&frame[..cut]).await.unwrap();
        assert!(poll_read_once(&mut conn).await.is_pending(), "cut at {cut}");
        assert!(!conn.has_buffered_input(), "cut at {cut}");
        let (io, state) = conn.into_parts();
        conn = WsConn::from_parts(io, state);
        client.write_all(&frame[cut..]).await.unwrap();
        if frame == &data {
            assert_eq!(read_exactly(&mut conn, 8).await, b"abcdefgh");
        } else {
            assert!(poll_read_once(&mut conn).await.is_pending());
            let mut pong = [0u8; 7];
            client.read_exact(&mut pong).await.unwrap();
            assert_eq!(pong, *b"\x8a\x05ping!");
        }
    }
}

#[tokio::test]
async fn a_whole_control_frame_read_ahead_is_buffered_input() {
    let (mut conn, mut client) = upgraded(&[]).await;
    // A whole ping after a binary frame's payload: read ahead, unanswered.
    let mut bytes = client_frame(true, OP_BINARY, b"ab");
    bytes.extend(client_frame(true, OP_PING, b""));
    client.write_all(&bytes).await.unwrap();
    assert_eq!(read_exactly(&mut conn, 2).await, b"ab");
    assert!(conn.has_buffered_input());
}

/// A pipe keeps one waiting writer, as a socket does: a pong the read side
/// cannot write must not take the place of the writer waiting on the same
/// full pipe, or the writer is never woken when the pipe drains.
#[tokio::test(start_paused = true)]
async fn a_pong_that_must_wait_does_not_strand_the_waiting_writer() {
    let (client, server) = duplex(256);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    client_write.write_all(UPGRADE.as_bytes()).await.unwrap();
    let conn = accept(server, "/mqtt", 1 << 20).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        answer.push(client_read.read_u8().await.unwrap());
    }
    let (mut read_half, mut write_half) = tokio::io::split(conn);
    let mut writer = tokio::spawn(async move {
        write_half.write_all(&[0x30; 10_000]).await.unwrap();
        write_half.flush().await.unwrap();
    });
    // With paused time, a sleep returns once every task waits: the writer
    // is blocked on the full pipe.
    tokio::time::sleep(Duration::from_millis(1)).await;
    client_write
        .write_all(&client_frame(true, OP_PING, b"p"))
        .await
        .unwrap();
    let _reader = tokio::spawn(async move {
        let mut buf = [0; 16];
        let _ = read_half.read(&mut buf).await;
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    // The client reads everything; the writer must finish.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = vec![0; 4096];
        loop {
            tokio::select! {
                done = &mut writer => return done.unwrap(),
                read = client_read.read(&mut buf) => assert!(read.unwrap() > 0),
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the writer was never woken");
}

/// Pongs the peer never reads are bounded: past `MAX_UNSENT` bytes of
/// replies waiting for the socket, the connection ends.
#[tokio::test]
async fn a_peer_that_pings_without_reading_is_closed() {
    let (client, server) = duplex(1024);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    client_write.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut conn = accept(server, "/mqtt", 1 << 20).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        answer.push(client_read.read_u8().await.unwrap());
    }
    let pings = MAX_UNSENT / 120 + 100;
    let sender = tokio::spawn(async move {
        let ping = client_frame(true, OP_PING, &[7; 125]);
        for _ in 0..pings {
            if client_write.write_all(&ping).await.is_err() {
                break;
            }
        }
        client_write
    });
    let mut buf = [0; 16];
    let error = conn.read(&mut buf).await.unwrap_err();
    assert!(error.to_string().contains("does not read"), "{error}");
    drop(conn);
    drop(sender.await.unwrap());
}
