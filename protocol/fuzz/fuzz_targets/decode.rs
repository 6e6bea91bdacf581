//! Feeds arbitrary bytes through the read path of one connection: the
//! framer, `decode_connect` on the first frame, `decode_packet` on the rest,
//! in the version the CONNECT named (3.1.1 when it failed to decode), and
//! every frame also through the MQTT 5 decoders and `decode_server_packet`.
//! Unlike the broker it keeps going after a decode error, so every frame in
//! the input reaches a decoder. Oracles: no panic; no frame above the limit;
//! whatever `decode_packet` accepts re-encodes to bytes it accepts again as
//! the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidemq_protocol::{
    decode_connect, decode_packet, decode_server_packet, encode_connect, encode_packet, Framer,
    ProtocolVersion,
};

/// Small enough that the fuzzer reaches the limit, large enough for real
/// packets.
const MAX_PACKET_SIZE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let framer = Framer::new(MAX_PACKET_SIZE);
    let mut buf = BytesMut::from(data);
    let mut version = None;
    while let Ok(Some(frame)) = framer.next_frame(&mut buf) {
        assert!(frame.bytes.len() <= MAX_PACKET_SIZE);
        // Whatever the connection's version, the v5 readers must not panic.
        let _ = decode_packet(&frame, ProtocolVersion::V5);
        let _ = decode_server_packet(&frame, ProtocolVersion::V5);
        let _ = decode_server_packet(&frame, ProtocolVersion::V311);
        let Some(version) = version else {
            let connect = decode_connect(&frame);
            if let Ok(connect) = &connect {
                // A decoded CONNECT re-encodes to itself.
                let mut again = BytesMut::new();
                encode_connect(connect, &mut again);
                let reframed = framer.next_frame(&mut again);
                let redecoded = reframed.map(|f| f.map(|f| decode_connect(&f)));
                assert_eq!(redecoded, Ok(Some(Ok(connect.clone()))));
            }
            version = Some(connect.map_or(ProtocolVersion::V311, |c| c.version));
            continue;
        };
        let Ok(packet) = decode_packet(&frame, version) else {
            continue;
        };
        let mut again = BytesMut::new();
        encode_packet(&packet, version, &mut again);
        let reframed = framer.next_frame(&mut again);
        let redecoded = reframed.map(|f| f.map(|f| decode_packet(&f, version)));
        assert_eq!(
            redecoded,
            Ok(Some(Ok(packet))),
            "re-encoding changed the packet"
        );
        assert!(again.is_empty());
    }
});
