//! What a canister offers its callers, read from the component's type.
//!
//! The conventions (see `wit/canister.wit`) are applied to the exports:
//! functions of an exported interface named `query` are queries, functions of
//! one named `lifecycle` are hooks, the `cellar:canister/callbacks` interface
//! belongs to the system, and every other exported function is an update.
//! Nothing here depends on the toolchain that built the component.
//!
//! [`CanisterInterface::of`] reads a component's exports into a
//! [`CanisterInterface`]; [`CanisterInterface::resolve`] resolves a method
//! name a client gives, and [`CanisterInterface::describe`] renders the
//! whole interface as text.

use std::fmt::Write as _;

use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, ComponentExportIndex, Type};

/// Whether a method changes state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodKind {
    /// Goes through ordering; its changes persist.
    Update,
    /// Runs on one node; its changes are discarded.
    Query,
    /// A query that may call query methods of other canisters on the node
    /// and await their replies (functions of an exported interface named
    /// `composite-query`); runs only as a query, never as an update.
    CompositeQuery,
}

/// A lifecycle hook exported by the canister.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Runs at install and reinstall with the install argument.
    Init,
    /// Runs on the old code before an upgrade.
    PreUpgrade,
    /// Runs on the new code after an upgrade, with the upgrade argument.
    PostUpgrade,
}

impl Hook {
    /// The WIT name of the hook's function.
    pub fn wit_name(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::PreUpgrade => "pre-upgrade",
            Hook::PostUpgrade => "post-upgrade",
        }
    }
}

/// One callable export of a canister.
#[derive(Clone, Debug)]
pub struct Method {
    /// The short interface name (`api`, `query`), or `None` for a function
    /// exported directly by the world.
    pub interface: Option<String>,
    /// The full name of the exported interface (`example:kv/query`).
    pub interface_full: Option<String>,
    /// The function's name (`add`).
    pub function: String,
    /// Update or query.
    pub kind: MethodKind,
    /// Parameter names and types.
    pub params: Vec<(String, Type)>,
    /// Result types (zero or one).
    pub results: Vec<Type>,
    pub(crate) index: ComponentExportIndex,
}

impl Method {
    /// The qualified name callers may always use: `api.add`, or `add` for a
    /// world-level function.
    pub fn qualified_name(&self) -> String {
        match &self.interface {
            Some(i) => format!("{i}.{}", self.function),
            None => self.function.clone(),
        }
    }

    /// The method's WIT signature, for example
    /// `add: func(key: string, value: u64)`.
    pub fn signature(&self) -> String {
        let mut out = format!("{}: func(", self.function);
        for (i, (name, ty)) in self.params.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{name}: {}", render_type(ty));
        }
        out.push(')');
        if let Some(result) = self.results.first() {
            let _ = write!(out, " -> {}", render_type(result));
        }
        out
    }
}

/// Everything a canister exports, classified.
#[derive(Clone, Debug, Default)]
pub struct CanisterInterface {
    /// Update and query methods, in export order.
    pub methods: Vec<Method>,
    /// Lifecycle hooks that the canister exports.
    pub hooks: Vec<(Hook, Method)>,
    /// Whether the canister exports `cellar:canister/callbacks`.
    pub has_callbacks: bool,
    /// `callbacks.on-reply`, when exported: receives call results.
    pub on_reply: Option<Method>,
    /// `callbacks.on-timer`, when exported: receives fired timers.
    pub on_timer: Option<Method>,
}

/// Why a method name does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodLookupError {
    /// No export by that name.
    #[error("the canister has no method '{name}'; it offers: {available}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The methods that exist, comma separated.
        available: String,
    },
    /// Several interfaces export a function by that name.
    #[error("'{name}' is ambiguous; use one of: {candidates}")]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// Qualified names that match.
        candidates: String,
    },
    /// The name is a lifecycle hook, which clients cannot call.
    #[error("'{0}' is a lifecycle hook; only the system calls it")]
    Hook(String),
}

impl CanisterInterface {
    /// Reads the interface of a compiled component.
    pub fn of(component: &Component) -> Self {
        let engine = component.engine();
        let ty = component.component_type();
        let mut interface = CanisterInterface::default();
        for (export_name, item) in ty.exports(engine) {
            match item.ty {
                // The host's own accessors (see `globals`), never a method.
                ComponentItem::ComponentFunc(_)
                    if export_name.starts_with(crate::globals::RESERVED_PREFIX) => {}
                ComponentItem::ComponentFunc(func) => {
                    let Some(index) = component.get_export_index(None, export_name) else {
                        continue;
                    };
                    interface.methods.push(method(
                        None,
                        None,
                        export_name,
                        &func,
                        MethodKind::Update,
                        index,
                    ));
                }
                ComponentItem::ComponentInstance(instance) => {
                    let short = short_interface_name(export_name);
                    let is_callbacks = export_name.starts_with("cellar:canister/callbacks");
                    interface.has_callbacks |= is_callbacks;
                    let Some(instance_index) = component.get_export_index(None, export_name) else {
                        continue;
                    };
                    for (func_name, func_item) in instance.exports(engine) {
                        let ComponentItem::ComponentFunc(func) = func_item.ty else {
                            continue;
                        };
                        let Some(index) =
                            component.get_export_index(Some(&instance_index), func_name)
                        else {
                            continue;
                        };
                        let kind = if short == "query" {
                            MethodKind::Query
                        } else if short == "composite-query" {
                            MethodKind::CompositeQuery
                        } else {
                            MethodKind::Update
                        };
                        let m = method(
                            Some(short.to_string()),
                            Some(export_name.to_string()),
                            func_name,
                            &func,
                            kind,
                            index,
                        );
                        if is_callbacks {
                            match func_name {
                                "on-reply" => interface.on_reply = Some(m),
                                "on-timer" => interface.on_timer = Some(m),
                                _ => {}
                            }
                        } else if short == "lifecycle" {
                            let hook = match func_name {
                                "init" => Hook::Init,
                                "pre-upgrade" => Hook::PreUpgrade,
                                "post-upgrade" => Hook::PostUpgrade,
                                _ => continue,
                            };
                            interface.hooks.push((hook, m));
                        } else {
                            interface.methods.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        interface
    }

    /// The hook's method, when the canister exports it.
    pub fn hook(&self, hook: Hook) -> Option<&Method> {
        self.hooks.iter().find(|(h, _)| *h == hook).map(|(_, m)| m)
    }

    /// Finds a method by its qualified name (`api.add`) or, when that is
    /// unique, by its bare function name (`add`).
    pub fn resolve(&self, name: &str) -> Result<&Method, MethodLookupError> {
        if let Some(m) = self.methods.iter().find(|m| m.qualified_name() == name) {
            return Ok(m);
        }
        if self
            .hooks
            .iter()
            .any(|(_, m)| m.qualified_name() == name || m.function == name)
            && !self.methods.iter().any(|m| m.function == name)
        {
            return Err(MethodLookupError::Hook(name.to_string()));
        }
        let matches: Vec<&Method> = self.methods.iter().filter(|m| m.function == name).collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(MethodLookupError::Unknown {
                name: name.to_string(),
                available: self
                    .methods
                    .iter()
                    .map(|m| m.qualified_name())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            many => Err(MethodLookupError::Ambiguous {
                name: name.to_string(),
                candidates: many
                    .iter()
                    .map(|m| m.qualified_name())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// A human-readable description: every interface with its functions,
    /// marked `update` or `query`, and the hooks.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut current: Option<Option<&str>> = None;
        for m in &self.methods {
            let group = m.interface_full.as_deref();
            if current != Some(group) {
                current = Some(group);
                match group {
                    Some(full) => {
                        let _ = writeln!(out, "interface {full}");
                    }
                    None => {
                        let _ = writeln!(out, "world functions");
                    }
                }
            }
            let mark = match m.kind {
                MethodKind::Update => "update",
                MethodKind::Query => "query ",
                MethodKind::CompositeQuery => "composite query",
            };
            let _ = writeln!(out, "  [{mark}] {}", m.signature());
        }
        if !self.hooks.is_empty() {
            let _ = writeln!(out, "lifecycle hooks (called by the system)");
            for (_, m) in &self.hooks {
                let _ = writeln!(out, "  [hook  ] {}", m.signature());
            }
        }
        if self.has_callbacks {
            let _ = writeln!(
                out,
                "exports cellar:canister/callbacks (replies and timers)"
            );
        }
        out
    }
}

fn method(
    interface: Option<String>,
    interface_full: Option<String>,
    function: &str,
    func: &ComponentFunc,
    kind: MethodKind,
    index: ComponentExportIndex,
) -> Method {
    Method {
        interface,
        interface_full,
        function: function.to_string(),
        kind,
        params: func
            .params()
            .map(|(name, ty)| (name.to_string(), ty))
            .collect(),
        results: func.results().collect(),
        index,
    }
}

/// `example:kv/query@1.0.0` → `query`; a plain name stays as it is.
fn short_interface_name(full: &str) -> &str {
    let without_version = full.split('@').next().unwrap_or(full);
    without_version
        .rsplit('/')
        .next()
        .unwrap_or(without_version)
}

/// Renders a component-model type in WIT syntax. Named types (records,
/// variants, enums, flags) are shown structurally because the component's
/// type information does not carry their names.
pub fn render_type(ty: &Type) -> String {
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", render_type(&l.ty())),
        Type::FixedLengthList(l) => format!("list<{}, {}>", render_type(&l.ty()), l.len()),
        Type::Map(m) => format!(
            "map<{}, {}>",
            render_type(&m.key()),
            render_type(&m.value())
        ),
        Type::Record(r) => {
            let fields: Vec<String> = r
                .fields()
                .map(|f| format!("{}: {}", f.name, render_type(&f.ty)))
                .collect();
            format!("record {{ {} }}", fields.join(", "))
        }
        Type::Tuple(t) => {
            let types: Vec<String> = t.types().map(|t| render_type(&t)).collect();
            format!("tuple<{}>", types.join(", "))
        }
        Type::Variant(v) => {
            let cases: Vec<String> = v
                .cases()
                .map(|c| match c.ty {
                    Some(t) => format!("{}({})", c.name, render_type(&t)),
                    None => c.name.to_string(),
                })
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        Type::Enum(e) => format!("enum {{ {} }}", e.names().collect::<Vec<_>>().join(", ")),
        Type::Option(o) => format!("option<{}>", render_type(&o.ty())),
        Type::Result(r) => match (r.ok(), r.err()) {
            (None, None) => "result".into(),
            (Some(ok), None) => format!("result<{}>", render_type(&ok)),
            (None, Some(err)) => format!("result<_, {}>", render_type(&err)),
            (Some(ok), Some(err)) => {
                format!("result<{}, {}>", render_type(&ok), render_type(&err))
            }
        },
        Type::Flags(f) => format!("flags {{ {} }}", f.names().collect::<Vec<_>>().join(", ")),
        Type::Own(_) => "own<resource>".into(),
        Type::Borrow(_) => "borrow<resource>".into(),
        Type::Future(_) => "future".into(),
        Type::Stream(_) => "stream".into(),
        Type::ErrorContext => "error-context".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::short_interface_name;

    #[test]
    fn short_names() {
        assert_eq!(short_interface_name("example:kv/query"), "query");
        assert_eq!(short_interface_name("example:kv/query@1.2.0"), "query");
        assert_eq!(short_interface_name("api"), "api");
    }
}
