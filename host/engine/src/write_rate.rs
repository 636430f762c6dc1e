//! How many pages each canister's updates change, remembered per canister,
//! so that the `uffd-auto` tracker keeps a *large* memory mapped for a
//! canister that writes a lot and maps it from an image otherwise.
//!
//! The two ways of running a message on a large memory cost differently
//! (`docs/persistence.md`): a kept memory (`mapped`) pays a `PAGEMAP_SCAN`
//! walk of the whole resident heap per message (~0.6 ms per GiB here) and
//! ~2 µs per written page; an image (`image`) pays ~0.1 ms whatever the
//! heap and ~8–10 µs per written page (the kernel's copy-on-write fault).
//! The break-even lies near 70–100 written pages per GiB of heap. The
//! choice is made for each memory above `KEPT_MAX_PAGES`, per canister,
//! from its last four updates. An update is *heavy* when it changes at
//! least 256 ([`HEAVY_PER_GIB`]) pages per GiB of heap and *light* below 64
//! ([`LIGHT_PER_GIB`]). A canister moves to a kept memory when three
//! ([`SWITCH_AFTER`]) of its last four ([`WINDOW`]) updates were heavy, and
//! back to images when as many were light. Counting messages rather
//! than pages keeps one outlier (a message that grows the heap by writing
//! all of it) from switching, and the gap between the two thresholds keeps
//! a canister near the break-even from going back and forth: each switch
//! copies the heap once (populating the kept memory, or building an image:
//! 0.4–0.55 s per GiB here). After a switch the choice holds for 16
//! ([`FIRST_HOLD`]) updates, twice as many after each further switch (up
//! to 1,024, [`MAX_HOLD`]), so a canister that alternates heavy and light
//! updates on purpose cannot make the node copy its heap often: no more
//! than once per that many updates. At a switch, the cache entry of the way
//! left (the kept memory or the image) is dropped.
//!
//! The record is node-local and only performance depends on it: every
//! tracker gives the same replies, instruction counts, changed-page counts
//! and state, so replicas that choose differently still agree. Reads are not
//! counted: a kept memory cannot see them (it is populated, reads do not
//! fault).

use std::collections::HashMap;
use std::sync::Mutex;

use cellar_types::Principal;

/// Changed pages per GiB of heap from which an update is heavy.
pub(crate) const HEAVY_PER_GIB: u64 = 256;
/// Changed pages per GiB of heap below which an update is light.
pub(crate) const LIGHT_PER_GIB: u64 = 64;
/// Updates remembered per canister.
const WINDOW: u32 = 4;
/// Heavy (or light) updates among the last [`WINDOW`] that switch.
const SWITCH_AFTER: u32 = 3;
/// Updates for which the choice holds after a canister's first switch.
const FIRST_HOLD: u16 = 16;
/// The longest hold (it doubles at each switch).
const MAX_HOLD: u16 = 1024;
/// Canisters remembered; when full, the ones mapped from images (the
/// default) are forgotten first, then all.
const MAX_CANISTERS: usize = 4096;
/// Pages (4 KiB) in a GiB.
const PAGES_PER_GIB: u64 = 1 << 18;

/// One canister's recent updates.
#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    /// One bit per recent update (newest lowest): heavy ones.
    heavy: u8,
    /// Light ones, likewise.
    light: u8,
    /// Whether its large memories are kept mapped.
    keep: bool,
    /// The decision changed since the last [`take_switch`].
    switched: bool,
    /// Updates left before the decision may change again.
    hold: u16,
    /// The hold set at the last switch (0: never switched).
    last_hold: u16,
}

impl Rate {
    /// Adds an update that changed `changed` pages of a heap of
    /// `heap_pages`; returns the new decision.
    fn push(&mut self, heap_pages: u64, changed: u64) -> bool {
        let per_gib = changed.saturating_mul(PAGES_PER_GIB) / heap_pages.max(1);
        let window = (1u8 << WINDOW) - 1;
        self.heavy = ((self.heavy << 1) | u8::from(per_gib >= HEAVY_PER_GIB)) & window;
        self.light = ((self.light << 1) | u8::from(per_gib < LIGHT_PER_GIB)) & window;
        if self.hold > 0 {
            self.hold -= 1;
            return self.keep;
        }
        let keep = if self.keep {
            self.light.count_ones() < SWITCH_AFTER
        } else {
            self.heavy.count_ones() >= SWITCH_AFTER
        };
        if keep != self.keep {
            self.switched = true;
            self.keep = keep;
            self.last_hold = match self.last_hold {
                0 => FIRST_HOLD,
                hold => hold.saturating_mul(2).min(MAX_HOLD),
            };
            self.hold = self.last_hold;
        }
        keep
    }
}

static RATES: Mutex<Option<HashMap<Principal, Rate>>> = Mutex::new(None);

/// Whether `canister`'s large memories should be kept mapped (its recent
/// updates changed many pages for the size of its heap).
pub(crate) fn keeps_large(canister: &Principal) -> bool {
    RATES
        .lock()
        .ok()
        .and_then(|rates| rates.as_ref()?.get(canister).map(|r| r.keep))
        .unwrap_or(false)
}

/// Records that an update of `canister`, on a heap of `heap_pages` stored
/// pages, changed `changed_pages`; returns whether its large memories
/// should now be kept mapped.
pub(crate) fn record(canister: &Principal, heap_pages: u64, changed_pages: u64) -> bool {
    let Ok(mut rates) = RATES.lock() else {
        return false;
    };
    let rates = rates.get_or_insert_with(HashMap::new);
    if rates.len() >= MAX_CANISTERS && !rates.contains_key(canister) {
        rates.retain(|_, r| r.keep);
        if rates.len() >= MAX_CANISTERS {
            rates.clear();
        }
    }
    rates
        .entry(canister.clone())
        .or_default()
        .push(heap_pages, changed_pages)
}

/// Whether `canister`'s decision changed since the last call (the memory
/// held for the other way, a kept memory or an image, can then go).
pub(crate) fn take_switch(canister: &Principal) -> bool {
    RATES
        .lock()
        .ok()
        .and_then(|mut rates| {
            let rate = rates.as_mut()?.get_mut(canister)?;
            Some(std::mem::take(&mut rate.switched))
        })
        .unwrap_or(false)
}

/// Forgets every canister's recent updates, so that `uffd-auto` chooses
/// afresh (for benchmarks: each data point starts from no history).
pub fn forget_write_rates() {
    if let Ok(mut rates) = RATES.lock() {
        *rates = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 18;

    #[test]
    fn heavy_and_light_are_per_gib_of_heap() {
        let mut rate = Rate::default();
        // 1 GiB: heavy from 256 changed pages, light below 64.
        rate.push(GIB, 256);
        rate.push(GIB, 255);
        rate.push(GIB, 63);
        rate.push(4 * GIB, 1024);
        rate.push(4 * GIB, 1023);
        assert_eq!((rate.heavy, rate.light), (0b0010, 0b0100));
        // Between the two, neither choice changes.
        let (mut kept, mut imaged) = (
            Rate {
                keep: true,
                ..Rate::default()
            },
            Rate::default(),
        );
        for _ in 0..10 {
            assert!(kept.push(GIB, 100));
            assert!(!imaged.push(GIB, 100));
        }
    }

    #[test]
    fn a_heavy_writer_is_kept_and_goes_back_to_images_when_it_calms_down() {
        let canister = Principal::canister(u64::MAX - 7);
        assert!(!keeps_large(&canister));
        // One outlier (a message that writes the whole heap) does not switch.
        assert!(!record(&canister, GIB, GIB));
        assert!(!record(&canister, GIB, 1));
        assert!(!record(&canister, GIB, 10_000));
        assert!(!take_switch(&canister));
        assert!(record(&canister, GIB, 10_000));
        assert!(keeps_large(&canister));
        assert!(take_switch(&canister));
        assert!(!take_switch(&canister));
        // The choice holds for 16 updates, whatever they change; then the
        // last four being light switches at once.
        for _ in 0..FIRST_HOLD {
            assert!(record(&canister, GIB, 1));
        }
        assert!(!record(&canister, GIB, 1));
        assert!(!keeps_large(&canister));
        assert!(take_switch(&canister));
    }

    #[test]
    fn each_switch_holds_twice_as_long_as_the_one_before() {
        let mut rate = Rate::default();
        let mut switches = Vec::new();
        // Alternating bursts of heavy and light updates, 2,000 in all.
        for i in 0..2000u32 {
            let changed = if (i / 4) % 2 == 0 { GIB } else { 0 };
            let before = rate.keep;
            if rate.push(GIB, changed) != before {
                switches.push(i);
            }
        }
        let gaps: Vec<u32> = switches.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(gaps.iter().all(|&g| g > u32::from(FIRST_HOLD)), "{gaps:?}");
        assert!(switches.len() <= 9, "{switches:?}");
    }
}
