//! The shape of each publish/subscribe scenario: which topic each publisher
//! publishes to, which filter each subscriber subscribes to, and whose
//! messages it should therefore get. Topics carry the run id, so runs never
//! see each other's messages. Pure code.

use std::ops::Range;

use tidemq_protocol::{TopicFilter, TopicName};

use crate::cli::{RunArgs, Scenario, DEFAULT_LATENCY_RATE};

/// Who publishes where and who listens to whom. Publisher ids are indexes
/// into `publishers`.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub publishers: Vec<TopicName>,
    pub subscribers: Vec<(TopicFilter, Range<u32>)>,
    /// Messages per second per publisher.
    pub rate_per_publisher: Option<f64>,
}

impl Topology {
    /// Deliveries that should happen when publisher `p` sent `sent[p]`.
    pub fn expected(&self, sent: &[u64]) -> u64 {
        self.subscribers
            .iter()
            .flat_map(|(_, publishers)| publishers.clone())
            .map(|p| sent.get(p as usize).copied().unwrap_or(0))
            .sum()
    }
}

pub fn topology(scenario: Scenario, args: &RunArgs, run_id: u64) -> Result<Topology, String> {
    let prefix = format!("tidemq-bench/{run_id:016x}");
    let name = |s: String| TopicName::new(&s).map_err(|e| format!("topic {s}: {e}"));
    let filter = |s: String| TopicFilter::new(&s).map_err(|e| format!("filter {s}: {e}"));
    let (publishers, subscribers, rate) = match scenario {
        Scenario::Fanin => {
            let p = args.publishers;
            let publishers = (0..p)
                .map(|i| name(format!("{prefix}/fanin/{i}")))
                .collect::<Result<_, _>>()?;
            (
                publishers,
                vec![(filter(format!("{prefix}/fanin/+"))?, 0..p)],
                args.rate,
            )
        }
        Scenario::Fanout => {
            let topic = format!("{prefix}/fanout");
            let subscribers = (0..args.subscribers)
                .map(|_| Ok((filter(topic.clone())?, 0..1)))
                .collect::<Result<_, String>>()?;
            (vec![name(topic)?], subscribers, args.rate)
        }
        Scenario::Pairs => {
            let mut publishers = Vec::new();
            let mut subscribers = Vec::new();
            for i in 0..args.pairs {
                let topic = format!("{prefix}/pair/{i}");
                subscribers.push((filter(topic.clone())?, i..i + 1));
                publishers.push(name(topic)?);
            }
            (publishers, subscribers, args.rate)
        }
        Scenario::Latency => {
            let topic = format!("{prefix}/latency");
            let rate = Some(args.rate.unwrap_or(DEFAULT_LATENCY_RATE));
            (
                vec![name(topic.clone())?],
                vec![(filter(topic)?, 0..1)],
                rate,
            )
        }
        Scenario::Conns => return Err("conns has no topology".into()),
    };
    let count = publishers.len().max(1) as f64;
    Ok(Topology {
        rate_per_publisher: rate.map(|r| r / count),
        publishers,
        subscribers,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["tidemq-bench", "fanin"];
        argv.extend(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Fanin(args) => args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn fanin_is_many_topics_into_one_wildcard() {
        let t = topology(Scenario::Fanin, &args(&["--publishers", "3"]), 0xAB).unwrap();
        assert_eq!(t.publishers.len(), 3);
        assert_eq!(t.subscribers.len(), 1);
        let (filter, range) = &t.subscribers[0];
        assert_eq!(range, &(0..3));
        assert!(t.publishers.iter().all(|p| filter.matches(p)));
        assert!(
            filter.as_str().contains("00000000000000ab"),
            "run id in topics"
        );
    }

    #[test]
    fn fanout_is_one_topic_to_many() {
        let t = topology(Scenario::Fanout, &args(&["--subscribers", "5"]), 1).unwrap();
        assert_eq!(t.publishers.len(), 1);
        assert_eq!(t.subscribers.len(), 5);
        assert!(t
            .subscribers
            .iter()
            .all(|(f, r)| f.matches(&t.publishers[0]) && *r == (0..1)));
    }

    #[test]
    fn pairs_listen_only_to_their_partner() {
        let t = topology(
            Scenario::Pairs,
            &args(&["--pairs", "4", "--rate", "400"]),
            1,
        )
        .unwrap();
        assert_eq!(t.rate_per_publisher, Some(100.0));
        for (i, (filter, range)) in t.subscribers.iter().enumerate() {
            assert_eq!(*range, i as u32..i as u32 + 1);
            let matching: Vec<usize> = (0..4)
                .filter(|p| filter.matches(&t.publishers[*p]))
                .collect();
            assert_eq!(matching, vec![i]);
        }
    }

    #[test]
    fn expected_counts_each_subscriber_of_each_publisher() {
        let fanout = topology(Scenario::Fanout, &args(&["--subscribers", "3"]), 1).unwrap();
        assert_eq!(fanout.expected(&[10]), 30);
        let pairs = topology(Scenario::Pairs, &args(&["--pairs", "2"]), 1).unwrap();
        assert_eq!(pairs.expected(&[10, 5]), 15);
    }

    #[test]
    fn latency_has_a_default_rate() {
        let t = topology(Scenario::Latency, &args(&[]), 1).unwrap();
        assert_eq!(t.rate_per_publisher, Some(DEFAULT_LATENCY_RATE));
        assert_eq!((t.publishers.len(), t.subscribers.len()), (1, 1));
        let t = topology(Scenario::Fanin, &args(&[]), 1).unwrap();
        assert_eq!(t.rate_per_publisher, None);
    }
}
