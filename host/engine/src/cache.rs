//! Compiled canister code, shared by every canister that runs the same binary.
//!
//! [`CodeCache`] validates a binary (refusing what is not wasm, a core
//! module instead of a component, an invalid component, or one that does
//! not link against the system API: [`InstallError`]), instruments it so
//! that its mutable globals persist (`globals`), compiles it once per
//! SHA-256 of the original binary, and links an `InstancePre` shared by
//! every canister running that code.
//!
//! Compiling a component takes milliseconds to seconds (Python and
//! JavaScript components are megabytes), so compiled code is also kept on
//! disk as `.cwasm` files named after the hash and the instrumentation
//! version, under a directory named after the engine's compatibility hash: a
//! `.cwasm` compiled by a different wasmtime or with different settings is
//! never loaded.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

use crate::globals::{self, GlobalsAccess};
use crate::interface::CanisterInterface;
use crate::system_api::{HostState, add_to_linker};

/// Why a binary cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The binary exceeds the size limit.
    #[error("the module is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Bytes given.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The binary is not WebAssembly at all.
    #[error("not a WebAssembly binary (it does not start with \\0asm)")]
    NotWasm,
    /// The binary is a core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component; build for wasm32-wasip2 \
         (or adapt the module with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component does not validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component imports something the system does not provide.
    #[error("the component cannot be linked against the system API: {0}")]
    Link(String),
}

/// A compiled component, ready to instantiate.
pub struct CanisterCode {
    /// SHA-256 of the component binary.
    pub hash: [u8; 32],
    /// Size of the component binary.
    pub size: usize,
    /// What the canister exports.
    pub interface: CanisterInterface,
    pub(crate) pre: InstancePre<HostState>,
    /// The save and restore exports added at install, when there are
    /// globals to persist.
    pub(crate) globals: Option<GlobalsAccess>,
    /// Whether instantiation runs code (a core module's or the component's
    /// start function), which may write anywhere in memory: the pages it
    /// writes are then not the same on every instantiation (see `mapped`).
    pub(crate) has_start: bool,
}

/// Whether `wasm` (a component) holds a start function at any level.
fn has_start_function(wasm: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(wasm).any(|payload| {
        matches!(
            payload,
            Ok(wasmparser::Payload::StartSection { .. })
                | Ok(wasmparser::Payload::ComponentStartSection { .. })
        ) || payload.is_err()
    })
}

impl CanisterCode {
    /// The module hash as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }

    /// The engine the code was compiled for.
    pub fn engine(&self) -> &Engine {
        self.pre.engine()
    }
}

impl std::fmt::Debug for CanisterCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanisterCode")
            .field("hash", &self.hash_hex())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles components once and hands out shared [`CanisterCode`].
pub struct CodeCache {
    engine: Engine,
    linker: Linker<HostState>,
    loaded: Mutex<HashMap<[u8; 32], Arc<CanisterCode>>>,
    disk_dir: Option<PathBuf>,
    max_component_bytes: usize,
}

impl CodeCache {
    /// A cache for `engine`, keeping compiled code under `disk_dir` (when
    /// given) and refusing binaries larger than `max_component_bytes`.
    pub fn new(
        engine: Engine,
        disk_dir: Option<&Path>,
        max_component_bytes: usize,
    ) -> anyhow::Result<Self> {
        let mut linker = Linker::new(&engine);
        add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let disk_dir = match disk_dir {
            None => None,
            Some(dir) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                engine.precompile_compatibility_hash().hash(&mut hasher);
                let dir = dir.join(format!("{:016x}", hasher.finish()));
                std::fs::create_dir_all(&dir)?;
                Some(dir)
            }
        };
        Ok(CodeCache {
            engine,
            linker,
            loaded: Mutex::new(HashMap::new()),
            disk_dir,
            max_component_bytes,
        })
    }

    /// The engine code is compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Number of distinct compiled components held in memory.
    pub fn len(&self) -> usize {
        self.loaded.lock().expect("cache lock").len()
    }

    /// Whether no code is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Validates, compiles (or finds) and links a component binary.
    pub fn load(&self, wasm: &[u8]) -> Result<Arc<CanisterCode>, InstallError> {
        if wasm.len() > self.max_component_bytes {
            return Err(InstallError::TooLarge {
                size: wasm.len(),
                limit: self.max_component_bytes,
            });
        }
        check_header(wasm)?;
        let hash: [u8; 32] = Sha256::digest(wasm).into();
        if let Some(code) = self.loaded.lock().expect("cache lock").get(&hash) {
            return Ok(code.clone());
        }
        let component = self.compile(wasm, &hash)?;
        let globals = GlobalsAccess::of(&component);
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| InstallError::Link(format!("{e:#}")))?;
        let code = Arc::new(CanisterCode {
            hash,
            size: wasm.len(),
            interface: CanisterInterface::of(&component),
            pre,
            globals,
            has_start: has_start_function(wasm),
        });
        let mut loaded = self.loaded.lock().expect("cache lock");
        Ok(loaded.entry(hash).or_insert(code).clone())
    }

    /// Instruments (see [`globals::instrument`]) and compiles `wasm`, or
    /// loads the compiled code from disk.
    fn compile(&self, wasm: &[u8], hash: &[u8; 32]) -> Result<Component, InstallError> {
        // The instrumentation version is part of the name: code compiled
        // from another instrumentation is never loaded.
        let cached = self
            .disk_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.g{}.cwasm", hex(hash), globals::VERSION)));
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (the directory name),
            // into the node's own data directory.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable compiled code: {e:#}")
                }
            }
        }
        let invalid = |e: String| {
            // Errors must point at the canister's code, not at the
            // instrumented version: report the original's validation error
            // when there is one.
            match wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
                .validate_all(wasm)
            {
                Err(original) => InstallError::Invalid(original.to_string()),
                Ok(_) => InstallError::Invalid(e),
            }
        };
        let instrumented = globals::instrument(wasm).map_err(invalid)?;
        let component = Component::new(&self.engine, &instrumented.wasm)
            .map_err(|e| invalid(format!("{e:#}")))?;
        if let Some(path) = cached
            && let Err(e) = write_atomically(&path, &component)
        {
            tracing::warn!(path = %path.display(), "cannot cache compiled code: {e:#}");
        }
        Ok(component)
    }
}

fn write_atomically(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let tmp = path.with_extension("cwasm.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Tells components from core modules and from non-wasm before compiling.
fn check_header(wasm: &[u8]) -> Result<(), InstallError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(InstallError::NotWasm);
    }
    // Bytes 4..8: version (u16) and layer (u16); layer 1 is a component.
    match (wasm[6], wasm[7]) {
        (0, 0) => Err(InstallError::CoreModule),
        (1, 0) => Ok(()),
        _ => Err(InstallError::Invalid(format!(
            "unknown binary layer {:#04x}{:02x}",
            wasm[7], wasm[6]
        ))),
    }
}
