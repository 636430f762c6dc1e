//! The transport over real QUIC on 127.0.0.1: several nodes in one process.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::Bytes;
use cellar_net::{
    Artifact, ArtifactKind, Membership, NodeKeyPair, PeerInfo, Received, SendError, Transport,
    TransportConfig, TransportHandle,
};
use tokio::sync::mpsc::Receiver;

/// The longest any single expectation may take (generous: CI is shared).
const PATIENCE: Duration = Duration::from_secs(20);

/// Logs to the test output when `RUST_LOG` is set.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A configuration with short timeouts for tests.
fn test_config() -> TransportConfig {
    TransportConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(3),
        misbehaviour_ban: Duration::from_millis(500),
        ..TransportConfig::default()
    }
}

/// `n` loopback addresses whose UDP ports were free a moment ago.
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// `n` key pairs and the membership listing them on loopback.
fn subnet(n: usize) -> (Vec<NodeKeyPair>, Membership) {
    cellar_net::testing::loopback_subnet(n).expect("a loopback subnet")
}

/// A started node.
struct Node {
    /// The handle.
    net: TransportHandle,
    /// Its inbox.
    inbox: Receiver<Received>,
}

/// Starts every node of the subnet.
async fn start_all(
    keys: &[NodeKeyPair],
    membership: &Membership,
    config: &TransportConfig,
) -> Vec<Node> {
    let mut nodes = Vec::new();
    for k in keys {
        let (net, inbox) = Transport::start(config.clone(), k.clone(), membership.clone())
            .await
            .expect("start a node");
        nodes.push(Node { net, inbox });
    }
    nodes
}

/// Waits until `check` holds, polling; panics after [`PATIENCE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every node has an outgoing connection to every other.
async fn fully_connected(nodes: &[Node]) {
    let n = nodes.len();
    eventually("full mesh", || {
        nodes
            .iter()
            .all(|node| node.net.connected_peers().len() == n - 1)
    })
    .await;
}

/// The next artifact in `inbox`; panics after [`PATIENCE`].
async fn next(inbox: &mut Receiver<Received>) -> Received {
    tokio::time::timeout(PATIENCE, inbox.recv())
        .await
        .expect("an artifact in time")
        .expect("the transport is running")
}

/// An artifact with a recognizable payload.
fn artifact(text: &str) -> Artifact {
    Artifact::new(ArtifactKind::BLOCK, Bytes::copy_from_slice(text.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_send_and_broadcast_with_dedup() {
    init_tracing();
    let (keys, membership) = subnet(4);
    let mut nodes = start_all(&keys, &membership, &test_config()).await;
    fully_connected(&nodes).await;

    // A broadcast reaches every other node once, from its originator.
    let a = artifact("a");
    assert_eq!(nodes[0].net.broadcast(&a).unwrap(), 3);
    for node in &mut nodes[1..] {
        let got = next(&mut node.inbox).await;
        assert_eq!((got.from, got.artifact.id()), (0, a.id()));
    }

    // Sent again (by another node), it is dropped as a duplicate; frames
    // from one peer arrive in order, so `b` proves `a` was handled.
    let b = artifact("b");
    nodes[1].net.send(2, &a).unwrap();
    nodes[1].net.send(2, &b).unwrap();
    let got = next(&mut nodes[2].inbox).await;
    assert_eq!((got.from, got.artifact), (1, b.clone()));
    assert!(nodes[2].net.stats().duplicates >= 1);
    assert!(nodes[2].net.has_seen(&a.id()));

    // Everyone broadcasts at once: every node gets every other's artifacts.
    let per_node = 50;
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..per_node {
            node.net.broadcast(&artifact(&format!("{i}/{j}"))).unwrap();
        }
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        let mut from = [0usize; 4];
        for _ in 0..3 * per_node {
            let got = next(&mut node.inbox).await;
            from[got.from as usize] += 1;
        }
        from[i] = per_node;
        assert_eq!(from, [per_node; 4], "node {i}");
    }

    // Sends that cannot be: to itself, to a non-member, too large.
    assert_eq!(nodes[0].net.send(0, &a), Err(SendError::UnknownPeer(0)));
    assert_eq!(nodes[0].net.send(9, &a), Err(SendError::UnknownPeer(9)));
    let huge = Artifact::new(ArtifactKind::BLOCK, vec![0; test_config().max_message_size]);
    assert!(matches!(
        nodes[0].net.broadcast(&huge),
        Err(SendError::TooLarge { .. })
    ));
    for node in nodes {
        node.net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_at_the_handshake() {
    init_tracing();
    let (keys, membership) = subnet(3);
    let nodes = start_all(&keys, &membership, &test_config()).await;
    fully_connected(&nodes).await;

    // The outsider believes it is a member (its own view lists it); the
    // members' pinned list does not.
    let outsider = NodeKeyPair::generate().unwrap();
    let mut view: Vec<PeerInfo> = membership.peers().to_vec();
    view.push(PeerInfo {
        node_index: 3,
        address: free_addrs(1)[0],
        public_key: outsider.public_key(),
    });
    let view = Membership::new(view).unwrap();
    let (intruder, _inbox) = Transport::start(test_config(), outsider, view)
        .await
        .unwrap();
    intruder.broadcast(&artifact("let me in")).unwrap();
    eventually("every member refused the outsider", || {
        nodes.iter().all(|n| n.net.stats().refused >= 1)
    })
    .await;
    // (In TLS 1.3 the client finishes its handshake before the server
    // checks the client's key, so the intruder may count brief connections;
    // the members close them before reading a byte.)
    for node in &nodes {
        assert_eq!(node.net.stats().delivered, 0);
    }
    intruder.shutdown().await;
    for node in nodes {
        node.net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_refuses_a_server_with_the_wrong_key() {
    init_tracing();
    // Node 0 expects node 1's key at node 1's address; an impostor with
    // another key listens there (and would accept node 0 as a client).
    let (keys, membership) = subnet(2);
    let impostor = NodeKeyPair::generate().unwrap();
    let mut view = membership.peers().to_vec();
    view[1].public_key = impostor.public_key();
    let view = Membership::new(view).unwrap();
    let (fake, _fake_inbox) = Transport::start(test_config(), impostor, view)
        .await
        .unwrap();
    let (node0, _inbox) = Transport::start(test_config(), keys[0].clone(), membership)
        .await
        .unwrap();
    eventually("the impostor saw node 0's handshake fail", || {
        fake.stats().refused >= 1
    })
    .await;
    assert_eq!(node0.stats().connects, 0);
    assert!(node0.connected_peers().is_empty());
    node0.shutdown().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_drop_only_the_sender() {
    init_tracing();
    let config = TransportConfig {
        max_message_size: 64 * 1024,
        ..test_config()
    };
    let (keys, membership) = subnet(4);
    let mut nodes = start_all(&keys, &membership, &config).await;
    fully_connected(&nodes).await;
    let byzantine = &nodes[3].net;

    // To node 0: a frame with an unknown tag. To node 1: a header that
    // announces 1 GiB. To node 2: a real frame one byte too large.
    byzantine
        .send_raw_frame(0, Bytes::from_static(&[0, 0, 0, 3, 9, 9, 9]))
        .unwrap();
    byzantine
        .send_raw_frame(1, Bytes::from_static(&[0x40, 0, 0, 0, 1]))
        .unwrap();
    let len = config.max_message_size + 1;
    let mut oversized = (len as u32).to_be_bytes().to_vec();
    oversized.push(1);
    oversized.resize(4 + len, 0);
    byzantine.send_raw_frame(2, Bytes::from(oversized)).unwrap();
    eventually("nodes 0, 1 and 2 dropped node 3", || {
        nodes[..3].iter().all(|n| n.net.stats().misbehaviours >= 1)
    })
    .await;

    // The honest nodes keep working with each other.
    for (i, node) in nodes[..3].iter().enumerate() {
        node.net
            .broadcast(&artifact(&format!("after garbage {i}")))
            .unwrap();
    }
    for (i, node) in nodes[..3].iter_mut().enumerate() {
        let mut from = Vec::new();
        for _ in 0..2 {
            from.push(next(&mut node.inbox).await.from);
        }
        from.sort_unstable();
        let expected: Vec<u32> = (0..3).filter(|j| *j != i as u32).collect();
        assert_eq!(from, expected, "node {i}");
    }
    // Node 3 is a member: once its ban is over, a well-behaved node 3 is
    // heard again.
    let late = artifact("behaving again");
    tokio::time::sleep(config.misbehaviour_ban).await;
    let mut heard = false;
    for _ in 0..100 {
        nodes[3].net.send(0, &late).unwrap();
        if let Ok(Some(got)) =
            tokio::time::timeout(Duration::from_millis(200), nodes[0].inbox.recv()).await
        {
            assert_eq!((got.from, got.artifact.id()), (3, late.id()));
            heard = true;
            break;
        }
    }
    assert!(heard, "node 0 hears node 3 again after the ban");
    for node in nodes {
        node.net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reconnected_and_pulls_what_it_missed() {
    init_tracing();
    let (keys, membership) = subnet(3);
    let config = test_config();
    let mut nodes = start_all(&keys, &membership, &config).await;
    fully_connected(&nodes).await;

    // Node 2 goes down; node 0 makes an artifact while it is down.
    let down = nodes.pop().unwrap();
    down.net.shutdown().await;
    drop(down.inbox);
    let missed = artifact("made while node 2 was down");
    nodes[0].net.broadcast(&missed).unwrap();
    assert_eq!(next(&mut nodes[1].inbox).await.artifact, missed);
    let connects_before = nodes[0].net.stats().connects;

    // Node 2 comes back on the same address (the port may take a moment
    // to be released).
    let mut restarted = None;
    for _ in 0..100 {
        match Transport::start(config.clone(), keys[2].clone(), membership.clone()).await {
            Ok(started) => {
                restarted = Some(started);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let (net, inbox) = restarted.expect("node 2 restarts on its port");
    nodes.push(Node { net, inbox });
    eventually("node 0 redialed node 2", || {
        nodes[0].net.stats().connects > connects_before
            && nodes[0].net.connected_peers().contains(&2)
    })
    .await;
    fully_connected(&nodes).await;

    // New artifacts reach it (the missed one may too, if it was still
    // queued for node 2).
    let fresh = artifact("after the restart");
    nodes[0].net.broadcast(&fresh).unwrap();
    let mut got = Vec::new();
    while !got.contains(&fresh.id()) {
        got.push(next(&mut nodes[2].inbox).await.artifact.id());
    }
    // And it pulls what it missed by id.
    if !got.contains(&missed.id()) {
        assert_eq!(nodes[2].net.request(missed.id()), 2);
        let pulled = next(&mut nodes[2].inbox).await;
        assert_eq!(pulled.artifact, missed);
    }
    for node in nodes {
        node.net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_artifact_is_pulled_once_from_any_peer() {
    init_tracing();
    let (keys, membership) = subnet(4);
    let mut nodes = start_all(&keys, &membership, &test_config()).await;
    fully_connected(&nodes).await;
    // Node 0 sends to node 1 only; node 3 asks everyone for it: node 1
    // and node 0 both answer, node 3 delivers it once.
    let x = artifact("only some have it");
    nodes[0].net.send(1, &x).unwrap();
    assert_eq!(next(&mut nodes[1].inbox).await.artifact, x);
    assert_eq!(nodes[3].net.request(x.id()), 3);
    assert_eq!(next(&mut nodes[3].inbox).await.artifact, x);
    eventually("both holders answered", || {
        nodes[0].net.stats().requests_answered == 1 && nodes[1].net.stats().requests_answered == 1
    })
    .await;
    eventually("the second answer was a duplicate", || {
        nodes[3].net.stats().duplicates == 1
    })
    .await;
    assert_eq!(nodes[3].net.stats().delivered, 1);
    for node in nodes {
        node.net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_delay_still_delivers_in_order_and_can_change() {
    init_tracing();
    let delay = Duration::from_millis(50);
    let config = TransportConfig {
        injected_delay: Some(delay),
        ..test_config()
    };
    let (keys, membership) = subnet(3);
    let mut nodes = start_all(&keys, &membership, &config).await;
    fully_connected(&nodes).await;
    let count = 200;
    let started = tokio::time::Instant::now();
    for i in 0..count {
        nodes[0]
            .net
            .broadcast(&artifact(&format!("slow {i}")))
            .unwrap();
    }
    for node in &mut nodes[1..] {
        for i in 0..count {
            let got = next(&mut node.inbox).await;
            assert_eq!(got.artifact, artifact(&format!("slow {i}")));
        }
    }
    // Every message waited at least the delay; they were pipelined, not
    // serialized (200 × 50 ms would be 10 s).
    let elapsed = started.elapsed();
    assert!(elapsed >= delay, "{elapsed:?}");

    // The delay can change while running: raised, a round trip takes at
    // least twice as long; removed, messages flow at once again.
    let more = Duration::from_millis(200);
    for node in &nodes {
        node.net.set_injected_delay(Some(more));
    }
    let started = tokio::time::Instant::now();
    nodes[0].net.send(1, &artifact("ping")).unwrap();
    assert_eq!(next(&mut nodes[1].inbox).await.artifact, artifact("ping"));
    nodes[1].net.send(0, &artifact("pong")).unwrap();
    assert_eq!(next(&mut nodes[0].inbox).await.artifact, artifact("pong"));
    assert!(started.elapsed() >= 2 * more);
    for node in &nodes {
        node.net.set_injected_delay(None);
    }
    nodes[2].net.send(0, &artifact("no delay")).unwrap();
    assert_eq!(
        next(&mut nodes[0].inbox).await.artifact,
        artifact("no delay")
    );
    for node in nodes {
        node.net.shutdown().await;
    }
}

/// Environment variable that makes [`child_node`] run: `<seed hex> <membership json>`.
const CHILD_ENV: &str = "CELLAR_NET_TEST_CHILD";

/// Not a test on its own: the node that
/// [`a_killed_peer_is_reconnected_after_it_restarts`] runs in a child
/// process (so that it can die without closing its connections). It
/// broadcasts a numbered artifact every 50 ms, for a minute at most.
#[test]
#[ignore = "run by a_killed_peer_is_reconnected_after_it_restarts"]
fn child_node() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (seed, membership) = spec.split_once(' ').unwrap();
    let seed: [u8; 32] = data_encoding::HEXLOWER
        .decode(seed.as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    let membership: Membership = serde_json::from_str(membership).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let keys = NodeKeyPair::from_seed(seed);
        let (net, _inbox) = Transport::start(test_config(), keys, membership)
            .await
            .unwrap();
        let nonce = std::process::id();
        for i in 0..1200 {
            net.broadcast(&artifact(&format!("alive {nonce} {i}"))).ok();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Starts [`child_node`] as node `index` in a child process.
fn spawn_child(keys: &[NodeKeyPair], membership: &Membership, index: usize) -> std::process::Child {
    let spec = format!(
        "{} {}",
        data_encoding::HEXLOWER.encode(&keys[index].seed()),
        serde_json::to_string(membership).unwrap()
    );
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_node", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child node")
}

/// Waits for an artifact from `from` in `inbox`, skipping others.
async fn next_from(inbox: &mut Receiver<Received>, from: u32) -> Received {
    loop {
        let got = next(inbox).await;
        if got.from == from {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_is_reconnected_after_it_restarts() {
    init_tracing();
    let (keys, membership) = subnet(3);
    // Keep-alives far apart: node 0 sends node 2 nothing, so no stateless
    // reset could tell it within the test's patience that its connection
    // went stale; the restarted node's new connection must.
    let config = TransportConfig {
        keep_alive: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        ..test_config()
    };
    let mut nodes = Vec::new();
    for k in &keys[..2] {
        let (net, inbox) = Transport::start(config.clone(), k.clone(), membership.clone())
            .await
            .unwrap();
        nodes.push(Node { net, inbox });
    }
    let mut child = spawn_child(&keys, &membership, 2);
    next_from(&mut nodes[0].inbox, 2).await;
    eventually("node 0 dialed node 2", || {
        nodes[0].net.connected_peers().contains(&2)
    })
    .await;

    // SIGKILL: node 2 closes nothing; node 0's connection to it is stale.
    child.kill().unwrap();
    child.wait().unwrap();
    let connects = nodes[0].net.stats().connects;
    let mut child = spawn_child(&keys, &membership, 2);
    let restarted = std::time::Instant::now();
    // The new process's artifacts arrive over its own connection (after
    // those of the old one still in the inbox)...
    let prefix = format!("alive {} ", child.id());
    loop {
        let got = next_from(&mut nodes[0].inbox, 2).await;
        if got.artifact.payload().starts_with(prefix.as_bytes()) {
            break;
        }
    }
    // ...and node 0 takes the new connection replacing the old one as the
    // sign that its own connection is stale, and redials at once.
    eventually("node 0 redialed the restarted node 2", || {
        nodes[0].net.stats().connects > connects
    })
    .await;
    eprintln!(
        "node 0 redialed {:?} after the restart",
        restarted.elapsed()
    );
    assert!(
        nodes[0].net.stats().returns >= 1,
        "redialed because node 2 came back, not after its connection failed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    for node in nodes {
        node.net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_was_unreachable_gets_the_newest_messages() {
    init_tracing();
    let config = TransportConfig {
        send_queue_capacity: 10,
        ..test_config()
    };
    let (keys, membership) = subnet(2);
    let (node0, _inbox0) = Transport::start(config.clone(), keys[0].clone(), membership.clone())
        .await
        .unwrap();
    // Node 1 is not up: node 0 keeps only the newest messages for it.
    let count = 100;
    let mut last_queued = None;
    for i in 0..count {
        if node0.send(1, &artifact(&format!("m{i}"))).is_ok() {
            last_queued = Some(i);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last = last_queued.expect("some messages were queued");
    assert!(last >= 2 * config.send_queue_capacity, "{last}");
    let (node1, mut inbox1) = Transport::start(config.clone(), keys[1].clone(), membership)
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.contains(&artifact(&format!("m{last}"))) {
        got.push(next(&mut inbox1).await.artifact);
    }
    assert!(!got.contains(&artifact("m0")), "the oldest were dropped");
    assert!(got.len() <= 2 * config.send_queue_capacity, "{}", got.len());
    assert!(node0.stats().send_dropped >= (count - 2 * config.send_queue_capacity) as u64);
    node0.shutdown().await;
    node1.shutdown().await;
}
