//! tidemq: an MQTT 3.1 / 3.1.1 broker.
//!
//! | module       | owns                                                      |
//! |--------------|-----------------------------------------------------------|
//! | `config`     | typed, layered, validated settings                        |
//! | `check`      | `check-config`: the listeners' files loaded, nothing bound |
//! | `server`     | start (files, store, bind, recovery) and shutdown          |
//! | `listener`   | one `[[listener]]`: accept loop, connect rate, TLS/WS set-up |
//! | `transport`  | TCP, TLS and WebSocket streams, and how each rests        |
//! | `security`   | password and ACL files, login delays, SCRAM-SHA-256       |
//! | `admission`  | pending sockets, connection slots, per-address counts     |
//! | `auth`       | the MQTT 5 enhanced-authentication plug-in trait          |
//! | `connection` | one client: handshake, read task, write task, session task|
//! | `dormitory`  | idle connections, without tasks, on one watching thread   |
//! | `session`    | pure QoS state machines (in-flight window, QoS 2 ids)     |
//! | `registry`   | client id -> session slot; takeover; offline since when   |
//! | `expiry`     | removes offline persistent sessions past their expiry     |
//! | `mailbox`    | the bounded queue from the router to one session          |
//! | `router`     | subscriptions, retained messages, fan-out                 |
//! | `metrics`    | counters for every decision the broker makes              |
//! | `census`     | labelled series: messages by QoS, connections by listener |
//! | `http`       | `[http]`: /metrics, /healthz, /readyz, admin API, dashboard |
//! | `sys`        | `$SYS/broker/`: mosquitto's names and the counters        |
//! | `embed`      | `Broker::publish` / `subscribe`: in-process sessions      |
//! | `bridge`     | `[[bridge]]`: a remote broker's client, a persistent local session |
//! | `budget`     | the bytes counted against `limits.memory_limit_mb`        |
//! | `store`      | what survives a restart: the log, group commit, recovery  |
//! | `recovery`   | the store's content back into registry, router, sessions  |
//! | `throttle`   | at most one log line a second per kind of refusal         |
//!
//! The path of one PUBLISH: publisher socket -> read task -> session task ->
//! router channel -> router (trie match) -> each subscriber's mailbox ->
//! subscriber's session task -> write task -> subscriber socket.

mod admission;
pub mod auth;
#[doc(hidden)]
pub mod bench_api;
mod bridge;
mod budget;
mod census;
mod check;
pub mod config;
mod connection;
mod dormitory;
pub mod embed;
mod expiry;
mod http;
mod latency;
mod listener;
mod mailbox;
pub mod metrics;
mod recovery;
mod registry;
mod reload;
mod router;
pub mod security;
mod server;
mod session;
mod store;
mod sys;
mod throttle;
mod transport;
mod types;

pub use check::check_config;
pub use config::{ConfigError, Overrides, Settings};
pub use embed::{EmbedError, Subscription};
pub use metrics::MetricsSnapshot;
pub use server::{run, run_with_reload, Broker, StartError};
/// The QoS of [`Broker::publish`] and [`Broker::subscribe`].
pub use tidemq_protocol::QoS;
