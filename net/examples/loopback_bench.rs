//! Loopback benchmark of the transport: throughput (messages/s) and
//! round-trip latency for 1 KiB and 100 KiB artifacts between nodes in one
//! process over real QUIC on 127.0.0.1.
//!
//! ```sh
//! cargo run --release -p cellar-net --example loopback_bench
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use cellar_net::{
    Artifact, ArtifactKind, Received, SendError, Transport, TransportConfig, TransportHandle,
};
use tokio::sync::mpsc::Receiver;

/// A started node.
type Node = (TransportHandle, Receiver<Received>);

/// Starts `n` connected nodes on loopback.
async fn start(n: usize) -> Vec<Node> {
    let (keys, membership) = cellar_net::testing::loopback_subnet(n).unwrap();
    let config = TransportConfig {
        send_queue_capacity: 1024,
        ..TransportConfig::default()
    };
    let mut nodes = Vec::new();
    for k in keys {
        nodes.push(
            Transport::start(config.clone(), k, membership.clone())
                .await
                .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes.iter().any(|(h, _)| h.connected_peers().len() < n - 1) {
        assert!(Instant::now() < deadline, "nodes did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes
}

/// A payload of `size` bytes, distinct for each `(tag, seq)`.
fn payload(size: usize, tag: u64, seq: u64) -> Bytes {
    let mut bytes = vec![0u8; size];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8..16].copy_from_slice(&tag.to_le_bytes());
    Bytes::from(bytes)
}

/// Sends `count` artifacts from node 0 to each of `fan_out` peers (nodes
/// 1..=fan_out), retrying a peer whose queue is full, while every receiver
/// drains its inbox; returns deliveries per second (all receivers).
async fn throughput(nodes: &mut [Node], size: usize, count: u64, tag: u64, fan_out: u32) -> f64 {
    let sender = nodes[0].0.clone();
    let started = Instant::now();
    let send = tokio::spawn(async move {
        for seq in 0..count {
            let a = Artifact::new(ArtifactKind::BLOCK, payload(size, tag, seq));
            for to in 1..=fan_out {
                loop {
                    match sender.send(to, &a) {
                        Ok(()) => break,
                        Err(SendError::QueueFull(_)) => {
                            tokio::time::sleep(Duration::from_micros(100)).await
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
    });
    let mut drains = Vec::new();
    for (_, inbox) in nodes[1..=fan_out as usize].iter_mut() {
        // Each receiver drains on its own task; its inbox comes back after.
        let mut owned = std::mem::replace(inbox, tokio::sync::mpsc::channel(1).1);
        drains.push(tokio::spawn(async move {
            for _ in 0..count {
                owned.recv().await.unwrap();
            }
            owned
        }));
    }
    for (drain, (_, inbox)) in drains.into_iter().zip(nodes[1..].iter_mut()) {
        *inbox = drain.await.unwrap();
    }
    send.await.unwrap();
    (count * fan_out as u64) as f64 / started.elapsed().as_secs_f64()
}

/// Round trips node 0 → node 1 → node 0; returns (p50, p99) in µs.
async fn round_trip(nodes: &mut [Node], size: usize, count: u64, tag: u64) -> (f64, f64) {
    let (left, right) = nodes.split_at_mut(1);
    let (a, a_inbox) = &mut left[0];
    let (b, b_inbox) = &mut right[0];
    let mut samples = Vec::new();
    for seq in 0..count {
        let ping = Artifact::new(ArtifactKind::BLOCK, payload(size, tag, seq));
        let t = Instant::now();
        a.send(1, &ping).unwrap();
        let got = b_inbox.recv().await.unwrap();
        let pong = Artifact::new(ArtifactKind::OTHER, got.artifact.payload().clone());
        b.send(0, &pong).unwrap();
        a_inbox.recv().await.unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

#[tokio::main]
async fn main() {
    // Bounded: a stuck run fails instead of hanging.
    tokio::time::timeout(Duration::from_secs(300), run())
        .await
        .expect("the benchmark finishes within 5 minutes");
}

/// Starts four nodes and prints one table row per message size.
async fn run() {
    let mut nodes = start(4).await;
    println!(
        "| size | 1→1 msgs/s | 1→1 MB/s | 1→3 fan-out deliveries/s | RTT p50 µs | RTT p99 µs |"
    );
    println!("|---|---|---|---|---|---|");
    for (tag, (size, count)) in [(1024usize, 20_000u64), (100 * 1024, 1_000)]
        .into_iter()
        .enumerate()
    {
        let tag = tag as u64 * 10;
        let rate = throughput(&mut nodes, size, count, tag, 1).await;
        let fan_out = throughput(&mut nodes, size, count, tag + 1, 3).await;
        let (p50, p99) = round_trip(&mut nodes, size, 1000, tag + 2).await;
        println!(
            "| {} KiB | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |",
            size / 1024,
            rate,
            rate * size as f64 / 1e6,
            fan_out,
            p50,
            p99
        );
    }
    for (h, _) in nodes {
        h.shutdown().await;
    }
}
