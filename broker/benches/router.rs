//! Criterion benchmarks of the router: the trie walk with 1, 10 000 and
//! 1 000 000 subscriptions (a tenth of them wildcards), one message
//! fanned out to N mailboxes, and a new subscription matched against
//! 1 000 000 retained topics (its cost follows what it matches, not what
//! is stored).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidemq::bench_api::{RetainedBench, RouterBench};
use tidemq_protocol::{TopicFilter, TopicName};

/// Subscription `i`: mostly exact device topics, every tenth a `+` or `#`
/// filter over the same tree, so a publish matches a few of them.
fn filter(i: usize) -> String {
    let site = i % 1000;
    match i % 10 {
        8 => format!("site/{site}/+/{i}/temp"),
        9 => format!("site/{site}/dev/{i}/#"),
        _ => format!("site/{site}/dev/{i}/temp"),
    }
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_match");
    for subscriptions in [1usize, 10_000, 1_000_000] {
        let router = RouterBench::new((0..subscriptions).map(filter));
        let topics: Vec<TopicName> = (0..1024)
            .map(|k| {
                let i = (k * 7919) % subscriptions.max(1);
                TopicName::new(&format!("site/{}/dev/{i}/temp", i % 1000)).unwrap()
            })
            .collect();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscriptions),
            &topics,
            |b, topics| {
                let mut k = 0;
                b.iter(|| {
                    k = (k + 1) % topics.len();
                    router.count_matches(&topics[k])
                });
            },
        );
    }
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_fanout");
    let payload = Bytes::from(vec![0u8; 64]);
    let topic = TopicName::new("game/room/1").unwrap();
    for subscribers in [1usize, 100, 1000] {
        let mut router = RouterBench::new((0..subscribers).map(|_| "game/room/+".to_string()));
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter(|| assert_eq!(router.publish_and_drain(&topic, &payload), subscribers));
        });
    }
    group.finish();
}

/// 1 000 000 retained topics `site/<s>/dev/<i>/temp`, 1000 sites of 1000
/// devices; filters that match 0, 1, 1000 and 1000 (through `+`) of them.
fn retained(c: &mut Criterion) {
    let mut group = c.benchmark_group("retained_match_1M");
    group.sample_size(20);
    let store = RetainedBench::new((0..1_000_000).map(filter_topic));
    let cases = [
        ("none z/#", "z/#", 0),
        ("exact", "site/7/dev/7007/temp", 1),
        ("site/7/#", "site/7/#", 1000),
        ("site/7/dev/+/temp", "site/7/dev/+/temp", 1000),
    ];
    for (name, filter, expected) in cases {
        let filter = TopicFilter::new(filter).unwrap();
        assert_eq!(store.count_matching(&filter, 256), expected, "{name}");
        group.bench_function(name, |b| b.iter(|| store.count_matching(&filter, 256)));
    }
    group.finish();
}

fn filter_topic(i: usize) -> String {
    format!("site/{}/dev/{i}/temp", i / 1000)
}

criterion_group!(benches, matching, fanout, retained);
criterion_main!(benches);
