//! A game server that embeds tidemq and pushes state to its players.
//!
//! Players are MQTT clients of the embedded broker: each sends moves
//! (`up`, `down`, `left`, `right`) to `game/<player>/input` and subscribes
//! to `game/state`. The server reads every input through an embedded
//! subscription to `game/+/input`, moves the players on a small board, and
//! at every tick publishes the whole board to `game/state`, retained, so a
//! player who joins late sees it at once.
//!
//! ```text
//! cargo run --example game_server            # 600 ticks of 100 ms, then stops
//! GAME_TICKS=50 GAME_BIND=127.0.0.1:1884 cargo run --example game_server
//! mosquitto_sub -t game/state -v &
//! mosquitto_pub -t game/alice/input -m right
//! ```
//!
//! It ends by itself after `GAME_TICKS` ticks. `cargo test` runs the tests
//! at the bottom (`test = true` in `broker/Cargo.toml`), which play it with
//! a real MQTT client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tidemq::config::ListenerConfig;
use tidemq::{Broker, EmbedError, QoS, Settings};

/// The board is `BOARD` x `BOARD` squares; players stay on it.
const BOARD: i32 = 10;
/// How often the state goes out.
const TICK: Duration = Duration::from_millis(100);
/// Ticks played when `GAME_TICKS` is not set: one minute.
const DEFAULT_TICKS: u64 = 600;

/// Where every player stands, and how many ticks have passed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct World {
    pub tick: u64,
    pub players: BTreeMap<String, (i32, i32)>,
}

impl World {
    /// Applies one input published on `game/<player>/input`; a player's
    /// first input puts them on the board at 0,0. Anything else is ignored.
    pub fn apply(&mut self, topic: &str, input: &[u8]) {
        let mut levels = topic.split('/');
        let (Some("game"), Some(player), Some("input"), None) =
            (levels.next(), levels.next(), levels.next(), levels.next())
        else {
            return;
        };
        let (dx, dy) = match input {
            b"up" => (0, -1),
            b"down" => (0, 1),
            b"left" => (-1, 0),
            b"right" => (1, 0),
            _ => (0, 0),
        };
        let (x, y) = self.players.entry(player.to_owned()).or_default();
        *x = (*x + dx).clamp(0, BOARD - 1);
        *y = (*y + dy).clamp(0, BOARD - 1);
    }

    /// What `game/state` carries: `tick 12: alice 1,0; bob 0,2`.
    pub fn state(&self) -> String {
        let players: Vec<String> = self
            .players
            .iter()
            .map(|(name, (x, y))| format!("{name} {x},{y}"))
            .collect();
        format!("tick {}: {}", self.tick, players.join("; "))
    }
}

/// Plays `ticks` ticks of `period`: between ticks it applies the inputs as
/// they come; at each tick it publishes the state.
pub async fn play(broker: &Broker, ticks: u64, period: Duration) -> Result<World, EmbedError> {
    // QoS 1: a move a player sent is not lost to a full queue.
    let mut inputs = broker.subscribe("game/+/input", QoS::AtLeastOnce).await?;
    let mut world = World::default();
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    while world.tick < ticks {
        tokio::select! {
            // `recv` is cancel-safe: an input is taken only when returned.
            input = inputs.recv() => match input {
                Some(input) => world.apply(&input.topic, &input.payload),
                None => break, // the broker is shutting down
            },
            _ = ticker.tick() => {
                world.tick += 1;
                broker
                    .publish("game/state", world.state(), QoS::AtMostOnce, true)
                    .await?;
            }
        }
    }
    inputs.close().await;
    Ok(world)
}

/// Settings for the example: in memory, one MQTT listener on `bind`, no
/// HTTP listener (its tests run two servers at once).
fn settings(bind: SocketAddr) -> Result<Settings, tidemq::ConfigError> {
    let mut settings = Settings::defaults()?;
    settings.storage.enabled = false;
    settings.listeners = vec![ListenerConfig::mqtt(bind)];
    settings.http.bind = String::new();
    Ok(settings)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind: SocketAddr = std::env::var("GAME_BIND")
        .unwrap_or_else(|_| "127.0.0.1:1883".to_owned())
        .parse()?;
    let ticks = match std::env::var("GAME_TICKS") {
        Ok(ticks) => ticks.parse()?,
        Err(_) => DEFAULT_TICKS,
    };
    let broker = Broker::start(settings(bind)?).await?;
    println!(
        "game server on {:?}: {ticks} ticks of {TICK:?}",
        broker.local_addrs()
    );
    let world = play(&broker, ticks, TICK).await?;
    println!("final state: {}", world.state());
    broker.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    async fn start() -> Broker {
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        Broker::start(settings(bind).unwrap()).await.unwrap()
    }

    /// The next `game/state` the player receives.
    async fn next_state(events: &mut rumqttc::EventLoop) -> String {
        loop {
            let event = tokio::time::timeout(WAIT, events.poll()).await;
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) =
                event.expect("a state in time").expect("connected")
            {
                assert_eq!(publish.topic, "game/state");
                return String::from_utf8(publish.payload.to_vec()).unwrap();
            }
        }
    }

    #[test]
    fn moves_stay_on_the_board() {
        let mut world = World::default();
        for input in ["left", "down", "down", "right", "jump"] {
            world.apply("game/alice/input", input.as_bytes());
        }
        world.apply("game/bob/other", b"down");
        assert_eq!(world.state(), "tick 0: alice 1,2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn it_ends_by_itself_and_leaves_the_last_state_retained() {
        let broker = start().await;
        let world = play(&broker, 3, Duration::from_millis(1)).await.unwrap();
        assert_eq!(world.tick, 3);
        let mut late = broker
            .subscribe("game/state", QoS::AtMostOnce)
            .await
            .unwrap();
        let state = tokio::time::timeout(WAIT, late.recv()).await.unwrap();
        assert_eq!(&state.unwrap().payload[..], b"tick 3: ");
        drop(late);
        broker.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_player_moves_and_sees_it_in_the_state() {
        let broker = std::sync::Arc::new(start().await);
        let port = broker.local_addrs()[0].port();
        // Bounded in any case: 30 s of ticks at most.
        let game = tokio::spawn({
            let broker = std::sync::Arc::clone(&broker);
            async move { play(&broker, 3000, Duration::from_millis(10)).await }
        });
        let options = rumqttc::MqttOptions::new("alice", "127.0.0.1", port);
        let (player, mut events) = rumqttc::AsyncClient::new(options, 16);
        player
            .subscribe("game/state", rumqttc::QoS::AtMostOnce)
            .await
            .unwrap();
        // A first state: the game loop runs, so its subscription is in place.
        next_state(&mut events).await;
        for input in ["right", "right", "down"] {
            player
                .publish("game/alice/input", rumqttc::QoS::AtLeastOnce, false, input)
                .await
                .unwrap();
        }
        loop {
            let state = next_state(&mut events).await;
            if state.ends_with(": alice 2,1") {
                break;
            }
            let on_the_way = [": ", ": alice 1,0", ": alice 2,0"];
            assert!(
                on_the_way.iter().any(|s| state.ends_with(s)),
                "moves lost or reordered: {state}"
            );
        }
        game.abort();
    }
}
