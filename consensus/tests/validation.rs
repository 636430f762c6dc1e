//! One node fed hand-made artifacts: what it accepts, what it drops, and
//! what it does with a faulty policy.

use cellar_consensus::artifacts::{
    Artifact, Block, BlockCertificate, BlockProposal, BlockShare, Hash32, Payload,
    RandomBeaconShare, beacon_message, notarization_message, proposal_message,
};
use cellar_consensus::bls::{self, SignatureBytes};
use cellar_consensus::catch_up::genesis;
use cellar_consensus::ingress::IngressMessage;
use cellar_consensus::keys::{SubnetDealing, deal_subnet};
use cellar_consensus::policy::{ConsensusPolicy, IccDelays, PayloadLimits, RoundRobinPolicy};
use cellar_consensus::{Action, CatchUpPackage, ConsensusConfig, ConsensusNode, Height};

const LIMITS: PayloadLimits = PayloadLimits {
    max_messages: 2,
    max_bytes: 100,
};

fn round_robin() -> Box<dyn ConsensusPolicy> {
    Box::new(RoundRobinPolicy {
        delays: IccDelays::default(),
        limits: LIMITS,
    })
}

struct Setup {
    d: SubnetDealing,
    g: CatchUpPackage,
    node: ConsensusNode,
}

fn setup(policy: Box<dyn ConsensusPolicy>) -> Setup {
    let d = deal_subnet(b"validation", 4).unwrap();
    let g = genesis(&d, 1, Hash32::default()).unwrap();
    let node = ConsensusNode::new(
        ConsensusConfig::default(),
        d.public.clone(),
        d.secrets[0].clone(),
        g.clone(),
        policy,
    )
    .unwrap();
    Setup { d, g, node }
}

fn broadcasts(actions: &[Action]) -> Vec<&Artifact> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast(x) => Some(x),
            _ => None,
        })
        .collect()
}

impl Setup {
    /// Gives node 0 the beacon of height 1 (its own share plus node 1's).
    fn beacon_one(&mut self) {
        self.node.on_tick(0);
        let parent = self.g.content.beacon.hash();
        let share = RandomBeaconShare {
            height: 1,
            parent,
            signer: 1,
            signature: self.d.secrets[1]
                .beacon_share
                .sign(&beacon_message(1, &parent)),
        };
        // A bad share first: dropped as invalid.
        let mut bad = share.clone();
        bad.signature = self.d.secrets[2]
            .beacon_share
            .sign(&beacon_message(1, &parent));
        self.node.on_artifact(1, Artifact::BeaconShare(bad));
        assert_eq!(self.node.stats().invalid, 1);
        self.node.on_artifact(1, Artifact::BeaconShare(share));
    }

    fn block(&self, proposer: u32, rank: u32, time_ms: u64, ingress: Vec<IngressMessage>) -> Block {
        Block {
            height: 1,
            parent: self.g.content.block,
            rank,
            proposer,
            time_ms,
            payload: Payload { ingress },
        }
    }

    fn propose(&mut self, block: Block) -> Vec<Action> {
        let sig = self.d.secrets[block.proposer as usize % 4]
            .signing
            .sign(&proposal_message(&block.hash()));
        self.node.on_artifact(
            block.proposer,
            Artifact::Proposal(BlockProposal {
                block,
                signature: sig,
            }),
        )
    }
}

fn msg(i: u8, expiry_ms: u64) -> IngressMessage {
    IngressMessage {
        expiry_ms,
        content: vec![i; 8],
    }
}

#[test]
fn invalid_proposals_are_dropped() {
    let mut s = setup(round_robin());
    s.beacon_one();
    // Height 1, round robin: node 1 has rank 0, node 2 rank 1.
    let expect_invalid = |s: &mut Setup, b: (u32, u32, u64, Vec<IngressMessage>), what: &str| {
        let before = s.node.stats().invalid;
        let b = s.block(b.0, b.1, b.2, b.3);
        s.propose(b);
        assert_eq!(s.node.stats().invalid, before + 1, "{what}");
    };
    expect_invalid(&mut s, (2, 0, 10, vec![]), "wrong rank");
    expect_invalid(&mut s, (1, 0, 1, vec![]), "time not after parent");
    expect_invalid(
        &mut s,
        (1, 0, 10, vec![msg(1, 1000), msg(2, 1000), msg(3, 1000)]),
        "over the message limit",
    );
    expect_invalid(&mut s, (1, 0, 10, vec![msg(1, 5)]), "expired ingress");
    expect_invalid(
        &mut s,
        (1, 0, 10, vec![msg(1, 1000), msg(1, 1000)]),
        "duplicate ingress",
    );
    expect_invalid(&mut s, (9, 0, 10, vec![]), "unknown proposer");
    // A bad signature.
    let b = s.block(1, 0, 10, vec![]);
    let before = s.node.stats().invalid;
    s.node.on_artifact(
        1,
        Artifact::Proposal(BlockProposal {
            block: b.clone(),
            signature: SignatureBytes([0x11; 48]),
        }),
    );
    assert_eq!(s.node.stats().invalid, before + 1);
    // An unknown parent waits (it may be notarized later), and is not supported.
    let mut orphan = s.block(1, 0, 10, vec![]);
    orphan.parent = Hash32([9; 32]);
    s.propose(orphan);
    assert_eq!(s.node.pending_len(), 1);
    // The valid block is supported once the notary delay (100 ms) passed.
    let acts = s.propose(b.clone());
    assert!(
        !broadcasts(&acts)
            .iter()
            .any(|a| matches!(a, Artifact::NotarizationShare(_)))
    );
    let acts = s.node.on_tick(100);
    let shares: Vec<_> = broadcasts(&acts)
        .into_iter()
        .filter_map(|a| match a {
            Artifact::NotarizationShare(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0].block, b.hash());
}

#[test]
fn notarization_needs_quorum_and_moves_the_round() {
    let mut s = setup(round_robin());
    s.beacon_one();
    let b = s.block(1, 0, 10, vec![msg(1, 10_000)]);
    let hash = b.hash();
    s.propose(b);
    let sign = |i: usize| s.d.secrets[i].signing.sign(&notarization_message(1, &hash));
    let two = BlockCertificate {
        height: 1,
        block: hash,
        signers: vec![1, 2],
        signature: bls::aggregate(&[sign(1), sign(2)]).unwrap(),
    };
    s.node.on_artifact(1, Artifact::Notarization(two));
    assert_eq!(s.node.round(), 1);
    assert_eq!(s.node.stats().invalid, 2);
    let wrong_signers = BlockCertificate {
        height: 1,
        block: hash,
        signers: vec![1, 2, 3],
        signature: bls::aggregate(&[sign(1), sign(2), sign(2)]).unwrap(),
    };
    s.node.on_artifact(1, Artifact::Notarization(wrong_signers));
    assert_eq!(s.node.stats().invalid, 3);
    // Shares from 1 and 2 plus a bad one from 3, then its own at 100 ms.
    for i in [1u32, 2] {
        s.node.on_artifact(
            i,
            Artifact::NotarizationShare(BlockShare {
                height: 1,
                block: hash,
                signer: i,
                signature: sign(i as usize),
            }),
        );
    }
    s.node.on_artifact(
        3,
        Artifact::NotarizationShare(BlockShare {
            height: 1,
            block: hash,
            signer: 3,
            signature: sign(2),
        }),
    );
    assert_eq!(s.node.stats().invalid, 4);
    assert_eq!(s.node.round(), 1);
    let acts = s.node.on_tick(100);
    assert_eq!(s.node.round(), 2);
    let arts = broadcasts(&acts);
    assert!(
        arts.iter()
            .any(|a| matches!(a, Artifact::Notarization(c) if c.signers == vec![0, 1, 2]))
    );
    // It supported only that block: finalization share, and a beacon share for height 2.
    assert!(
        arts.iter()
            .any(|a| matches!(a, Artifact::FinalizationShare(f) if f.block == hash))
    );
    assert!(
        arts.iter()
            .any(|a| matches!(a, Artifact::BeaconShare(b) if b.height == 2))
    );
}

struct Faulty;
impl ConsensusPolicy for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn ranking(&self, _: Height, _: &Hash32, _: u32) -> Vec<u32> {
        vec![7, 7]
    }
    fn block_maker_delay_ms(&self, _: u32) -> u64 {
        u64::MAX
    }
    fn notary_delay_ms(&self, _: u32) -> u64 {
        u64::MAX
    }
    fn payload_limits(&self) -> PayloadLimits {
        PayloadLimits {
            max_messages: u32::MAX,
            max_bytes: u64::MAX,
        }
    }
}

#[test]
fn faulty_policy_falls_back_and_reports() {
    let mut s = setup(Box::new(Faulty));
    s.node.on_tick(0);
    let parent = s.g.content.beacon.hash();
    let share = RandomBeaconShare {
        height: 1,
        parent,
        signer: 1,
        signature: s.d.secrets[1]
            .beacon_share
            .sign(&beacon_message(1, &parent)),
    };
    let mut acts = s.node.on_artifact(1, Artifact::BeaconShare(share));
    for t in (0..=2000).step_by(50) {
        acts.extend(s.node.on_tick(t));
    }
    let errors: Vec<_> = acts
        .iter()
        .filter(|a| matches!(a, Action::PolicyError(_)))
        .collect();
    assert!(errors.len() >= 2, "{errors:?}");
    // The default ranking and delays were used: node 0 proposed at its default time.
    assert!(
        broadcasts(&acts)
            .iter()
            .any(|a| matches!(a, Artifact::Proposal(p) if p.block.proposer == 0))
    );
    assert!(s.node.stats().policy_errors > 0);
}

#[test]
fn keys_and_start_are_checked() {
    let s = setup(round_robin());
    let other = deal_subnet(b"other", 4).unwrap();
    assert!(
        ConsensusNode::new(
            ConsensusConfig::default(),
            s.d.public.clone(),
            other.secrets[0].clone(),
            s.g.clone(),
            round_robin(),
        )
        .is_err()
    );
    let mut forged = s.g.clone();
    forged.content.height = 5;
    assert!(
        ConsensusNode::new(
            ConsensusConfig::default(),
            s.d.public.clone(),
            s.d.secrets[0].clone(),
            forged,
            round_robin(),
        )
        .is_err()
    );
}

#[test]
fn waiting_queue_is_bounded() {
    let d = deal_subnet(b"validation", 4).unwrap();
    let g = genesis(&d, 1, Hash32::default()).unwrap();
    let mut node = ConsensusNode::new(
        ConsensusConfig {
            max_pending: 10,
            ..ConsensusConfig::default()
        },
        d.public.clone(),
        d.secrets[0].clone(),
        g,
        round_robin(),
    )
    .unwrap();
    // Beacon shares for height 5 wait for the beacon of height 4, which never comes.
    for i in 0..50u8 {
        node.on_artifact(
            1,
            Artifact::BeaconShare(RandomBeaconShare {
                height: 5,
                parent: Hash32([i; 32]),
                signer: 1,
                signature: SignatureBytes([i; 48]),
            }),
        );
    }
    assert_eq!(node.pending_len(), 10);
    // Far in the future or below the start: dropped at once.
    node.on_artifact(
        1,
        Artifact::BeaconShare(RandomBeaconShare {
            height: 1_000_000,
            parent: Hash32::default(),
            signer: 1,
            signature: SignatureBytes([0; 48]),
        }),
    );
    assert_eq!(node.pending_len(), 10);
    assert!(node.stats().ignored >= 41);
}

#[test]
fn forged_share_cannot_shadow_the_real_one() {
    let mut s = setup(round_robin());
    s.beacon_one();
    let b = s.block(1, 0, 10, vec![]);
    let hash = b.hash();
    s.propose(b);
    let share = |signer: u32, key: usize| {
        Artifact::NotarizationShare(BlockShare {
            height: 1,
            block: hash,
            signer,
            signature: s.d.secrets[key]
                .signing
                .sign(&notarization_message(1, &hash)),
        })
    };
    let (forged, real1, real2) = (share(1, 3), share(1, 1), share(2, 2));
    s.node.on_artifact(3, forged);
    s.node.on_artifact(1, real1);
    s.node.on_artifact(2, real2);
    let acts = s.node.on_tick(100);
    assert_eq!(s.node.round(), 2, "{acts:?}");
}
