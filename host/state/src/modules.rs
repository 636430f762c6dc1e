//! The content-addressed module store: canister code, policies and
//! uploaded chunks as `<sha256 hex>.wasm` files, each durable before a
//! journal record names it.

use std::path::{Path, PathBuf};

/// The `modules/` directory of a data directory.
#[derive(Clone, Debug)]
pub struct ModuleStore {
    dir: PathBuf,
}

impl ModuleStore {
    /// The store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(ModuleStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the module with hash `hash` lives.
    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    /// Whether the module with hash `hash` is stored.
    pub fn contains(&self, hash: &str) -> bool {
        self.path(hash).exists()
    }

    /// Stores `wasm` under `hash`, durably, unless it is there.
    pub fn store(&self, hash: &str, wasm: &[u8]) -> anyhow::Result<()> {
        store_module_file(&self.dir, hash, wasm)
    }

    /// The module with hash `hash`.
    pub fn read(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(hash))
    }
}

/// Stores a module as `<module_hash>.wasm` in `modules_dir`, durably (file
/// and name), unless it is there.
fn store_module_file(modules_dir: &Path, module_hash: &str, wasm: &[u8]) -> anyhow::Result<()> {
    let path = modules_dir.join(format!("{module_hash}.wasm"));
    if path.exists() {
        return Ok(());
    }
    // Concurrent stores of one module each write their own file.
    static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("wasm.{n}.tmp"));
    std::fs::write(&tmp, wasm)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all())?;
    std::fs::rename(&tmp, &path)?;
    // The journal record naming the module follows: the module's name
    // must be as durable as the record.
    std::fs::File::open(modules_dir).and_then(|d| d.sync_all())?;
    Ok(())
}
