//! A seeded, in-process, discrete-event simulation of a subnet: real nodes,
//! real crypto, artifacts sent as bytes with simulated delays, crashes,
//! restarts and Byzantine behaviours. Same seed, same run.
//!
//! The simulation covers delays, crashes, restarts, equivocation, bad
//! shares and garbage. [`Simulation::reboot`] restarts a node with only
//! what it persisted, from its newest catch-up package at or below what it
//! executed, and [`Simulation::crash_at`] crashes it at a chosen moment
//! ([`CrashPoint`]: after persisting, after proposing, before executing a
//! delivered block, when told to state-sync); re-delivered blocks are
//! checked against the executed ones. [`SimConfig::policy_factory`] runs
//! any boxed policy, such as a component. Used by `consensus/tests/sim.rs`;
//! `examples/measure.rs` gives crypto and block-rate figures.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::artifacts::{Artifact, CatchUpPackage, Hash32, Height};
use crate::bls::NodeIndex;
use crate::catch_up::genesis;
use crate::icc::{Action, ConsensusConfig, ConsensusError, ConsensusNode, FinalizedBatch};
use crate::ingress::IngressMessage;
use crate::keys::{SubnetDealing, deal_subnet};
use crate::policy::{ConsensusPolicy, IccDelays, IccPolicy, PayloadLimits, RoundRobinPolicy};
use crate::signed::Signed;

/// A small deterministic generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 if bound is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }
}

/// Which leader policy the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// Beacon-derived random permutation (ICC default).
    Icc,
    /// Fixed round robin.
    RoundRobin,
}

/// Makes the policy of a node (given its index), for policies that
/// [`PolicyKind`] cannot name, such as a Wasm component run by the host.
/// Called once per node at start and again when a node rejoins.
#[derive(Clone)]
pub struct PolicyFactory(pub Arc<dyn Fn(NodeIndex) -> Box<dyn ConsensusPolicy> + Send + Sync>);

impl fmt::Debug for PolicyFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PolicyFactory(..)")
    }
}

/// Parameters of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes.
    pub n: u32,
    /// Seed of keys, delays and faults.
    pub seed: u64,
    /// One-way message delay (ms).
    pub latency_ms: u64,
    /// Extra random delay in `0..jitter_ms` per message.
    pub jitter_ms: u64,
    /// Tick period of each node (ms).
    pub tick_ms: u64,
    /// Node tunables.
    pub consensus: ConsensusConfig,
    /// The policy.
    pub policy: PolicyKind,
    /// If set, makes each node's policy instead of [`SimConfig::policy`].
    pub policy_factory: Option<PolicyFactory>,
    /// Policy delays.
    pub delays: IccDelays,
    /// Submit one ingress message to a random node this often (ms); 0 for none.
    pub ingress_every_ms: u64,
    /// Tell every node which nodes are down at each tick
    /// ([`ConsensusNode::set_absent`]), as a replica's transport does.
    pub detect_absent: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            n: 4,
            seed: 1,
            latency_ms: 10,
            jitter_ms: 5,
            tick_ms: 10,
            consensus: ConsensusConfig {
                catch_up_interval: 10,
                rebroadcast_after_ms: 1000,
                ..ConsensusConfig::default()
            },
            policy: PolicyKind::Icc,
            policy_factory: None,
            delays: IccDelays::default(),
            ingress_every_ms: 50,
            detect_absent: false,
        }
    }
}

/// How a simulated node behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Follows the protocol.
    Honest,
    /// Proposes two different blocks at each height it proposes (half the
    /// nodes get each) and notarization-shares both.
    Equivocate,
    /// Sends every share with a signature on the wrong message.
    BadShares,
    /// Sends corrupted copies of its artifacts and random bytes instead of its artifacts.
    Garbage,
}

/// One simulated node.
pub struct SimNode {
    /// The state machine.
    pub node: ConsensusNode,
    /// Whether it runs (a crashed node gets no messages and no ticks).
    pub up: bool,
    /// Its behaviour.
    pub behavior: Behavior,
    /// Everything it delivered, in order.
    pub delivered: Vec<FinalizedBatch>,
    /// Simulated time of each delivery (ms), parallel to `delivered`.
    pub delivered_at_ms: Vec<u64>,
    /// Its execution state hash (a hash chain of delivered blocks).
    pub state_hash: Hash32,
    /// Catch-up packages it made or adopted.
    pub catch_ups: Vec<CatchUpPackage>,
    /// State syncs it was asked for.
    pub state_syncs: u64,
    /// If set, its execution goes wrong at this height (its state hash diverges).
    pub diverge_at: Option<Height>,
    /// What it persisted ([`Action::Persist`]): all that survives a
    /// [`Simulation::reboot`] of its consensus state.
    pub disk: Vec<Signed>,
    /// The highest height it executed (delivered or state-synced to):
    /// execution is durable in the simulation, as a replica's journal is.
    pub executed: Height,
    /// Heights it state-synced to (its deliveries jump past them).
    pub synced: BTreeSet<Height>,
    /// Blocks delivered again after a reboot that differ from the block it
    /// executed at that height, and catch-up packages that certify another
    /// block at a height it executed: proof of a fork (must stay 0).
    pub forks: u64,
    /// Crash when this moment comes (see [`CrashPoint`]).
    pub crash_at: Option<CrashPoint>,
    /// The state hashes it reported, by catch-up height.
    pub reported: BTreeMap<Height, Hash32>,
    /// The ingress messages its state executed, with their expiry (its
    /// ingress history: durable, and part of a state-synced state).
    pub executed_ids: BTreeMap<Hash32, u64>,
}

/// A moment at which a node crashes, armed with [`Simulation::crash_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after it persisted a record, before sending what it signed.
    AfterPersist,
    /// Right after it sent a block it proposed.
    AfterProposal,
    /// When a finalized block is handed to it, before it executes it.
    BeforeExecute,
    /// When it is told to state-sync, before it does.
    OnStateSync,
}

impl SimNode {
    /// Counts a fork if `cup` certifies a block other than the one this
    /// node executed at that height.
    fn check_executed(&mut self, cup: &CatchUpPackage) {
        let c = &cup.content;
        if c.height <= self.executed && self.executed_block(c.height).is_some_and(|b| b != c.block)
        {
            self.forks += 1;
        }
    }

    /// The block it delivered (executed) at `height`, if it did.
    fn executed_block(&self, height: Height) -> Option<Hash32> {
        self.delivered
            .iter()
            .rev()
            .find(|b| b.height == height)
            .map(|b| b.block)
    }
}

#[derive(Debug)]
enum Event {
    Tick(NodeIndex),
    Message {
        to: NodeIndex,
        from: NodeIndex,
        bytes: Vec<u8>,
    },
    Ingress,
}

/// Message counters.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Messages that did not decode.
    pub undecodable: u64,
    /// Events processed.
    pub events: u64,
    /// Messages lost to a partition.
    pub lost: u64,
}

/// The simulation.
pub struct Simulation {
    cfg: SimConfig,
    dealing: SubnetDealing,
    /// The genesis catch-up package.
    pub genesis: CatchUpPackage,
    now: u64,
    seq: u64,
    rng: SimRng,
    queue: BTreeMap<(u64, u64), Event>,
    /// The nodes.
    pub nodes: Vec<SimNode>,
    /// Counters.
    pub stats: SimStats,
    ingress_counter: u64,
    /// Group of each node while the network is partitioned.
    partition: Option<Vec<u32>>,
}

/// Bound on events one `run_until` may process.
const MAX_EVENTS: u64 = 50_000_000;

fn make_policy(cfg: &SimConfig, node: NodeIndex) -> Box<dyn ConsensusPolicy> {
    if let Some(factory) = &cfg.policy_factory {
        return (factory.0)(node);
    }
    match cfg.policy {
        PolicyKind::Icc => Box::new(IccPolicy {
            delays: cfg.delays,
            limits: PayloadLimits::default(),
        }),
        PolicyKind::RoundRobin => Box::new(RoundRobinPolicy {
            delays: cfg.delays,
            limits: PayloadLimits::default(),
        }),
    }
}

impl Simulation {
    /// Deals keys from the seed and starts every node at the genesis.
    pub fn new(cfg: SimConfig) -> Result<Self, ConsensusError> {
        let seed = cfg.seed.to_be_bytes();
        let dealing = deal_subnet(&seed, cfg.n).map_err(ConsensusError::InvalidKeys)?;
        let genesis = genesis(&dealing, 1, Hash32::default())
            .map_err(ConsensusError::InvalidCatchUpPackage)?;
        let mut nodes = Vec::new();
        for s in &dealing.secrets {
            let node = ConsensusNode::new(
                cfg.consensus.clone(),
                dealing.public.clone(),
                s.clone(),
                genesis.clone(),
                make_policy(&cfg, s.index),
            )?;
            nodes.push(SimNode {
                node,
                up: true,
                behavior: Behavior::Honest,
                delivered: Vec::new(),
                delivered_at_ms: Vec::new(),
                state_hash: Hash32::default(),
                catch_ups: Vec::new(),
                state_syncs: 0,
                diverge_at: None,
                disk: Vec::new(),
                executed: 0,
                synced: BTreeSet::new(),
                forks: 0,
                crash_at: None,
                reported: BTreeMap::new(),
                executed_ids: BTreeMap::new(),
            });
        }
        let mut sim = Simulation {
            rng: SimRng::new(cfg.seed ^ 0x5eed),
            cfg,
            dealing,
            genesis,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            stats: SimStats::default(),
            ingress_counter: 0,
            partition: None,
        };
        for i in 0..sim.cfg.n {
            sim.schedule(0, Event::Tick(i));
        }
        if sim.cfg.ingress_every_ms > 0 {
            sim.schedule(sim.cfg.ingress_every_ms, Event::Ingress);
        }
        Ok(sim)
    }

    /// Simulated time (ms).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Sets a node's behaviour.
    pub fn set_behavior(&mut self, i: NodeIndex, b: Behavior) {
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.behavior = b;
        }
    }

    /// Splits the network: messages between nodes of different groups are
    /// lost until [`Simulation::heal`]. `group[i]` is node i's group.
    pub fn partition(&mut self, group: Vec<u32>) {
        self.partition = Some(group);
    }

    /// Ends the partition.
    pub fn heal(&mut self) {
        self.partition = None;
    }

    /// Stops a node: it keeps its state but gets nothing until restarted.
    pub fn crash(&mut self, i: NodeIndex) {
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.up = false;
        }
    }

    /// Restarts a crashed node with the state it had.
    pub fn restart(&mut self, i: NodeIndex) {
        if let Some(n) = self.nodes.get_mut(i as usize)
            && !n.up
        {
            n.up = true;
            self.schedule(self.now, Event::Tick(i));
        }
    }

    /// Crashes node `i` when `point` comes.
    pub fn crash_at(&mut self, i: NodeIndex, point: CrashPoint) {
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.crash_at = Some(point);
        }
    }

    /// Restarts node `i` as a replica process restarts: its consensus
    /// state is gone except what it persisted (its [`Signed`] records, when
    /// `keep_disk`), it starts from the newest catch-up package at or below
    /// what it executed, and its execution (delivered blocks, state hash)
    /// is kept. `keep_disk: false` models the amnesia this must not have.
    pub fn reboot(&mut self, i: NodeIndex, keep_disk: bool) -> Result<(), ConsensusError> {
        let Some(secret) = self.dealing.secrets.get(i as usize).cloned() else {
            return Ok(());
        };
        let n = &self.nodes[i as usize];
        let start = n
            .catch_ups
            .iter()
            .filter(|c| c.content.height <= n.executed)
            .max_by_key(|c| c.content.height)
            .cloned()
            .unwrap_or_else(|| self.genesis.clone());
        let mut node = ConsensusNode::new(
            self.cfg.consensus.clone(),
            self.dealing.public.clone(),
            secret,
            start,
            make_policy(&self.cfg, i),
        )?;
        let n = &mut self.nodes[i as usize];
        if keep_disk {
            node.restore(n.disk.iter().copied());
        } else {
            n.disk.clear();
        }
        node.note_finalized_ingress(n.executed_ids.iter().map(|(id, e)| (*id, *e)));
        n.node = node;
        n.crash_at = None;
        let was_up = n.up;
        n.up = true;
        if !was_up {
            self.schedule(self.now, Event::Tick(i));
        }
        Ok(())
    }

    /// Replaces node `i` by a fresh node started from `cup` (its state taken
    /// from the package), as a replica that lost its disk would.
    pub fn rejoin_from(&mut self, i: NodeIndex, cup: CatchUpPackage) -> Result<(), ConsensusError> {
        let Some(secret) = self.dealing.secrets.get(i as usize).cloned() else {
            return Ok(());
        };
        let node = ConsensusNode::new(
            self.cfg.consensus.clone(),
            self.dealing.public.clone(),
            secret,
            cup.clone(),
            make_policy(&self.cfg, i),
        )?;
        let was_up = self.nodes[i as usize].up;
        self.nodes[i as usize] = SimNode {
            node,
            up: true,
            behavior: Behavior::Honest,
            delivered: Vec::new(),
            delivered_at_ms: Vec::new(),
            state_hash: cup.content.state_hash,
            executed: cup.content.height,
            synced: BTreeSet::from([cup.content.height]),
            catch_ups: vec![cup],
            state_syncs: 0,
            diverge_at: None,
            disk: Vec::new(),
            forks: 0,
            crash_at: None,
            reported: BTreeMap::new(),
            executed_ids: BTreeMap::new(),
        };
        if !was_up {
            self.schedule(self.now, Event::Tick(i));
        }
        Ok(())
    }

    fn schedule(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), e);
    }

    /// Runs every event up to time `until` (ms).
    pub fn run_until(&mut self, until: u64) {
        let mut budget = MAX_EVENTS;
        while budget > 0 {
            budget -= 1;
            let Some((&(at, seq), _)) = self.queue.first_key_value() else {
                break;
            };
            if at > until {
                break;
            }
            let Some(e) = self.queue.remove(&(at, seq)) else {
                break;
            };
            self.now = at;
            self.stats.events += 1;
            self.handle(e);
        }
        self.now = self.now.max(until);
    }

    /// Runs until every up, honest node delivered `height`, or `deadline`;
    /// returns whether they did.
    pub fn run_until_height(&mut self, height: Height, deadline: u64) -> bool {
        while self.now < deadline {
            let next = (self.now + 100).min(deadline);
            self.run_until(next);
            if self.min_honest_height() >= height {
                return true;
            }
        }
        self.min_honest_height() >= height
    }

    /// The lowest delivered height among up, honest nodes.
    pub fn min_honest_height(&self) -> Height {
        self.nodes
            .iter()
            .filter(|n| n.up && n.behavior == Behavior::Honest)
            .map(|n| n.node.finalized_height())
            .min()
            .unwrap_or(0)
    }

    /// Checks no two nodes delivered different blocks at a height, that each
    /// node's deliveries are consecutive, and no ingress message was
    /// delivered twice on one node. Returns the highest height seen.
    pub fn check_agreement(&self) -> Result<Height, String> {
        let mut by_height: BTreeMap<Height, (Hash32, NodeIndex)> = BTreeMap::new();
        let mut top = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            let mut prev: Option<Height> = None;
            let mut ids = std::collections::BTreeSet::new();
            for b in &n.delivered {
                if let Some(p) = prev
                    && b.height != p + 1
                    && !(b.height - 1 > p && n.synced.contains(&(b.height - 1)))
                {
                    return Err(format!("node {i} delivered {} after {p}", b.height));
                }
                prev = Some(b.height);
                top = top.max(b.height);
                match by_height.get(&b.height) {
                    Some((h, j)) if *h != b.block => {
                        return Err(format!(
                            "height {}: node {i} delivered {:?}, node {j} {:?}",
                            b.height, b.block, h
                        ));
                    }
                    _ => {
                        by_height.insert(b.height, (b.block, i as NodeIndex));
                    }
                }
                for m in &b.payload.ingress {
                    if !ids.insert(m.id()) {
                        return Err(format!("node {i} delivered an ingress message twice"));
                    }
                }
            }
            if n.node.stats().conflicting_finalizations > 0 {
                return Err(format!("node {i} saw conflicting finalizations"));
            }
            if n.forks > 0 {
                return Err(format!(
                    "node {i} was handed {} block(s) or catch-up package(s) that conflict with what it executed",
                    n.forks
                ));
            }
        }
        Ok(top)
    }

    fn handle(&mut self, e: Event) {
        match e {
            Event::Tick(i) => {
                let n = &mut self.nodes[i as usize];
                if !n.up {
                    return;
                }
                if self.cfg.detect_absent {
                    let down: Vec<NodeIndex> = (0..self.cfg.n)
                        .filter(|&j| !self.nodes[j as usize].up)
                        .collect();
                    self.nodes[i as usize].node.set_absent(down);
                }
                let n = &mut self.nodes[i as usize];
                let actions = n.node.on_tick(self.now);
                self.apply(i, actions);
                if self.nodes[i as usize].behavior == Behavior::Garbage {
                    self.send_garbage(i);
                }
                let next = self.now + self.cfg.tick_ms.max(1);
                self.schedule(next, Event::Tick(i));
            }
            Event::Message { to, from, bytes } => {
                if !self.nodes[to as usize].up {
                    return;
                }
                match Artifact::from_bytes(&bytes) {
                    Ok(a) => {
                        let actions = self.nodes[to as usize].node.on_artifact(from, a);
                        self.apply(to, actions);
                    }
                    Err(_) => self.stats.undecodable += 1,
                }
            }
            Event::Ingress => {
                self.ingress_counter += 1;
                let target = self.rng.below(u64::from(self.cfg.n)) as NodeIndex;
                let msg = IngressMessage {
                    expiry_ms: self.now + 60_000,
                    content: format!("msg-{}", self.ingress_counter).into_bytes(),
                };
                if self.nodes[target as usize].up
                    && let Ok(actions) = self.nodes[target as usize].node.submit_ingress(msg)
                {
                    self.apply(target, actions);
                }
                let next = self.now + self.cfg.ingress_every_ms;
                self.schedule(next, Event::Ingress);
            }
        }
    }

    fn apply(&mut self, i: NodeIndex, actions: Vec<Action>) {
        // Bounded: each round of follow-up actions comes from one state-hash report.
        let mut queue = actions;
        let mut rounds = 0;
        while !queue.is_empty() && rounds < 1000 {
            rounds += 1;
            let mut next = Vec::new();
            for a in queue {
                if !self.nodes[i as usize].up {
                    // Crashed midway: the rest is lost.
                    return;
                }
                let crash = self.nodes[i as usize].crash_at;
                match a {
                    Action::Persist(record) => {
                        let n = &mut self.nodes[i as usize];
                        n.disk.push(record);
                        if crash == Some(CrashPoint::AfterPersist) {
                            n.up = false;
                        }
                    }
                    Action::Broadcast(art) => {
                        let proposal =
                            matches!(&art, Artifact::Proposal(p) if p.block.proposer == i);
                        self.broadcast(i, art);
                        if proposal && crash == Some(CrashPoint::AfterProposal) {
                            self.nodes[i as usize].up = false;
                        }
                    }
                    Action::Deliver(_) if crash == Some(CrashPoint::BeforeExecute) => {
                        self.nodes[i as usize].up = false;
                    }
                    Action::StateSync(_) if crash == Some(CrashPoint::OnStateSync) => {
                        self.nodes[i as usize].up = false;
                    }
                    Action::Deliver(batch) if batch.height <= self.nodes[i as usize].executed => {
                        // Executed before a reboot: the same block, or a fork.
                        let n = &mut self.nodes[i as usize];
                        if n.executed_block(batch.height)
                            .is_some_and(|b| b != batch.block)
                        {
                            n.forks += 1;
                        } else if batch.needs_state_hash
                            && let Some(s) = n.reported.get(&batch.height).copied()
                            && let Ok(more) = n.node.on_execution_state(batch.height, s)
                        {
                            // Its share of that package again (the same bytes).
                            next.extend(more);
                        }
                    }
                    Action::Deliver(batch) => {
                        let n = &mut self.nodes[i as usize];
                        n.executed = batch.height;
                        n.executed_ids.retain(|_, e| *e > batch.time_ms);
                        for m in &batch.payload.ingress {
                            n.executed_ids.insert(m.id(), m.expiry_ms);
                        }
                        let salt: &[u8] = if n.diverge_at == Some(batch.height) {
                            b"bug"
                        } else {
                            b""
                        };
                        n.state_hash =
                            Hash32::digest(b"sim/state", &[&n.state_hash.0, &batch.block.0, salt]);
                        let (h, s, needs) = (batch.height, n.state_hash, batch.needs_state_hash);
                        n.delivered.push(batch);
                        n.delivered_at_ms.push(self.now);
                        if needs {
                            n.reported.insert(h, s);
                        }
                        if needs && let Ok(more) = n.node.on_execution_state(h, s) {
                            next.extend(more);
                        }
                    }
                    Action::CatchUpPackage(cup) => {
                        let n = &mut self.nodes[i as usize];
                        n.check_executed(&cup);
                        n.catch_ups.push(cup);
                    }
                    Action::StateSync(cup) => {
                        let history = self.history_at(&cup);
                        let n = &mut self.nodes[i as usize];
                        n.check_executed(&cup);
                        let h = cup.content.height;
                        if h > n.executed {
                            // The synced state's ingress history.
                            n.executed_ids = history;
                            let ids = n.executed_ids.iter().map(|(id, e)| (*id, *e));
                            n.node.note_finalized_ingress(ids);
                        }
                        let diverged = n
                            .reported
                            .get(&h)
                            .is_some_and(|s| *s != cup.content.state_hash);
                        if h > n.executed {
                            n.executed = h;
                            n.synced.insert(h);
                        }
                        if h >= n.executed || diverged {
                            // Jumped ahead, or its own state at h was wrong:
                            // it loads the certified state.
                            n.state_hash = cup.content.state_hash;
                            n.state_syncs += 1;
                        }
                        n.catch_ups.push(cup);
                    }
                    Action::PolicyError(_) => {}
                }
            }
            queue = next;
        }
    }

    /// The ingress history of the state `cup` certifies: the messages of
    /// the blocks any node delivered up to its height, unexpired at its time.
    fn history_at(&self, cup: &CatchUpPackage) -> BTreeMap<Hash32, u64> {
        let c = &cup.content;
        self.nodes
            .iter()
            .flat_map(|n| n.delivered.iter())
            .filter(|b| b.height <= c.height)
            .flat_map(|b| b.payload.ingress.iter())
            .filter(|m| m.expiry_ms > c.block_time_ms)
            .map(|m| (m.id(), m.expiry_ms))
            .collect()
    }

    fn send(&mut self, from: NodeIndex, to: NodeIndex, bytes: Vec<u8>) {
        if let Some(g) = &self.partition
            && g.get(from as usize) != g.get(to as usize)
        {
            self.stats.lost += 1;
            return;
        }
        let delay = self.cfg.latency_ms + self.rng.below(self.cfg.jitter_ms);
        self.stats.messages += 1;
        self.stats.bytes += bytes.len() as u64;
        self.schedule(self.now + delay, Event::Message { to, from, bytes });
    }

    fn broadcast(&mut self, from: NodeIndex, art: Artifact) {
        let behavior = self.nodes[from as usize].behavior;
        let others: Vec<NodeIndex> = (0..self.cfg.n).filter(|&j| j != from).collect();
        match behavior {
            Behavior::Honest => {
                let bytes = art.to_bytes();
                for j in others {
                    self.send(from, j, bytes.clone());
                }
            }
            Behavior::Equivocate => self.equivocate(from, art, &others),
            Behavior::BadShares => {
                let art = self.corrupt_share(from, art);
                let bytes = art.to_bytes();
                for j in others {
                    self.send(from, j, bytes.clone());
                }
            }
            Behavior::Garbage => {
                let mut bytes = art.to_bytes();
                if !bytes.is_empty() {
                    let k = self.rng.below(bytes.len() as u64) as usize;
                    bytes[k] ^= 1 << self.rng.below(8);
                }
                for j in others {
                    self.send(from, j, bytes.clone());
                }
            }
        }
    }

    fn equivocate(&mut self, from: NodeIndex, art: Artifact, others: &[NodeIndex]) {
        let secret = self.dealing.secrets[from as usize].clone();
        let Some(e) = crate::byzantine::equivocate(&secret, &art) else {
            let bytes = art.to_bytes();
            for &j in others {
                self.send(from, j, bytes.clone());
            }
            return;
        };
        let (a, b) = (art.to_bytes(), e.twin.to_bytes());
        for (k, &j) in others.iter().enumerate() {
            self.send(from, j, if k % 2 == 0 { a.clone() } else { b.clone() });
        }
        // Support both blocks.
        for share in e.shares {
            let bytes = share.to_bytes();
            for &j in others {
                self.send(from, j, bytes.clone());
            }
        }
    }

    fn corrupt_share(&mut self, from: NodeIndex, art: Artifact) -> Artifact {
        crate::byzantine::corrupt_share(&self.dealing.secrets[from as usize], art)
    }

    fn send_garbage(&mut self, from: NodeIndex) {
        let len = 1 + self.rng.below(200) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
        let to = self.rng.below(u64::from(self.cfg.n)) as NodeIndex;
        if to != from {
            self.send(from, to, bytes);
        }
    }
}
