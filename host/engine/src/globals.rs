//! Persisting the mutable globals of a component's core instances.
//!
//! Every message runs on a fresh instance, whose core-wasm globals start
//! from their initial values; linear memory is mapped from the committed
//! page maps, but a global such as a language runtime's "state allocated
//! here" pointer would be lost, and the runtime would allocate (and leak)
//! its state again in every message.
//!
//! At install, [`instrument`] rewrites the component so that the host can
//! save and restore those globals:
//!
//! 1. every top-level core module that defines mutable globals exports them
//!    under reserved names (`cellar:global:<index>`);
//! 2. a small generated core module, the *accessor*, imports all of them
//!    (from every instance of those modules) and owns one linear memory, the
//!    **globals page**: its function `save` writes each global into a fixed
//!    16-byte slot (only when the value differs, so an unchanged global
//!    dirties nothing) and a magic word; `restore` loads every slot back into
//!    its global when the magic word is there;
//! 3. both are lifted and exported from the component as
//!    `cellar-globals-save` and `cellar-globals-restore`: functions of no
//!    arguments and no results, hidden from the canister's interface.
//!
//! The accessor is instantiated last, so its memory is the last linear
//! memory of the instance and the ones before it keep their order. Being an
//! ordinary linear memory, the globals page persists, hashes, checkpoints
//! and rolls back exactly like the heap: the executor calls `restore` after
//! arming the memories and `save` after a message that persists, and a trap
//! discards the page's changes with every other one. The first message finds
//! a page of zeros (no magic word) and keeps the initial values.
//!
//! Globals of reference types cannot be saved as bytes and stay at their
//! initial values; modules nested in inner components are not instrumented
//! (no toolchain used here nests them).

use std::collections::{BTreeMap, HashSet};

use wasmtime::Store;
use wasmtime::component::ComponentExportIndex;

use wasm_encoder::{
    BlockType, CanonicalFunctionSection, CodeSection, Component, ComponentAliasSection,
    ComponentExportKind, ComponentExportSection, ComponentTypeSection, EntityType, ExportKind,
    ExportSection, Function, FunctionSection, GlobalType, ImportSection, InstanceSection, MemArg,
    MemorySection, MemoryType, Module, ModuleArg, RawSection, TypeSection, ValType,
};
use wasmparser::{
    CanonicalFunction, ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind,
    ComponentTypeRef, ExternalKind, Instance, Parser, Payload, TypeRef,
};

/// Component export that writes every mutable global to the globals page.
pub const SAVE_EXPORT: &str = "cellar-globals-save";
/// Component export that loads every mutable global from the globals page.
pub const RESTORE_EXPORT: &str = "cellar-globals-restore";
/// Prefix of the exports the instrumentation adds; never a canister method.
pub(crate) const RESERVED_PREFIX: &str = "cellar-globals-";

/// Core export name of a module's global `index`.
fn global_export_name(index: u32) -> String {
    format!("cellar:global:{index}")
}

/// Version of the instrumentation (part of the compiled-code cache key).
pub(crate) const VERSION: u32 = 1;

/// First word of a saved globals page: "CGL1" little-endian. A page without
/// it (the first message) restores nothing.
const MAGIC: i32 = i32::from_le_bytes(*b"CGL1");
/// Bytes per saved global (a v128 fits).
const SLOT: u64 = 16;
/// Offset of the first slot (after the magic word).
const FIRST_SLOT: u64 = 16;
/// Fuel given to `save` and `restore`: a few instructions per global.
pub(crate) const ACCESS_FUEL: u64 = 1 << 24;

/// What [`instrument`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instrumented {
    /// The rewritten component (the input itself when nothing was added).
    pub wasm: Vec<u8>,
    /// Mutable globals saved, over all core instances.
    pub globals: usize,
    /// Mutable globals of reference type, which stay at their initial values.
    pub skipped: usize,
}

/// A mutable global of a core module that gets saved.
#[derive(Clone, Copy)]
struct SavedGlobal {
    /// Its index in the module's global index space.
    index: u32,
    ty: ValType,
}

/// Adds save and restore of every mutable global to `component` (see the
/// module documentation). A component without mutable globals comes back
/// unchanged.
pub fn instrument(component: &[u8]) -> Result<Instrumented, String> {
    let err = |e: wasmparser::BinaryReaderError| format!("cannot parse the component: {e}");
    let mut counts = Counts::default();
    // Module index -> its saved globals (top-level modules only).
    let mut modules: BTreeMap<u32, Vec<SavedGlobal>> = BTreeMap::new();
    // Core instances of instrumented modules, with their module.
    let mut instances: Vec<(u32, u32)> = Vec::new();
    let mut sections: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut export_names: HashSet<String> = HashSet::new();
    let mut skipped = 0;
    let mut depth = 0usize;

    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(err)?;
        if depth > 0 {
            match payload {
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) => depth -= 1,
                _ => {}
            }
            continue;
        }
        let raw = payload.as_section();
        match &payload {
            Payload::Version { encoding, .. } if *encoding != wasmparser::Encoding::Component => {
                return Err("not a component".into());
            }
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                depth += 1;
                let bytes = &component[unchecked_range.clone()];
                let (rewritten, saved, refs) = instrument_module(bytes)?;
                skipped += refs;
                if !saved.is_empty() {
                    modules.insert(counts.core_modules, saved);
                }
                counts.core_modules += 1;
                sections.push((
                    wasm_encoder::ComponentSectionId::CoreModule as u8,
                    rewritten,
                ));
                continue;
            }
            Payload::ComponentSection { .. } => depth += 1,
            Payload::InstanceSection(reader) => {
                for instance in reader.clone() {
                    if let Instance::Instantiate { module_index, .. } = instance.map_err(err)?
                        && modules.contains_key(&module_index)
                    {
                        instances.push((counts.core_instances, module_index));
                    }
                    counts.core_instances += 1;
                }
            }
            Payload::ComponentTypeSection(reader) => counts.types += reader.count(),
            Payload::ComponentImportSection(reader) => {
                for import in reader.clone() {
                    match import.map_err(err)?.ty {
                        ComponentTypeRef::Module(_) => counts.core_modules += 1,
                        ComponentTypeRef::Func(_) => counts.funcs += 1,
                        ComponentTypeRef::Type(_) => counts.types += 1,
                        _ => {}
                    }
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader.clone() {
                    let export = export.map_err(err)?;
                    export_names.insert(export.name.name.to_string());
                    counts.add_component_kind(export.kind);
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader.clone() {
                    match alias.map_err(err)? {
                        ComponentAlias::InstanceExport { kind, .. } => {
                            counts.add_component_kind(kind)
                        }
                        ComponentAlias::CoreInstanceExport { kind, .. } => match kind {
                            ExternalKind::Func | ExternalKind::FuncExact => counts.core_funcs += 1,
                            ExternalKind::Global => counts.core_globals += 1,
                            _ => {}
                        },
                        ComponentAlias::Outer { kind, .. } => match kind {
                            ComponentOuterAliasKind::CoreModule => counts.core_modules += 1,
                            ComponentOuterAliasKind::Type => counts.types += 1,
                            _ => {}
                        },
                    }
                }
            }
            Payload::ComponentCanonicalSection(reader) => {
                for func in reader.clone() {
                    match func.map_err(err)? {
                        CanonicalFunction::Lift { .. } => counts.funcs += 1,
                        _ => counts.core_funcs += 1,
                    }
                }
            }
            _ => {}
        }
        if let Some((id, range)) = raw {
            sections.push((id, component[range].to_vec()));
        }
    }

    let globals: usize = instances
        .iter()
        .map(|(_, module)| modules[module].len())
        .sum();
    if globals == 0 {
        return Ok(Instrumented {
            wasm: component.to_vec(),
            globals: 0,
            skipped,
        });
    }
    for name in [SAVE_EXPORT, RESTORE_EXPORT] {
        if export_names.contains(name) {
            return Err(format!(
                "the component already exports `{name}`, a reserved name"
            ));
        }
    }

    let mut out = Component::new();
    for (id, data) in &sections {
        out.section(&RawSection { id: *id, data });
    }

    // The accessor module, importing every saved global as "g" "<n>".
    let saved: Vec<(u32, SavedGlobal)> = instances
        .iter()
        .flat_map(|(instance, module)| modules[module].iter().map(move |g| (*instance, *g)))
        .collect();
    let accessor = accessor_module(&saved.iter().map(|(_, g)| g.ty).collect::<Vec<_>>());
    out.section(&wasm_encoder::ModuleSection(&accessor));
    let accessor_module_index = counts.core_modules;

    let mut aliases = ComponentAliasSection::new();
    for (instance, global) in &saved {
        aliases.alias(wasm_encoder::Alias::CoreInstanceExport {
            instance: *instance,
            kind: ExportKind::Global,
            name: &global_export_name(global.index),
        });
    }
    out.section(&aliases);
    let first_global = counts.core_globals;

    let names: Vec<String> = (0..saved.len()).map(|n| n.to_string()).collect();
    let mut core_instances = InstanceSection::new();
    core_instances.export_items(
        names
            .iter()
            .enumerate()
            .map(|(n, name)| (name.as_str(), ExportKind::Global, first_global + n as u32)),
    );
    let imports_instance = counts.core_instances;
    core_instances.instantiate(
        accessor_module_index,
        [("g", ModuleArg::Instance(imports_instance))],
    );
    let accessor_instance = imports_instance + 1;
    out.section(&core_instances);

    let mut aliases = ComponentAliasSection::new();
    for name in ["save", "restore"] {
        aliases.alias(wasm_encoder::Alias::CoreInstanceExport {
            instance: accessor_instance,
            kind: ExportKind::Func,
            name,
        });
    }
    out.section(&aliases);
    let save_core = counts.core_funcs;

    let mut types = ComponentTypeSection::new();
    types
        .function()
        .params(std::iter::empty::<(&str, wasm_encoder::ComponentValType)>())
        .result(None);
    out.section(&types);
    let func_type = counts.types;

    let mut canon = CanonicalFunctionSection::new();
    canon.lift(save_core, func_type, []);
    canon.lift(save_core + 1, func_type, []);
    out.section(&canon);
    let save_func = counts.funcs;

    let mut exports = ComponentExportSection::new();
    exports.export(SAVE_EXPORT, ComponentExportKind::Func, save_func, None);
    exports.export(
        RESTORE_EXPORT,
        ComponentExportKind::Func,
        save_func + 1,
        None,
    );
    out.section(&exports);

    Ok(Instrumented {
        wasm: out.finish(),
        globals,
        skipped,
    })
}

/// Sizes of the component-level index spaces the instrumentation appends to.
#[derive(Default)]
struct Counts {
    core_modules: u32,
    core_instances: u32,
    core_globals: u32,
    core_funcs: u32,
    types: u32,
    funcs: u32,
}

impl Counts {
    /// An export or instance-export alias adds an item of its kind.
    fn add_component_kind(&mut self, kind: ComponentExternalKind) {
        match kind {
            ComponentExternalKind::Module => self.core_modules += 1,
            ComponentExternalKind::Func => self.funcs += 1,
            ComponentExternalKind::Type => self.types += 1,
            _ => {}
        }
    }
}

fn val_type(ty: wasmparser::ValType) -> Option<ValType> {
    match ty {
        wasmparser::ValType::I32 => Some(ValType::I32),
        wasmparser::ValType::I64 => Some(ValType::I64),
        wasmparser::ValType::F32 => Some(ValType::F32),
        wasmparser::ValType::F64 => Some(ValType::F64),
        wasmparser::ValType::V128 => Some(ValType::V128),
        wasmparser::ValType::Ref(_) => None,
    }
}

/// Reads an unsigned LEB128 `u32` at the start of `bytes`; returns it and
/// its length.
fn read_u32_leb(bytes: &[u8]) -> Result<(u32, usize), String> {
    let mut value = 0u32;
    for (i, byte) in bytes.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err("malformed section count".into())
}

/// Exports every defined mutable global of a core module under
/// [`global_export_name`]. Returns the module, the globals exported and the
/// number of reference-typed mutable globals left alone.
fn instrument_module(module: &[u8]) -> Result<(Vec<u8>, Vec<SavedGlobal>, usize), String> {
    let err = |e: wasmparser::BinaryReaderError| format!("cannot parse a core module: {e}");
    let mut imported_globals = 0u32;
    let mut saved = Vec::new();
    let mut skipped = 0;
    let mut sections: Vec<(u8, &[u8])> = Vec::new();
    let mut export_at: Option<usize> = None;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(err)?;
        match &payload {
            Payload::ImportSection(reader) => {
                for import in reader.clone().into_imports() {
                    if let TypeRef::Global(_) = import.map_err(err)?.ty {
                        imported_globals += 1;
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                for (i, global) in reader.clone().into_iter().enumerate() {
                    let ty = global.map_err(err)?.ty;
                    if !ty.mutable {
                        continue;
                    }
                    match val_type(ty.content_type) {
                        Some(ty) => saved.push(SavedGlobal {
                            index: imported_globals + i as u32,
                            ty,
                        }),
                        None => skipped += 1,
                    }
                }
            }
            Payload::End(_) => break,
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            // The export section goes after the global section and before
            // start, element, data count, code and data.
            if export_at.is_none() && matches!(id, 7..=12) {
                export_at = Some(sections.len());
            }
            sections.push((id, &module[range]));
        }
    }
    if saved.is_empty() {
        return Ok((module.to_vec(), saved, skipped));
    }
    let mut added = ExportSection::new();
    for global in &saved {
        added.export(
            &global_export_name(global.index),
            ExportKind::Global,
            global.index,
        );
    }
    // The added entries, without their count.
    let added_bytes = {
        let mut encoded = Vec::new();
        wasm_encoder::Encode::encode(&added, &mut encoded);
        // Section contents: size, count, entries; skip size and count.
        let (_, size_len) = read_u32_leb(&encoded)?;
        let (_, count_len) = read_u32_leb(&encoded[size_len..])?;
        encoded[size_len + count_len..].to_vec()
    };
    let mut out = Module::new();
    let mut export_done = false;
    let emit_exports = |out: &mut Module, existing: Option<&[u8]>| -> Result<(), String> {
        let (count, entries) = match existing {
            Some(data) => {
                let (count, len) = read_u32_leb(data)?;
                (count, &data[len..])
            }
            None => (0, &[][..]),
        };
        let mut data = Vec::new();
        wasm_encoder::Encode::encode(&(count + saved.len() as u32), &mut data);
        data.extend_from_slice(entries);
        data.extend_from_slice(&added_bytes);
        out.section(&RawSection { id: 7, data: &data });
        Ok(())
    };
    for (n, (id, data)) in sections.iter().enumerate() {
        if *id == 7 {
            emit_exports(&mut out, Some(data))?;
            export_done = true;
            continue;
        }
        if !export_done && export_at == Some(n) {
            emit_exports(&mut out, None)?;
            export_done = true;
        }
        out.section(&RawSection { id: *id, data });
    }
    if !export_done {
        emit_exports(&mut out, None)?;
    }
    Ok((out.finish(), saved, skipped))
}

/// The accessor module for globals of types `types`, imported as `g.<n>`.
fn accessor_module(types: &[ValType]) -> Module {
    let mut module = Module::new();
    let mut type_section = TypeSection::new();
    type_section.ty().function([], []);
    module.section(&type_section);

    let mut imports = ImportSection::new();
    for (n, ty) in types.iter().enumerate() {
        imports.import(
            "g",
            &n.to_string(),
            EntityType::Global(GlobalType {
                val_type: *ty,
                mutable: true,
                shared: false,
            }),
        );
    }
    module.section(&imports);

    let mut functions = FunctionSection::new();
    functions.function(0).function(0);
    module.section(&functions);

    let bytes = FIRST_SLOT + SLOT * types.len() as u64;
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: bytes.div_ceil(64 << 10),
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    module.section(&memories);

    let mut exports = ExportSection::new();
    exports.export("save", ExportKind::Func, 0);
    exports.export("restore", ExportKind::Func, 1);
    module.section(&exports);

    let mem = |offset: u64, align: u32| MemArg {
        offset,
        align,
        memory_index: 0,
    };
    let mut save = Function::new([]);
    let mut restore = Function::new([]);
    {
        let mut s = save.instructions();
        let mut r = restore.instructions();
        // restore: nothing to do before the first save.
        r.i32_const(0)
            .i32_load(mem(0, 2))
            .i32_const(MAGIC)
            .i32_ne()
            .br_if(0);
        for (n, ty) in types.iter().enumerate() {
            let g = n as u32;
            let at = FIRST_SLOT + SLOT * n as u64;
            // save: store when the stored bits differ.
            s.i32_const(0);
            match ty {
                ValType::I32 => {
                    s.i32_load(mem(at, 2)).global_get(g).i32_ne();
                }
                ValType::I64 => {
                    s.i64_load(mem(at, 3)).global_get(g).i64_ne();
                }
                ValType::F32 => {
                    s.i32_load(mem(at, 2))
                        .global_get(g)
                        .i32_reinterpret_f32()
                        .i32_ne();
                }
                ValType::F64 => {
                    s.i64_load(mem(at, 3))
                        .global_get(g)
                        .i64_reinterpret_f64()
                        .i64_ne();
                }
                ValType::V128 => {
                    s.v128_load(mem(at, 4))
                        .global_get(g)
                        .v128_xor()
                        .v128_any_true();
                }
                ValType::Ref(_) => unreachable!("reference globals are not saved"),
            }
            s.if_(BlockType::Empty).i32_const(0).global_get(g);
            r.i32_const(0);
            match ty {
                ValType::I32 => {
                    s.i32_store(mem(at, 2));
                    r.i32_load(mem(at, 2));
                }
                ValType::I64 => {
                    s.i64_store(mem(at, 3));
                    r.i64_load(mem(at, 3));
                }
                ValType::F32 => {
                    s.f32_store(mem(at, 2));
                    r.f32_load(mem(at, 2));
                }
                ValType::F64 => {
                    s.f64_store(mem(at, 3));
                    r.f64_load(mem(at, 3));
                }
                ValType::V128 => {
                    s.v128_store(mem(at, 4));
                    r.v128_load(mem(at, 4));
                }
                ValType::Ref(_) => unreachable!("reference globals are not saved"),
            }
            s.end();
            r.global_set(g);
        }
        // The magic word marks the page as saved.
        s.i32_const(0)
            .i32_load(mem(0, 2))
            .i32_const(MAGIC)
            .i32_ne()
            .if_(BlockType::Empty)
            .i32_const(0)
            .i32_const(MAGIC)
            .i32_store(mem(0, 2))
            .end();
        s.end();
        r.end();
    }
    let mut code = CodeSection::new();
    code.function(&save).function(&restore);
    module.section(&code);
    module
}

/// The save and restore exports of an instrumented component.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GlobalsAccess {
    save: ComponentExportIndex,
    restore: ComponentExportIndex,
}

impl GlobalsAccess {
    /// The accessor exports of `component`, when it was instrumented.
    pub(crate) fn of(component: &wasmtime::component::Component) -> Option<Self> {
        Some(GlobalsAccess {
            save: component.get_export_index(None, SAVE_EXPORT)?,
            restore: component.get_export_index(None, RESTORE_EXPORT)?,
        })
    }

    /// Loads the globals from the (armed) globals page into the instance.
    pub(crate) fn restore<T: 'static>(
        &self,
        store: &mut Store<T>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<()> {
        Self::call(store, instance, self.restore)
    }

    /// Writes the instance's globals to the globals page (dirtying it only
    /// when a value changed).
    pub(crate) fn save<T: 'static>(
        &self,
        store: &mut Store<T>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<()> {
        Self::call(store, instance, self.save)
    }

    /// [`Self::restore`] for stores driven asynchronously (sliced
    /// execution polls the message as a future).
    #[allow(dead_code)]
    pub(crate) async fn restore_async<T: Send + 'static>(
        &self,
        store: &mut Store<T>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<()> {
        Self::call_async(store, instance, self.restore).await
    }

    /// [`Self::save`] for stores driven asynchronously.
    #[allow(dead_code)]
    pub(crate) async fn save_async<T: Send + 'static>(
        &self,
        store: &mut Store<T>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<()> {
        Self::call_async(store, instance, self.save).await
    }

    /// As [`Self::call`], through `call_async`.
    async fn call_async<T: Send + 'static>(
        store: &mut Store<T>,
        instance: &wasmtime::component::Instance,
        index: ComponentExportIndex,
    ) -> wasmtime::Result<()> {
        let func = instance
            .get_func(&mut *store, index)
            .ok_or_else(|| wasmtime::format_err!("the globals accessor is missing"))?;
        let fuel = store.get_fuel()?;
        store.set_fuel(ACCESS_FUEL)?;
        let called = func.call_async(&mut *store, &[], &mut []).await;
        store.set_fuel(fuel)?;
        called
    }

    /// Calls an accessor function on its own fuel, leaving the message's
    /// fuel as it was (the accessor's instructions are not the canister's).
    fn call<T: 'static>(
        store: &mut Store<T>,
        instance: &wasmtime::component::Instance,
        index: ComponentExportIndex,
    ) -> wasmtime::Result<()> {
        let func = instance
            .get_func(&mut *store, index)
            .ok_or_else(|| wasmtime::format_err!("the globals accessor is missing"))?;
        let fuel = store.get_fuel()?;
        store.set_fuel(ACCESS_FUEL)?;
        let called = func.call(&mut *store, &[], &mut []);
        store.set_fuel(fuel)?;
        called
    }
}
