//! `$SYS` topics: every `sys.interval_secs` the broker publishes its counters
//! as retained QoS 0 messages under `$SYS/broker/<counter>`, as mosquitto
//! does, so operators can watch them with any MQTT client. `#` subscriptions
//! do not see them [MQTT-4.7.2-1]; `$SYS/#` does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidemq_protocol::{QoS, TopicName};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::router::RouterHandle;
use crate::types::Message;

const PREFIX: &str = "$SYS/broker/";

/// Publishes the counters every `interval` until `shutdown`.
pub async fn run(
    router: RouterHandle,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for (name, value) in metrics.snapshot().named() {
            let Ok(topic) = TopicName::new(&format!("{PREFIX}{name}")) else {
                continue;
            };
            let payload = Bytes::from(value.to_string());
            let message = Message::new(topic, payload, QoS::AtMostOnce, true);
            if router.publish(message, None).await.is_err() {
                return;
            }
        }
    }
}
