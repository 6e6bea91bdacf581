//! Typed settings and their layered loading: the compiled-in default file
//! (`configs/tidemq.toml`), then an optional file, then `TIDEMQ_*`
//! environment variables, then CLI overrides. Validation errors name the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;
use thiserror::Error;

/// The default configuration, also the reference for every key.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/tidemq.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[connections]`: what every listener's connections share.
    pub connections: ConnectionSettings,
    /// `[[listener]]`: where clients connect, and how.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub auth: AuthSettings,
    pub limits: Limits,
    pub sys: SysSettings,
    pub log: LogSettings,
    pub storage: StorageSettings,
    /// `[http]`: metrics, health, the admin API and the dashboard.
    pub http: HttpSettings,
    /// `[[bridge]]`: connections to other brokers (see `crate::bridge`).
    #[serde(default, rename = "bridge")]
    pub bridges: Vec<BridgeConfig>,
}

/// `[[bridge]]`: one connection to a remote broker, read as mosquitto reads
/// its bridge settings. Compared whole by a reload: a bridge whose table is
/// unchanged keeps running.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names the bridge in logs and in the default client id; unique.
    pub name: String,
    /// The remote broker, "host:port": plain TCP, or TLS with `tls`.
    /// Several, separated by spaces: tried in turn, the next one after
    /// each failed attempt or lost connection.
    pub address: String,
    /// The client id on the remote; default `tidemq-bridge-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Whether the remote session is clean (default false: it keeps our
    /// subscriptions and queued messages while the bridge is down).
    #[serde(default)]
    pub clean_session: bool,
    /// mosquitto `topic` lines: "PATTERN in|out|both QOS [LOCAL_PREFIX REMOTE_PREFIX]".
    pub topics: Vec<String>,
    /// Milliseconds before the first reconnect; doubles up to the max.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Messages taken for the remote and not yet done, at most: QoS 1/2
    /// ones until the remote acknowledges them, QoS 0 ones and
    /// notifications until they are handed to the client library
    /// (mosquitto's `max_inflight_messages`, default 20, which is also how
    /// many QoS 2 messages a mosquitto remote takes from a client at a
    /// time: it acknowledges and drops those past it).
    #[serde(default = "default_bridge_max_inflight")]
    pub max_inflight: u16,
    /// TLS to the remote; absent: plain TCP.
    #[serde(default)]
    pub tls: Option<BridgeTls>,
    /// mosquitto's `notifications` (default true): the connection state,
    /// retained "1" / "0", on [`BridgeConfig::notification_topic`], on the
    /// remote (with the will for "0") and here.
    #[serde(default = "default_notifications")]
    pub notifications: bool,
    /// mosquitto's `notification_topic`; default
    /// `$SYS/broker/connection/<client id on the remote>/state`.
    #[serde(default)]
    pub notification_topic: Option<String>,
    /// mosquitto's `notifications_local_only` (default false): the
    /// connection state is published here only; the remote gets neither
    /// the "1" nor the will.
    #[serde(default)]
    pub notifications_local_only: bool,
}

/// A bridge's `tls = { ... }`: PEM files, named after mosquitto's
/// `bridge_cafile`, `bridge_certfile`, `bridge_keyfile`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// The CA(s) the remote's certificate must chain to.
    pub ca_file: PathBuf,
    /// Our certificate and its key, for a remote that asks for one; both
    /// or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the remote's certificate must carry; default the host of
    /// `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// mosquitto's `bridge_insecure`: the certificate's chain is checked,
    /// its name is not. Default false.
    #[serde(default)]
    pub insecure: bool,
}

fn default_reconnect_min_ms() -> u64 {
    500
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

fn default_bridge_max_inflight() -> u16 {
    20
}

fn default_notifications() -> bool {
    true
}

impl BridgeConfig {
    /// The client id used on the remote.
    pub fn remote_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("tidemq-bridge-{}", self.name))
    }

    /// Where the connection state is published; `None` without
    /// notifications.
    pub fn notification_topic(&self) -> Option<String> {
        if !self.notifications {
            return None;
        }
        Some(
            self.notification_topic.clone().unwrap_or_else(|| {
                format!("$SYS/broker/connection/{}/state", self.remote_client_id())
            }),
        )
    }

    /// Where the connection state is published on the remote; `None`
    /// without notifications, or with them here only.
    pub fn remote_notification_topic(&self) -> Option<String> {
        if self.notifications_local_only {
            return None;
        }
        self.notification_topic()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(invalid("bridge.name", "must not be empty"));
        }
        let Some(addresses) = crate::bridge::split_addresses(&self.address) else {
            return Err(invalid(
                "bridge.address",
                "must be \"host:port\", or several separated by spaces",
            ));
        };
        if self.topics.is_empty() {
            return Err(invalid("bridge.topics", "must list at least one topic"));
        }
        for line in &self.topics {
            if let Err(problem) = crate::bridge::TopicRule::parse(line) {
                return Err(invalid("bridge.topics", &format!("{line:?}: {problem}")));
            }
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(invalid(
                "bridge.reconnect_max_ms",
                "must be at least bridge.reconnect_min_ms, which must be positive",
            ));
        }
        if !(1..=crate::bridge::MAX_INFLIGHT).contains(&self.max_inflight) {
            return Err(invalid(
                "bridge.max_inflight",
                &format!("must be 1 to {}", crate::bridge::MAX_INFLIGHT),
            ));
        }
        if let Some(topic) = self.notification_topic() {
            if let Err(problem) = tidemq_protocol::TopicName::new(&topic) {
                return Err(invalid(
                    "bridge.notification_topic",
                    &format!("{topic:?} (from the client id when not set): {problem}"),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            for (host, _) in &addresses {
                tls.validate(host)?;
            }
        }
        Ok(())
    }
}

impl BridgeTls {
    /// What can be checked without the files, which the start loads.
    fn validate(&self, host: &str) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                "bridge.tls.key_file",
                "bridge.tls.cert_file and key_file go together",
            ));
        }
        // rumqttc sends the host as the TLS server name.
        if crate::bridge::server_name_is_valid(host).is_err() {
            return Err(invalid(
                "bridge.address",
                "with tls, the host must be a DNS name or an IP address",
            ));
        }
        if let Some(name) = &self.server_name {
            if let Err(problem) = crate::bridge::server_name_is_valid(name) {
                return Err(invalid("bridge.tls.server_name", &problem));
            }
        }
        Ok(())
    }
}

/// `[http]`: the HTTP listener (see `crate::http`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `"address:port"`; empty: no HTTP listener.
    pub bind: String,
    /// The admin API's bearer token; empty: the API answers loopback peers
    /// only.
    pub token: String,
}

/// `[storage]`: what is kept on disk, where, and when it counts as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub enabled: bool,
    pub dir: std::path::PathBuf,
    pub sync: SyncMode,
    pub batch_max_delay_us: u64,
    pub max_bytes: u64,
    pub compact_min_bytes: u64,
}

/// When a write counts as durable (see `store`): after its own fsync, after
/// an fsync shared with the writes gathered for up to
/// `batch_max_delay_us`, or once handed to the OS without an fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Always,
    Batch,
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysSettings {
    pub interval_secs: u64,
}

/// One `[[listener]]`: an address, the protocol spoken on it, and who may
/// connect there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// The HTTP path a WebSocket upgrade must ask for.
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Overrides `auth.allow_anonymous` on this listener.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// Connections past CONNECT on this listener, at most; 0: only
    /// `connections.max_connections` applies.
    #[serde(default)]
    pub max_connections: usize,
    /// New sockets per second this listener accepts; 0: no limit. Absent:
    /// `connections.max_connect_rate`.
    #[serde(default)]
    pub max_connect_rate: Option<u32>,
    /// Override `auth.password_file` / `auth.acl_file` on this listener.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub acl_file: Option<PathBuf>,
}

impl ListenerConfig {
    /// A plain MQTT listener on `bind`, everything else default.
    pub fn mqtt(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            bind,
            protocol: ListenerProtocol::Mqtt,
            ws_path: default_ws_path(),
            tls: None,
            allow_anonymous: None,
            max_connections: 0,
            max_connect_rate: None,
            password_file: None,
            acl_file: None,
        }
    }
}

fn default_ws_path() -> String {
    "/mqtt".to_string()
}

/// What a listener speaks: MQTT straight on the (TLS) stream, or MQTT in
/// WebSocket binary frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    #[default]
    Mqtt,
    Ws,
}

/// A listener's `tls = { ... }`: PEM files, and whether clients must show
/// a certificate signed by `client_ca`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub require_certificate: bool,
    /// The client certificate's Common Name (or, without one, its first
    /// Subject Alternative Name) becomes the user name; the CONNECT's user
    /// name and password are ignored.
    #[serde(default)]
    pub use_identity_as_username: bool,
}

/// `[auth]`: who may connect, and what they may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub allow_anonymous: bool,
    /// mosquitto-format password file; empty: no user names are checked.
    pub password_file: PathBuf,
    /// mosquitto-format ACL file; empty: every client may do everything.
    pub acl_file: PathBuf,
    /// Who may take over a connected or stored session's client id.
    pub takeover: Takeover,
    /// A refused login from an address delays that address's next CONNECT
    /// answers by this much, doubling per failure up to
    /// `failed_login_max_delay_ms`.
    pub failed_login_delay_ms: u64,
    pub failed_login_max_delay_ms: u64,
    /// Password hashes computed at once, at most (argon2id takes ~20 MiB
    /// and tens of milliseconds each); others wait their turn.
    pub max_concurrent_hashes: usize,
    /// Offer SCRAM-SHA-256 enhanced authentication (MQTT 5) against the
    /// password file's SCRAM entries.
    pub scram: bool,
}

/// Who may take over a client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Takeover {
    /// Only a connection with the same user name (anonymous by anonymous).
    SameUser,
    /// Any client (MQTT's default rule).
    Any,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSettings {
    pub tcp_nodelay: bool,
    pub tcp_keepalive_secs: u64,
    pub max_connections: usize,
    pub connect_timeout_ms: u64,
    pub max_pending: usize,
    pub max_connections_per_address: usize,
    pub server_reference: String,
    pub server_moved: bool,
    /// New sockets per second one listener accepts, at most (a listener's
    /// `max_connect_rate` overrides it); beyond it the accept loop pauses
    /// (`connect_rate_waits`). 0: no limit.
    pub max_connect_rate: u32,
    /// Bytes in one WebSocket frame, at most; a larger frame closes the
    /// connection.
    pub ws_max_frame_bytes: usize,
}

impl ConnectionSettings {
    /// Where MQTT 5 clients are sent when this broker cannot serve them:
    /// the reference, and whether the move is permanent (0x9D) or not
    /// (0x9C). `None` when `server_reference` is empty.
    pub fn redirect(&self) -> Option<(&str, tidemq_protocol::ReasonCode)> {
        use tidemq_protocol::ReasonCode;
        let reason = match self.server_moved {
            true => ReasonCode::SERVER_MOVED,
            false => ReasonCode::USE_ANOTHER_SERVER,
        };
        (!self.server_reference.is_empty()).then_some((self.server_reference.as_str(), reason))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory_limit_mb: u64,
    pub max_subscriptions_per_client: usize,
    pub max_topic_levels: usize,
    pub max_topic_len: usize,
    pub max_client_id_len: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub session_expiry_secs: u64,
    pub packet_read_timeout_ms: u64,
    pub max_queued_bytes: usize,
    pub max_packet_size: usize,
    pub max_connect_packet_size: usize,
    pub max_keepalive_secs: u16,
    pub max_inflight: usize,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub shared_subscription_strategy: crate::router::shared::Strategy,
    pub max_queued_messages: usize,
    pub inbound_queue: usize,
    pub outbound_queue: usize,
    pub router_queue: usize,
    pub write_batch_bytes: usize,
    pub write_timeout_ms: u64,
    pub slow_subscriber_timeout_ms: u64,
    pub rest_after_ms: u64,
    pub shutdown_grace_ms: u64,
}

/// `[log]`: what is logged, and how each line looks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Level directives, as in `RUST_LOG` (see [`check_log_filter`]).
    pub level: String,
    pub format: LogFormat,
}

/// How a log line is written: for people, or one JSON object a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The levels a directive may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks level directives (`log.level`, `RUST_LOG`): comma-separated, each
/// `LEVEL` or `TARGET=LEVEL` (`TARGET[SPAN]=LEVEL`), LEVEL one of
/// [`LOG_LEVELS`] in any case. Stricter than `EnvFilter`, which takes a
/// bare word such as `inf` as a target and then logs nothing at all.
pub fn check_log_filter(directives: &str) -> Result<(), String> {
    if directives.trim().is_empty() {
        return Err("is empty: name a level (off, error, warn, info, debug, trace)".to_string());
    }
    for directive in directives.split(',').map(str::trim) {
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (Some(target.trim()), level.trim()),
            None => (None, directive),
        };
        let known = LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level));
        if !known || target.is_some_and(str::is_empty) {
            return Err(format!(
                "has `{directive}`: each comma-separated part must be LEVEL or TARGET=LEVEL, \
                 LEVEL one of off, error, warn, info, debug, trace"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(directives)
        .map(drop)
        .map_err(|error| format!("is not a valid filter: {error}"))
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
    #[error("config: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// Overrides given on the command line; they win over every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub port: Option<u16>,
}

impl Settings {
    /// Loads the layers in order: default, `file`, environment, `overrides`.
    pub fn load(file: Option<&str>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_CONFIG, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::new(path, FileFormat::Toml).required(true));
        }
        let (environment, first_bind) = environment();
        builder = builder.add_source(environment);
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        if let Some(bind) = first_bind {
            let bind = bind
                .parse::<SocketAddr>()
                .map_err(|error| invalid("TIDEMQ_LISTENER__BIND", &error.to_string()))?;
            match settings.listeners.first_mut() {
                Some(first) => first.bind = bind,
                None => settings.listeners.push(ListenerConfig::mqtt(bind)),
            }
        }
        if let Some(port) = overrides.port {
            match settings.listeners.first_mut() {
                Some(first) => first.bind.set_port(port),
                None => settings
                    .listeners
                    .push(ListenerConfig::mqtt(SocketAddr::from(([0, 0, 0, 0], port)))),
            }
        }
        settings.validate()?;
        Ok(settings)
    }

    /// The defaults alone, for tests and embedding.
    pub fn defaults() -> Result<Settings, ConfigError> {
        let settings: Settings = Config::builder()
            .add_source(File::from_str(DEFAULT_CONFIG, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the values serde cannot: zero sizes, empty lists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, usize); 19] = [
            (
                "connections.max_connections",
                self.connections.max_connections,
            ),
            ("connections.max_pending", self.connections.max_pending),
            (
                "limits.memory_limit_mb",
                self.limits.memory_limit_mb as usize,
            ),
            (
                "limits.max_subscriptions_per_client",
                self.limits.max_subscriptions_per_client,
            ),
            ("limits.max_topic_levels", self.limits.max_topic_levels),
            ("limits.max_topic_len", self.limits.max_topic_len),
            ("limits.max_client_id_len", self.limits.max_client_id_len),
            (
                "limits.max_retained_messages",
                self.limits.max_retained_messages,
            ),
            ("limits.max_retained_bytes", self.limits.max_retained_bytes),
            ("limits.max_queued_bytes", self.limits.max_queued_bytes),
            (
                "limits.packet_read_timeout_ms",
                self.limits.packet_read_timeout_ms as usize,
            ),
            ("limits.max_inflight", self.limits.max_inflight),
            (
                "limits.receive_maximum",
                usize::from(self.limits.receive_maximum),
            ),
            (
                "limits.max_queued_messages",
                self.limits.max_queued_messages,
            ),
            ("limits.inbound_queue", self.limits.inbound_queue),
            ("limits.outbound_queue", self.limits.outbound_queue),
            ("limits.router_queue", self.limits.router_queue),
            ("limits.write_batch_bytes", self.limits.write_batch_bytes),
            (
                "limits.write_timeout_ms",
                self.limits.write_timeout_ms as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.listeners.is_empty() {
            return Err(invalid("listener", "must list at least one [[listener]]"));
        }
        if self.listeners.iter().any(|l| !l.ws_path.starts_with('/')) {
            return Err(invalid("listener.ws_path", "must start with '/'"));
        }
        if self.auth.max_concurrent_hashes == 0 {
            return Err(invalid(
                "auth.max_concurrent_hashes",
                "must be greater than 0",
            ));
        }
        if self.connections.ws_max_frame_bytes < 1024 {
            return Err(invalid(
                "connections.ws_max_frame_bytes",
                "must be at least 1024 bytes",
            ));
        }
        if self.limits.max_packet_size < 64 {
            return Err(invalid(
                "limits.max_packet_size",
                "must be at least 64 bytes",
            ));
        }
        if self.limits.max_packet_size > tidemq_protocol::MAX_REMAINING_LENGTH + 5 {
            return Err(invalid("limits.max_packet_size", "exceeds MQTT's 256 MB"));
        }
        if self.limits.max_connect_packet_size < 64 {
            return Err(invalid(
                "limits.max_connect_packet_size",
                "must be at least 64 bytes",
            ));
        }
        if self.limits.max_topic_levels > tidemq_protocol::MAX_TOPIC_LEVELS {
            return Err(invalid("limits.max_topic_levels", "must be at most 200"));
        }
        if self.limits.max_topic_len > usize::from(u16::MAX) {
            return Err(invalid("limits.max_topic_len", "must be at most 65535"));
        }
        if self.limits.max_client_id_len < 23 {
            // [MQTT-3.1.3-5]: ids of 1 to 23 bytes must be allowed.
            return Err(invalid(
                "limits.max_client_id_len",
                "must be at least 23 bytes [MQTT-3.1.3-5]",
            ));
        }
        if self.limits.max_inflight > usize::from(u16::MAX) {
            return Err(invalid("limits.max_inflight", "must be at most 65535"));
        }
        if self.storage.enabled && self.storage.dir.as_os_str().is_empty() {
            return Err(invalid("storage.dir", "must name a directory"));
        }
        if self.storage.max_bytes < 1024 * 1024 {
            return Err(invalid("storage.max_bytes", "must be at least 1 MiB"));
        }
        if let Err(problem) = check_log_filter(&self.log.level) {
            return Err(invalid("log.level", &problem));
        }
        if !self.http.bind.is_empty() && self.http.bind.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.bind",
                "must be \"address:port\" (or empty for no HTTP listener)",
            ));
        }
        if self.storage.batch_max_delay_us > 1_000_000 {
            return Err(invalid(
                "storage.batch_max_delay_us",
                "must be at most 1000000 (one second)",
            ));
        }
        for (n, bridge) in self.bridges.iter().enumerate() {
            bridge.validate()?;
            if self.bridges.iter().take(n).any(|b| b.name == bridge.name) {
                return Err(invalid(
                    "bridge.name",
                    &format!("{:?} names two bridges", bridge.name),
                ));
            }
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connections.connect_timeout_ms)
    }

    pub fn slow_subscriber_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.slow_subscriber_timeout_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.write_timeout_ms)
    }

    /// `None` when `$SYS` publication is off.
    pub fn sys_interval(&self) -> Option<Duration> {
        (self.sys.interval_secs > 0).then(|| Duration::from_secs(self.sys.interval_secs))
    }

    /// The HTTP listener's address; `None` when `http.bind` is empty.
    pub fn http_bind(&self) -> Option<SocketAddr> {
        self.http.bind.parse().ok()
    }

    /// `None` when connections never rest.
    pub fn rest_after(&self) -> Option<Duration> {
        (self.limits.rest_after_ms > 0).then(|| Duration::from_millis(self.limits.rest_after_ms))
    }

    /// `None` when offline persistent sessions never expire.
    pub fn session_expiry(&self) -> Option<Duration> {
        (self.limits.session_expiry_secs > 0)
            .then(|| Duration::from_secs(self.limits.session_expiry_secs))
    }

    pub fn packet_read_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.packet_read_timeout_ms)
    }

    /// `limits.memory_limit_mb` in bytes.
    pub fn memory_limit_bytes(&self) -> u64 {
        self.limits.memory_limit_mb.saturating_mul(1024 * 1024)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.limits.shutdown_grace_ms)
    }
}

/// The `TIDEMQ_<SECTION>__<KEY>` variables as a config source, and
/// `TIDEMQ_LISTENER__BIND` apart: it sets the first `[[listener]]`'s
/// address, as `-p` sets its port (an array of tables has no key a variable
/// could name). Variables without the double underscore (`TIDEMQ_HOME`) are
/// not config and are left alone.
fn environment() -> (Environment, Option<String>) {
    let mut first_bind = None;
    let mut vars = std::collections::HashMap::new();
    for (name, value) in std::env::vars() {
        let Some(key) = name.strip_prefix("TIDEMQ_") else {
            continue;
        };
        if key.eq_ignore_ascii_case("LISTENER__BIND") {
            first_bind = Some(value);
        } else if key.contains("__") {
            vars.insert(name, value);
        }
    }
    let source = Environment::with_prefix("TIDEMQ")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(vars));
    (source, first_bind)
}

fn invalid(key: &'static str, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_loads_and_validates() {
        let settings = Settings::defaults().unwrap();
        assert_eq!(settings.listeners[0].bind.port(), 1883);
        assert_eq!(settings.listeners.len(), 1);
        assert_eq!(settings.limits.max_packet_size, 1024 * 1024);
        assert_eq!(settings.connections.connect_timeout_ms, 10_000);
    }

    #[test]
    fn port_override_changes_the_first_listener() {
        let settings = Settings::load(None, &Overrides { port: Some(1999) }).unwrap();
        assert_eq!(settings.listeners[0].bind.port(), 1999);
    }

    #[test]
    fn zero_window_names_the_key() {
        let mut settings = Settings::defaults().unwrap();
        settings.limits.max_inflight = 0;
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.contains("limits.max_inflight"), "{message}");
    }

    #[test]
    fn log_filters_are_levels_or_target_levels() {
        for good in [
            "info",
            "WARN",
            "off",
            "warn,tidemq::store=info",
            "tidemq[conn]=debug, trace",
        ] {
            assert_eq!(check_log_filter(good), Ok(()), "{good}");
        }
        for bad in [
            "inf",
            "[",
            "",
            " ",
            "tidemq",
            "=info",
            "info,",
            "tidemq=loud",
            "3",
        ] {
            assert!(check_log_filter(bad).is_err(), "{bad:?} accepted");
        }
        let mut settings = Settings::defaults().unwrap();
        settings.log.level = "inf".to_string();
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.contains("`log.level` has `inf`"), "{message}");
    }

    #[test]
    fn unknown_key_in_a_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("tidemq-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[limits]\nmax_inflihgt = 5\n").unwrap();
        let message = Settings::load(path.to_str(), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("max_inflihgt"), "{message}");
    }
}

#[cfg(test)]
mod listener_tests {
    use super::*;

    fn load_text(name: &str, text: &str) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("tidemq-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Settings::load(path.to_str(), &Overrides::default())
    }

    #[test]
    fn listeners_in_a_file_replace_the_default_one() {
        let settings = load_text(
            "listeners.toml",
            r#"
[[listener]]
bind = "127.0.0.1:8883"
tls = { cert = "server.pem", key = "server.key", client_ca = "ca.pem", require_certificate = true }
allow_anonymous = false

[[listener]]
bind = "127.0.0.1:8080"
protocol = "ws"
ws_path = "/ws"
"#,
        )
        .unwrap();
        assert_eq!(settings.listeners.len(), 2);
        let tls = settings.listeners[0].tls.as_ref().unwrap();
        assert!(tls.require_certificate);
        assert_eq!(settings.listeners[0].protocol, ListenerProtocol::Mqtt);
        assert_eq!(settings.listeners[0].allow_anonymous, Some(false));
        assert_eq!(settings.listeners[1].protocol, ListenerProtocol::Ws);
        assert_eq!(settings.listeners[1].ws_path, "/ws");
        assert!(settings.listeners[1].tls.is_none());
    }

    #[test]
    fn an_unknown_listener_key_is_an_error_naming_it() {
        let message = load_text(
            "badlistener.toml",
            "[[listener]]\nbind = \"127.0.0.1:1\"\nprotocl = \"ws\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("protocl"), "{message}");
    }
}

#[cfg(test)]
mod bridge_tests {
    use super::*;

    fn load_text(name: &str, text: &str) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("tidemq-bridge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Settings::load(path.to_str(), &Overrides::default())
    }

    #[test]
    fn a_bridge_table_loads_with_its_defaults() {
        let settings = load_text(
            "bridge.toml",
            "[[bridge]]\nname = \"hq\"\naddress = \"10.0.0.1:1883\"\n\
             topics = [\"sensors/# out 1\", \"cmd/# in 2 \\\"\\\" site1/\"]\n",
        )
        .unwrap();
        let bridge = &settings.bridges[0];
        assert_eq!(bridge.remote_client_id(), "tidemq-bridge-hq");
        assert!(!bridge.clean_session);
        assert_eq!(
            (bridge.reconnect_min_ms, bridge.reconnect_max_ms),
            (500, 30_000)
        );
        assert!(Settings::defaults().unwrap().bridges.is_empty());
    }

    #[test]
    fn a_bad_topic_line_names_the_key() {
        let error = load_text(
            "bad-bridge.toml",
            "[[bridge]]\nname = \"hq\"\naddress = \"10.0.0.1:1883\"\ntopics = [\"a/# sideways 1\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`bridge.topics`"), "{error}");
        let error = load_text(
            "bad-address.toml",
            "[[bridge]]\nname = \"hq\"\naddress = \"nowhere\"\ntopics = [\"a\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`bridge.address`"), "{error}");
    }

    #[test]
    fn notifications_default_to_mosquittos_topic() {
        let settings = load_text(
            "notify.toml",
            "[[bridge]]\nname = \"hq\"\naddress = \"10.0.0.1:1883\"\ntopics = [\"a\"]\n\
             [[bridge]]\nname = \"quiet\"\naddress = \"10.0.0.1:1883\"\ntopics = [\"a\"]\n\
             notifications = false\n",
        )
        .unwrap();
        assert_eq!(
            settings.bridges[0].notification_topic().as_deref(),
            Some("$SYS/broker/connection/tidemq-bridge-hq/state")
        );
        assert_eq!(settings.bridges[1].notification_topic(), None);
        assert_eq!(
            settings.bridges[0].remote_notification_topic(),
            settings.bridges[0].notification_topic()
        );
        let local_only = load_text(
            "notify-local.toml",
            "[[bridge]]\nname = \"hq\"\naddress = \"10.0.0.1:1883\"\ntopics = [\"a\"]\n\
             notifications_local_only = true\n",
        )
        .unwrap();
        let bridge = &local_only.bridges[0];
        assert!(bridge.notification_topic().is_some());
        assert_eq!(bridge.remote_notification_topic(), None);
        let error = load_text(
            "bad-notify.toml",
            "[[bridge]]\nname = \"hq\"\naddress = \"10.0.0.1:1883\"\ntopics = [\"a\"]\n\
             notification_topic = \"state/+\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`bridge.notification_topic`"), "{error}");
    }

    #[test]
    fn a_tls_table_loads_and_its_key_goes_with_its_certificate() {
        let settings = load_text(
            "tls-bridge.toml",
            "[[bridge]]\nname = \"hq\"\naddress = \"hq.example:8883\"\ntopics = [\"a\"]\n\
             tls = { ca_file = \"ca.pem\", cert_file = \"me.pem\", key_file = \"me.key\", server_name = \"broker.example\" }\n",
        )
        .unwrap();
        let tls = settings.bridges[0].tls.as_ref().unwrap();
        assert_eq!(tls.ca_file, PathBuf::from("ca.pem"));
        assert_eq!(tls.server_name.as_deref(), Some("broker.example"));
        assert!(!tls.insecure);
        let error = load_text(
            "tls-no-key.toml",
            "[[bridge]]\nname = \"hq\"\naddress = \"hq.example:8883\"\ntopics = [\"a\"]\n\
             tls = { ca_file = \"ca.pem\", cert_file = \"me.pem\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`bridge.tls.key_file`"), "{error}");
    }

    #[test]
    fn two_bridges_cannot_share_a_name() {
        let error = load_text(
            "twins.toml",
            "[[bridge]]\nname = \"hq\"\naddress = \"10.0.0.1:1883\"\ntopics = [\"a\"]\n\
             [[bridge]]\nname = \"hq\"\naddress = \"10.0.0.2:1883\"\ntopics = [\"b\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`bridge.name`"), "{error}");
    }
}
