//! Broker-wide counters. Every refusal, drop and disconnect the broker decides
//! on is counted here, next to its log line. Counters are monotonic except
//! `connections_current` and the gauges whose names end in `_current` or
//! `_bytes`.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Live counters, shared by every task.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $doc] pub $name: AtomicU64,)*
            /// The labelled series (per QoS, per listener and protocol
            /// version), exported by `GET /metrics` only.
            pub census: crate::census::Census,
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $(#[doc = $doc] pub $name: u64,)*
        }

        impl Metrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                let mut snapshot =
                    MetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* };
                // Derived, not counted twice on the hot paths.
                let census = &self.census;
                snapshot.messages_received = census.received_by_qos().iter().sum();
                snapshot.packets_received = census.packets_in.by_type().iter().sum();
                let sent = census.packets_out.by_type();
                snapshot.packets_sent = sent.iter().sum();
                snapshot.messages_sent = sent[crate::census::PUBLISH];
                snapshot
            }
        }

        /// Every counter's doc string, in declaration order (the HELP of
        /// `GET /metrics`).
        pub const DOCS: &[&str] = &[$($doc,)*];

        impl MetricsSnapshot {
            /// Every counter with its name, in declaration order.
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    connections_accepted: "TCP connections accepted.",
    connections_current: "Connections past CONNECT open now, resting ones included (each holds one of `max_connections`; sockets before CONNECT are `pending_current`).",
    connections_rested: "Times a connection with nothing to do rested in the dormitory (freed its tasks and buffers).",
    connections_refused_limit: "Connections closed at once because `max_connections` was reached.",
    connect_timeouts: "Connections closed for sending no CONNECT in time.",
    connacks_refused: "CONNECTs answered with a non-zero return code.",
    protocol_errors: "Connections closed for a malformed packet or a protocol violation.",
    packets_too_large: "Connections closed for a packet over `max_packet_size`.",
    keepalive_timeouts: "Connections closed after 1.5 x keepalive without a packet.",
    write_timeouts: "Connections closed because a write made no progress for `write_timeout_ms`.",
    takeovers: "Connections closed because another connection took over their client id.",
    clients_kicked: "Connections closed by the admin API (DELETE /api/clients/{id}).",
    wills_published: "Will messages published.",
    messages_received: "PUBLISH packets received from clients (worked out when read, from the counts by QoS: the field itself is never added to).",
    messages_sent: "PUBLISH packets handed to write tasks (worked out when read, from the packets sent by type).",
    dropped_qos0_offline: "QoS 0 messages not queued because their session was offline.",
    dropped_queue_full: "Messages dropped because a session's mailbox held `max_queued_messages` or `max_queued_bytes`.",
    held_for_slow_subscribers: "QoS 1/2 deliveries queued beyond a full mailbox, delaying their publisher's acknowledgement.",
    slow_subscriber_disconnects: "Sessions disconnected for staying over `max_queued_messages` for `slow_subscriber_timeout_ms`.",
    pending_evicted: "Sockets that had not finished CONNECT, closed to make room under `max_pending`.",
    pending_current: "Sockets accepted that have not finished CONNECT yet, now (gauge, at most `max_pending`).",
    connections_refused_per_address: "Connections closed at once because their address had `max_connections_per_address`.",
    connect_rate_waits: "Times an accept loop paused because its listener's `max_connect_rate` was used up.",
    handshakes_failed: "TLS handshakes and WebSocket upgrades that failed (bad certificate, no certificate where one is required, not a WebSocket request, ...).",
    logins_refused: "CONNECTs refused for a bad user name or password, or anonymous where not allowed (CONNACK 0x05 / 0x86 / 0x87).",
    logins_delayed: "CONNECT answers delayed because their address had failed logins recently.",
    acl_denied_publish: "PUBLISHes (and wills) dropped because the ACL denies their topic to the client (MQTT 5 QoS 1/2: acknowledged with 0x87).",
    acl_denied_subscribe: "Subscriptions refused because the ACL lets the client read no topic the filter matches (SUBACK 0x80 / 0x87).",
    acl_denied_delivery: "Deliveries (retained and $SYS ones included) not sent because the ACL denies the client reading their topic.",
    takeovers_refused: "CONNECTs refused because another user holds the client id (`auth.takeover = \"same_user\"`).",
    packet_read_timeouts: "Connections closed because a packet took longer than `packet_read_timeout_ms` to arrive.",
    client_ids_refused: "CONNECTs refused for a client id over `max_client_id_len`.",
    topics_refused_limit: "Topic names and filters refused for breaking `max_topic_levels` or `max_topic_len`.",
    subscriptions_refused_limit: "Filters refused (SUBACK 0x80) because the session had `max_subscriptions_per_client`.",
    retained_refused_limit: "Retained messages not stored because of `max_retained_messages` or `max_retained_bytes`.",
    bridge_messages_out: "Messages a bridge delivered to its remote broker (QoS 1/2 once the remote acknowledged them).",
    bridge_messages_in: "Messages a bridge received from its remote broker and routed locally.",
    bridge_reconnects: "Times a bridge connected to its remote broker again after losing the connection.",
    memory_limit_refusals: "Messages dropped, publishes and connections refused while over `memory_limit_mb`.",
    messages_expired: "Queued messages dropped because their MQTT 5 Message Expiry Interval passed.",
    dropped_too_large: "Deliveries dropped because they exceed the subscriber's MQTT 5 Maximum Packet Size.",
    receive_maximum_exceeded: "MQTT 5 connections closed (0x93) for more unacknowledged QoS 1/2 PUBLISHes than `receive_maximum`.",
    wills_delayed: "MQTT 5 wills held for their Will Delay Interval.",
    shared_redelivered: "Messages of a shared subscription given to another member after the session that had them ended unacknowledged.",
    dropped_shared_no_member: "Messages of a shared subscription dropped because the session that had them ended and no member was left.",
    sessions_expired: "Offline persistent sessions removed after `session_expiry_secs`.",
    sessions_current: "Sessions known now, online or offline (gauge).",
    sessions_offline_current: "Persistent sessions waiting offline for their client now (gauge).",
    subscriptions_current: "Subscriptions held now (gauge).",
    retained_messages_current: "Retained messages stored now (gauge).",
    retained_bytes_current: "Bytes (topic + payload) of the retained messages stored now (gauge).",
    memory_accounted_bytes: "Bytes counted against `memory_limit_mb` now (gauge).",
    storage_commits: "Commits written to the store (each one frame, from many connections' writes).",
    storage_fsyncs: "fsyncs of the store's log (one per commit unless `sync = \"never\"`).",
    storage_errors: "Failed writes or compactions of the store (retried; acknowledgements wait).",
    storage_compactions: "Times the store's log was rewritten to its live records.",
    storage_bytes_current: "Bytes of the store's log on disk now (gauge).",
    storage_live_bytes_current: "Bytes of live records in the store now, roughly (gauge).",
    storage_recovered_messages: "Queued messages loaded from the store at start.",
    dropped_storage_full: "Deliveries to persistent sessions not queued because the store reached `storage.max_bytes`.",
    retained_refused_storage_full: "Retained messages not stored because the store reached `storage.max_bytes`.",
    connects_received: "CONNECT packets received, accepted or refused.",
    connections_max: "Most connections past CONNECT open at once since the start (a high-water mark: it only rises).",
    packets_received: "MQTT packets of any type received (CONNECT included; not AUTH during CONNECT); worked out when read, from the counts by type.",
    packets_sent: "MQTT packets of any type handed to write tasks (CONNACK included); worked out when read, from the counts by type.",
    bytes_received: "Bytes of the whole MQTT packets received (inside TLS and WebSocket framing).",
    bytes_sent: "Bytes of MQTT packets written to sockets (inside TLS and WebSocket framing).",
}

impl Metrics {
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn decr(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }

    /// Counts one packet written outside a session's batches (a CONNACK,
    /// a server's DISCONNECT), from its encoded bytes.
    pub fn sent_packet(&self, packet: &[u8]) {
        self.census.packets_out.one(packet);
    }

    /// Raises a high-water mark to `n` if it is lower.
    pub fn raise(counter: &AtomicU64, n: u64) {
        counter.fetch_max(n, Ordering::Relaxed);
    }
}
