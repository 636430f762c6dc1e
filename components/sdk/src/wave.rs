//! Values as WAVE text, the encoding of inter-canister call arguments and
//! replies (the same text `cellar call` accepts and prints).
//!
//! [`ToWave`] writes a value, [`ToWaveArgs`] an argument list (a tuple),
//! [`FromWave`] reads a reply. They cover the WIT types canisters pass most:
//! bool, integers, strings, `option`, `result`, `list`, tuples and `()`.

use wasm_wave::ast::Node;
use wasm_wave::untyped::UntypedValue;

/// A value that can be written as WAVE.
pub trait ToWave {
    /// Appends the WAVE text of `self` to `out`.
    fn to_wave(&self, out: &mut String);
}

/// A value that can be read from WAVE.
pub trait FromWave: Sized {
    /// Reads one value from a parsed node of `source`.
    fn from_node(node: &Node, source: &str) -> Result<Self, String>;

    /// Parses `text` as one value.
    fn from_wave(text: &str) -> Result<Self, String> {
        let value = UntypedValue::parse(text).map_err(|e| format!("{e} in {text:?}"))?;
        Self::from_node(value.node(), value.source())
    }
}

/// Any value, kept as its WAVE text (for replies of any type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawWave(pub String);

impl FromWave for RawWave {
    fn from_node(node: &Node, source: &str) -> Result<Self, String> {
        Ok(RawWave(source[node.span()].to_string()))
    }

    fn from_wave(text: &str) -> Result<Self, String> {
        Ok(RawWave(text.trim().to_string()))
    }
}

/// An argument list: a tuple of [`ToWave`] values, written in parentheses.
pub trait ToWaveArgs {
    /// The WAVE argument list, for example `("apple", 5)`.
    fn to_wave_args(&self) -> String;
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl ToWave for $t {
            fn to_wave(&self, out: &mut String) {
                out.push_str(&self.to_string());
            }
        }
        impl FromWave for $t {
            fn from_node(node: &Node, source: &str) -> Result<Self, String> {
                node.as_number(source).map_err(|e| e.to_string())
            }
        }
    )*};
}
integers!(u8, u16, u32, u64, i8, i16, i32, i64);

impl ToWave for bool {
    fn to_wave(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
}

impl FromWave for bool {
    fn from_node(node: &Node, _source: &str) -> Result<Self, String> {
        node.as_bool().map_err(|e| e.to_string())
    }
}

impl ToWave for str {
    fn to_wave(&self, out: &mut String) {
        out.push('"');
        for c in self.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

impl ToWave for String {
    fn to_wave(&self, out: &mut String) {
        self.as_str().to_wave(out)
    }
}

impl<T: ToWave + ?Sized> ToWave for &T {
    fn to_wave(&self, out: &mut String) {
        (*self).to_wave(out)
    }
}

impl FromWave for String {
    fn from_node(node: &Node, source: &str) -> Result<Self, String> {
        node.as_str(source)
            .map(|s| s.into_owned())
            .map_err(|e| e.to_string())
    }
}

impl<T: ToWave> ToWave for Option<T> {
    fn to_wave(&self, out: &mut String) {
        match self {
            Some(v) => {
                out.push_str("some(");
                v.to_wave(out);
                out.push(')');
            }
            None => out.push_str("none"),
        }
    }
}

impl<T: FromWave> FromWave for Option<T> {
    fn from_node(node: &Node, source: &str) -> Result<Self, String> {
        match node.as_option().map_err(|e| e.to_string())? {
            Some(inner) => T::from_node(inner, source).map(Some),
            None => Ok(None),
        }
    }
}

impl<T: ToWave, E: ToWave> ToWave for Result<T, E> {
    fn to_wave(&self, out: &mut String) {
        let (label, v): (&str, &dyn ToWave) = match self {
            Ok(v) => ("ok(", v),
            Err(e) => ("err(", e),
        };
        out.push_str(label);
        v.to_wave(out);
        out.push(')');
    }
}

impl<T: FromWave, E: FromWave> FromWave for Result<T, E> {
    fn from_node(node: &Node, source: &str) -> Result<Self, String> {
        match node.as_result().map_err(|e| e.to_string())? {
            Ok(Some(v)) => T::from_node(v, source).map(Ok),
            Err(Some(e)) => E::from_node(e, source).map(Err),
            _ => Err("a result without payload".into()),
        }
    }
}

impl<T: ToWave> ToWave for Vec<T> {
    fn to_wave(&self, out: &mut String) {
        out.push('[');
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            v.to_wave(out);
        }
        out.push(']');
    }
}

impl<T: FromWave> FromWave for Vec<T> {
    fn from_node(node: &Node, source: &str) -> Result<Self, String> {
        node.as_list()
            .map_err(|e| e.to_string())?
            .map(|n| T::from_node(n, source))
            .collect()
    }
}

impl ToWave for () {
    fn to_wave(&self, out: &mut String) {
        out.push_str("()");
    }
}

impl FromWave for () {
    fn from_node(node: &Node, _source: &str) -> Result<Self, String> {
        match node.as_tuple() {
            Ok(items) if items.len() == 0 => Ok(()),
            _ => Err("expected no value".into()),
        }
    }

    fn from_wave(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "()" => Ok(()),
            other => Err(format!("expected no value, got {other:?}")),
        }
    }
}

macro_rules! tuples {
    ($(($($name:ident),+)),*) => {$(
        #[allow(non_snake_case)]
        impl<$($name: ToWave),+> ToWaveArgs for ($($name,)+) {
            fn to_wave_args(&self) -> String {
                let ($($name,)+) = self;
                let mut out = String::from("(");
                let mut first = true;
                $(
                    if !first { out.push_str(", "); }
                    first = false;
                    $name.to_wave(&mut out);
                )+
                let _ = first;
                out.push(')');
                out
            }
        }
    )*};
}
tuples!((A), (A, B), (A, B, C), (A, B, C, D));

macro_rules! tuple_values {
    ($(($($name:ident),+)),*) => {$(
        /// A WIT tuple value: `(a, b)`.
        impl<$($name: ToWave),+> ToWave for ($($name,)+) {
            fn to_wave(&self, out: &mut String) {
                out.push_str(&self.to_wave_args());
            }
        }
    )*};
}
tuple_values!((A, B), (A, B, C), (A, B, C, D));

impl ToWaveArgs for () {
    fn to_wave_args(&self) -> String {
        "()".into()
    }
}
