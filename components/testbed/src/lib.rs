//! A fixture canister for host tests (not an example).

use cellar_sdk::{State, stable};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;

cellar_sdk::wit_bindgen::generate!({
    path: "wit",
    world: "testbed",
    runtime_path: "cellar_sdk::wit_bindgen::rt",
});

use exports::cellar::testbed::{api, lifecycle, query};

#[derive(Default)]
struct Data {
    map: BTreeMap<String, String>,
    upgrade_log: Vec<String>,
}

static DATA: State<Data> = State::new();
/// Memory kept alive by `grow-heap`.
static HEAP: State<Vec<Vec<u8>>> = State::new();

struct Testbed;

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn heap_pages() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

impl api::Guest for Testbed {
    fn trap(message: String) {
        panic!("{message}");
    }

    fn spin(iterations: u64) -> u64 {
        let mut acc: u64 = black_box(1);
        for i in 0..black_box(iterations) {
            acc = black_box(acc.wrapping_mul(6364136223846793005).wrapping_add(i | 1));
        }
        acc
    }

    fn set(key: String, value: String) {
        DATA.with_mut(|d| d.map.insert(key, value));
    }

    fn set_then_trap(key: String, value: String) {
        DATA.with_mut(|d| d.map.insert(key.clone(), value));
        panic!("set-then-trap: trapping after writing {key:?}");
    }

    fn grow_heap(mib: u32) -> u64 {
        let len = mib as usize * 1024 * 1024;
        let mut block = vec![0u8; len];
        // Touch every page so the memory is really used.
        for i in (0..len).step_by(4096) {
            block[i] = 1;
        }
        black_box(&mut block);
        HEAP.with_mut(|h| h.push(block));
        heap_pages()
    }

    fn write_pages(count: u32, seed: u64) -> u64 {
        HEAP.with_mut(|heap| {
            let Some(block) = heap.last_mut() else {
                return 0;
            };
            let pages = (block.len() / 4096) as u64;
            let mut rng = seed | 1;
            for _ in 0..count {
                rng = xorshift(rng);
                let page = (rng % pages) as usize;
                block[page * 4096 + 7] = block[page * 4096 + 7].wrapping_add(1);
            }
            pages
        })
    }

    fn read_pages(count: u32, seed: u64) -> u64 {
        HEAP.with(|heap| {
            let Some(block) = heap.last() else {
                return 0;
            };
            let pages = (block.len() / 4096) as u64;
            let mut rng = seed | 1;
            let mut sum = 0u64;
            for _ in 0..count {
                rng = xorshift(rng);
                let page = (rng % pages) as usize;
                sum += u64::from(black_box(block[page * 4096 + 7]));
            }
            sum
        })
    }

    fn peek(address: u32) -> u8 {
        // SAFETY: deliberately unchecked; the host traps out-of-bounds reads.
        unsafe { std::ptr::read_volatile(address as usize as *const u8) }
    }

    fn stable_write(offset: u64, data: Vec<u8>) {
        let end = offset
            .checked_add(data.len() as u64)
            .expect("stable-write: range overflows u64");
        if let Err(e) = stable::ensure_capacity(end) {
            panic!("stable-write: cannot grow stable memory: {e}");
        }
        stable::write(offset, &data);
    }

    fn log_line(text: String) {
        cellar_sdk::info!("{text}");
        println!("{text}");
    }

    fn reject_me(message: String) -> u64 {
        cellar_sdk::reject(&message);
        42
    }

    fn random_bytes() -> Vec<u8> {
        cellar_sdk::raw_rand().to_vec()
    }

    fn wasi_random() -> u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        hasher.finish()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    fn whoami() -> String {
        cellar_sdk::caller()
    }

    fn set_certified(data: Vec<u8>) -> Result<(), String> {
        cellar_sdk::certified_data_set(&data)
    }
}

impl query::Guest for Testbed {
    fn get(key: String) -> Option<String> {
        DATA.with(|d| d.map.get(&key).cloned())
    }

    fn count() -> u64 {
        DATA.with(|d| d.map.len() as u64)
    }

    fn write_in_query(key: String, value: String) -> u64 {
        DATA.with_mut(|d| {
            d.map.insert(key, value);
            d.map.len() as u64
        })
    }

    fn stable_read(offset: u64, len: u64) -> Vec<u8> {
        stable::read(offset, len)
    }

    fn stable_size() -> u64 {
        stable::size()
    }

    fn upgrade_log() -> Vec<String> {
        DATA.with(|d| d.upgrade_log.clone())
    }

    fn time_info() -> (u64, u64) {
        (cellar_sdk::time(), cellar_sdk::round())
    }

    fn instructions() -> u64 {
        cellar_sdk::instruction_counter()
    }
}

impl lifecycle::Guest for Testbed {
    fn init(note: Option<String>) {
        let entry = format!("init:{}", note.unwrap_or_default());
        DATA.with_mut(|d| d.upgrade_log.push(entry));
    }

    fn pre_upgrade() {
        let bytes = DATA.with(encode);
        stable::save_bytes(&bytes);
    }

    fn post_upgrade(note: Option<String>) {
        let mut data = decode(&stable::load_bytes());
        data.upgrade_log
            .push(format!("post-upgrade:{}", note.unwrap_or_default()));
        DATA.replace(data);
    }
}

// Encoding: u32 LE count of map entries, then key and value strings; then a
// u32 LE count of log entries, then the strings. A string is a u32 LE byte
// length followed by its UTF-8 bytes.

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode(d: &Data) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(d.map.len() as u32).to_le_bytes());
    for (k, v) in &d.map {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out.extend_from_slice(&(d.upgrade_log.len() as u32).to_le_bytes());
    for e in &d.upgrade_log {
        put_str(&mut out, e);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> u32 {
        let (head, rest) = self.0.split_at(4);
        self.0 = rest;
        u32::from_le_bytes(head.try_into().unwrap())
    }

    fn string(&mut self) -> String {
        let len = self.u32() as usize;
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(head.to_vec()).expect("stable memory: invalid UTF-8")
    }
}

fn decode(bytes: &[u8]) -> Data {
    let mut data = Data::default();
    if bytes.is_empty() {
        return data;
    }
    let mut r = Reader(bytes);
    for _ in 0..r.u32() {
        let k = r.string();
        let v = r.string();
        data.map.insert(k, v);
    }
    for _ in 0..r.u32() {
        data.upgrade_log.push(r.string());
    }
    data
}

export!(Testbed);
