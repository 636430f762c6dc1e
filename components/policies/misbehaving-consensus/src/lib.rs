//! A test fixture, not a policy to use: a consensus policy that misbehaves
//! in a way chosen by its arguments, so that one component exercises every
//! way the host must survive a bad consensus policy.
//!
//! `ranking`, by `height % 8`:
//!
//! | height % 8 | behaviour                                          |
//! |------------|----------------------------------------------------|
//! | 0          | a valid ranking (the ICC beacon permutation)       |
//! | 1          | traps (panics)                                     |
//! | 2          | loops forever (runs past its instruction limit)    |
//! | 3          | names one node twice (not a permutation)           |
//! | 4          | one node too few                                   |
//! | 5          | names a node that does not exist                   |
//! | 6          | allocates memory until the host refuses to grow it |
//! | 7          | returns a list of 1 M zeros                        |
//!
//! `block-maker-delay-ms` and `notary-delay-ms`, by `rank % 4`: 0 the ICC
//! delay, 1 a delay far over the cap (`u64::MAX` / one hour), 2 traps,
//! 3 loops forever. `payload-limits` asks for more than the hard caps.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use policy_rt::consensus;

wit_bindgen::generate!({
    path: "../../../wit/consensus",
    world: "consensus-policy",
});

struct Misbehaving;

fn spin() -> ! {
    let mut x = 1u64;
    loop {
        x = core::hint::black_box(x.wrapping_mul(3) | 1);
    }
}

fn delay(rank: u32, valid: u64, absurd: u64) -> u64 {
    match rank % 4 {
        0 => valid,
        1 => absurd,
        2 => panic!("misbehaving consensus policy: trap"),
        _ => spin(),
    }
}

impl Guest for Misbehaving {
    fn name() -> String {
        "misbehaving".into()
    }

    fn ranking(height: u64, beacon: Vec<u8>, n: u32) -> Vec<u32> {
        let mut perm = consensus::beacon_permutation(height, &beacon, n);
        match height % 8 {
            1 => panic!("misbehaving consensus policy: trap"),
            2 => spin(),
            3 => {
                if perm.len() >= 2 {
                    perm[1] = perm[0];
                } else {
                    perm.push(0);
                }
            }
            4 => {
                if perm.pop().is_none() {
                    perm.push(0);
                }
            }
            5 => {
                if let Some(first) = perm.first_mut() {
                    *first = n;
                } else {
                    perm.push(n);
                }
            }
            6 => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Reserved, not written: the memory grows, fuel barely moves.
                    let block: Vec<u8> = Vec::with_capacity(1 << 24);
                    hoard.push(core::hint::black_box(block));
                }
            }
            7 => perm = alloc::vec![0; 1_000_000],
            _ => {}
        }
        perm
    }

    fn block_maker_delay_ms(rank: u32) -> u64 {
        delay(rank, consensus::block_maker_delay_ms(rank), u64::MAX)
    }

    fn notary_delay_ms(rank: u32) -> u64 {
        delay(rank, consensus::notary_delay_ms(rank), 3_600_000)
    }

    fn payload_limits() -> PayloadLimits {
        PayloadLimits {
            max_messages: 1_000_000,
            max_bytes: u64::MAX,
        }
    }
}

export!(Misbehaving);
