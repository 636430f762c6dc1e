//! Typed call arguments and results as text: WAVE and JSON.
//!
//! Clients write a call as `add("apple", 5)` (WAVE, the value syntax of the
//! component model that wasmtime re-exports) or send positional JSON
//! arguments (`["apple", 5]`). Either form is checked against the method's
//! WIT signature before the canister runs, and results go back in the form
//! the client asked for.
//!
//! The JSON mapping: records are objects keyed by field name, tuples and
//! lists are arrays, maps are arrays of `[key, value]` pairs, enums are
//! strings, variants are `{"case": payload}` (or `"case"` without payload),
//! options are `null` or the value, results are `{"ok": v}` / `{"err": v}`,
//! flags are arrays of names, chars are one-character strings, and
//! non-finite floats are the strings `"nan"`, `"inf"` and `"-inf"`. 64-bit
//! integers may also be given as decimal strings.

use serde_json::{Map, Value as Json};
use wasmtime::component::wasm_wave;
use wasmtime::component::wasm_wave::untyped::UntypedFuncCall;
use wasmtime::component::{Type, Val};

use crate::interface::{Method, render_type};

/// How a client encodes arguments and wants results back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// WAVE text.
    #[default]
    Wave,
    /// JSON values.
    Json,
}

/// A call's arguments as the client sent them.
#[derive(Clone, Debug, PartialEq)]
pub enum CallArgs {
    /// The WAVE text between the parentheses of `method(...)`.
    Wave(String),
    /// Positional arguments as a JSON array, or named ones as an object.
    Json(Json),
}

impl CallArgs {
    /// The size of the encoded arguments, for the argument limit.
    pub fn encoded_len(&self) -> usize {
        match self {
            CallArgs::Wave(text) => text.len(),
            CallArgs::Json(json) => json.to_string().len(),
        }
    }
}

/// A call written as text: `method(args)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallText {
    /// The method name (`add`, or qualified: `api.add`).
    pub method: String,
    /// The WAVE text of the arguments, without the parentheses.
    pub args: String,
}

/// Splits `add("apple", 5)` into the method and its WAVE arguments. A bare
/// method name means no arguments.
pub fn parse_call_text(text: &str) -> Result<CallText, String> {
    let text = text.trim();
    let (method, args) = match text.find('(') {
        None => (text, ""),
        Some(open) => {
            let Some(inner) = text[open + 1..].strip_suffix(')') else {
                return Err(format!(
                    "'{text}' is not a call: write it as method(arg, ...), for example add(\"apple\", 5)"
                ));
            };
            (text[..open].trim(), inner)
        }
    };
    let valid = !method.is_empty()
        && method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid {
        return Err(format!(
            "'{method}' is not a method name; write the call as method(arg, ...)"
        ));
    }
    Ok(CallText {
        method: method.to_string(),
        args: args.to_string(),
    })
}

/// Checks the arguments against the method's signature and converts them.
/// Errors name the expected signature.
pub fn decode_args(args: &CallArgs, method: &Method) -> Result<Vec<Val>, String> {
    let types: Vec<Type> = method.params.iter().map(|(_, t)| t.clone()).collect();
    let decoded = match args {
        CallArgs::Wave(text) => decode_wave(text, &types),
        CallArgs::Json(json) => decode_json_args(json, method, &types),
    };
    decoded.map_err(|e| {
        format!(
            "bad arguments for {}: {e}; expected {}",
            method.qualified_name(),
            method.signature()
        )
    })
}

fn decode_wave(text: &str, types: &[Type]) -> Result<Vec<Val>, String> {
    // Trailing options may be left out, also all of them.
    if text.trim().is_empty() && types.iter().all(|t| matches!(t, Type::Option(_))) {
        return Ok(types.iter().map(|_| Val::Option(None)).collect());
    }
    let source = format!("f({text})");
    let call = UntypedFuncCall::parse(&source).map_err(|e| e.to_string())?;
    call.to_wasm_params::<Val>(types.iter())
        .map_err(|e| e.to_string())
}

fn decode_json_args(json: &Json, method: &Method, types: &[Type]) -> Result<Vec<Val>, String> {
    match json {
        Json::Array(items) => {
            // Trailing options may be left out, as in WAVE.
            let required = types
                .iter()
                .rposition(|t| !matches!(t, Type::Option(_)))
                .map_or(0, |i| i + 1);
            if items.len() < required || items.len() > types.len() {
                return Err(format!(
                    "{} arguments given, {} expected",
                    items.len(),
                    types.len()
                ));
            }
            types
                .iter()
                .enumerate()
                .map(|(i, ty)| {
                    json_to_val(items.get(i).unwrap_or(&Json::Null), ty)
                        .map_err(|e| format!("argument {}: {e}", i + 1))
                })
                .collect()
        }
        Json::Object(fields) => {
            for name in fields.keys() {
                if !method.params.iter().any(|(p, _)| p == name) {
                    return Err(format!("no parameter named '{name}'"));
                }
            }
            method
                .params
                .iter()
                .map(|(name, ty)| {
                    json_to_val(fields.get(name).unwrap_or(&Json::Null), ty)
                        .map_err(|e| format!("argument '{name}': {e}"))
                })
                .collect()
        }
        _ => Err("JSON arguments must be an array (positional) or an object (by name)".into()),
    }
}

/// Parses a WAVE-encoded result (as [`results_to_wave`] writes it) against
/// the method's result types: the single result's value, or `()` (or
/// nothing) for none.
pub fn decode_results_wave(text: &str, method: &Method) -> Result<Vec<Val>, String> {
    let text = text.trim();
    let decoded = match method.results.as_slice() {
        [] if text.is_empty() || text == "()" => Ok(Vec::new()),
        [] => Err(format!("expected no value, got {text:?}")),
        [ty] => wasm_wave::from_str::<Val>(ty, text)
            .map(|v| vec![v])
            .map_err(|e| e.to_string()),
        many => {
            let inner = text
                .strip_prefix('(')
                .and_then(|t| t.strip_suffix(')'))
                .ok_or_else(|| format!("expected a tuple of {} values", many.len()))?;
            decode_wave(inner, many)
        }
    };
    decoded.map_err(|e| {
        format!(
            "bad reply for {}: {e}; expected {}",
            method.qualified_name(),
            method.signature()
        )
    })
}

/// Renders results as WAVE: the single result's value, or `()` for none.
pub fn results_to_wave(results: &[Val]) -> Result<String, String> {
    match results {
        [] => Ok("()".to_string()),
        [one] => wasm_wave::to_string(one).map_err(|e| e.to_string()),
        many => {
            let parts = many
                .iter()
                .map(|v| wasm_wave::to_string(v).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!("({})", parts.join(", ")))
        }
    }
}

/// Renders results as JSON: the single result's value, or `null` for none.
pub fn results_to_json(results: &[Val]) -> Result<Json, String> {
    match results {
        [] => Ok(Json::Null),
        [one] => val_to_json(one),
        many => many.iter().map(val_to_json).collect::<Result<_, _>>(),
    }
}

/// Renders results in the given encoding, as a JSON value (WAVE becomes a
/// JSON string).
pub fn encode_results(results: &[Val], encoding: Encoding) -> Result<Json, String> {
    match encoding {
        Encoding::Wave => results_to_wave(results).map(Json::String),
        Encoding::Json => results_to_json(results),
    }
}

fn expected(ty: &Type, got: &Json) -> String {
    let got = match got {
        Json::Null => "null".to_string(),
        Json::Bool(_) => "a boolean".to_string(),
        Json::Number(n) => format!("the number {n}"),
        Json::String(s) => format!("the string {s:?}"),
        Json::Array(_) => "an array".to_string(),
        Json::Object(_) => "an object".to_string(),
    };
    format!("expected {}, got {got}", render_type(ty))
}

fn int<T: TryFrom<i128>>(json: &Json, ty: &Type) -> Result<T, String> {
    let wide: Option<i128> = match json {
        Json::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Json::String(s) => s.parse::<i128>().ok(),
        _ => None,
    };
    let wide = wide.ok_or_else(|| expected(ty, json))?;
    T::try_from(wide).map_err(|_| format!("{wide} is out of range for {}", render_type(ty)))
}

fn float(json: &Json, ty: &Type) -> Result<f64, String> {
    match json {
        Json::Number(n) => n.as_f64().ok_or_else(|| expected(ty, json)),
        Json::String(s) if s == "nan" => Ok(f64::NAN),
        Json::String(s) if s == "inf" => Ok(f64::INFINITY),
        Json::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
        _ => Err(expected(ty, json)),
    }
}

fn boxed(json: &Json, ty: Option<Type>) -> Result<Option<Box<Val>>, String> {
    match ty {
        None => Ok(None),
        Some(ty) => Ok(Some(Box::new(json_to_val(json, &ty)?))),
    }
}

/// Converts a JSON value to a component value of the given type.
pub fn json_to_val(json: &Json, ty: &Type) -> Result<Val, String> {
    Ok(match ty {
        Type::Bool => Val::Bool(json.as_bool().ok_or_else(|| expected(ty, json))?),
        Type::S8 => Val::S8(int(json, ty)?),
        Type::U8 => Val::U8(int(json, ty)?),
        Type::S16 => Val::S16(int(json, ty)?),
        Type::U16 => Val::U16(int(json, ty)?),
        Type::S32 => Val::S32(int(json, ty)?),
        Type::U32 => Val::U32(int(json, ty)?),
        Type::S64 => Val::S64(int(json, ty)?),
        Type::U64 => Val::U64(int(json, ty)?),
        Type::Float32 => Val::Float32(float(json, ty)? as f32),
        Type::Float64 => Val::Float64(float(json, ty)?),
        Type::Char => {
            let s = json.as_str().ok_or_else(|| expected(ty, json))?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Val::Char(c),
                _ => return Err(format!("expected one character, got {s:?}")),
            }
        }
        Type::String => Val::String(json.as_str().ok_or_else(|| expected(ty, json))?.to_string()),
        Type::List(list) => {
            let items = json.as_array().ok_or_else(|| expected(ty, json))?;
            let elem = list.ty();
            Val::List(
                items
                    .iter()
                    .map(|item| json_to_val(item, &elem))
                    .collect::<Result<_, _>>()?,
            )
        }
        Type::FixedLengthList(list) => {
            let items = json.as_array().ok_or_else(|| expected(ty, json))?;
            if items.len() != list.len() as usize {
                return Err(expected(ty, json));
            }
            let elem = list.ty();
            Val::FixedLengthList(
                items
                    .iter()
                    .map(|item| json_to_val(item, &elem))
                    .collect::<Result<_, _>>()?,
            )
        }
        Type::Map(map) => {
            let items = json.as_array().ok_or_else(|| expected(ty, json))?;
            let (k, v) = (map.key(), map.value());
            let mut pairs = Vec::with_capacity(items.len());
            for item in items {
                match item.as_array().map(Vec::as_slice) {
                    Some([key, value]) => {
                        pairs.push((json_to_val(key, &k)?, json_to_val(value, &v)?))
                    }
                    _ => return Err(format!("map entries are [key, value] arrays, got {item}")),
                }
            }
            Val::Map(pairs)
        }
        Type::Record(record) => {
            let object = json.as_object().ok_or_else(|| expected(ty, json))?;
            for key in object.keys() {
                if !record.fields().any(|f| f.name == key) {
                    return Err(format!("{} has no field '{key}'", render_type(ty)));
                }
            }
            let mut fields = Vec::new();
            for field in record.fields() {
                let value = object.get(field.name).unwrap_or(&Json::Null);
                let val = json_to_val(value, &field.ty)
                    .map_err(|e| format!("field '{}': {e}", field.name))?;
                fields.push((field.name.to_string(), val));
            }
            Val::Record(fields)
        }
        Type::Tuple(tuple) => {
            let items = json.as_array().ok_or_else(|| expected(ty, json))?;
            if items.len() != tuple.types().len() {
                return Err(expected(ty, json));
            }
            Val::Tuple(
                items
                    .iter()
                    .zip(tuple.types())
                    .map(|(item, t)| json_to_val(item, &t))
                    .collect::<Result<_, _>>()?,
            )
        }
        Type::Variant(variant) => {
            let (name, payload) = match json {
                Json::String(name) => (name.as_str(), &Json::Null),
                Json::Object(o) if o.len() == 1 => {
                    let (k, v) = o.iter().next().expect("one entry");
                    (k.as_str(), v)
                }
                _ => return Err(expected(ty, json)),
            };
            let case = variant
                .cases()
                .find(|c| c.name == name)
                .ok_or_else(|| format!("{} has no case '{name}'", render_type(ty)))?;
            Val::Variant(name.to_string(), boxed(payload, case.ty)?)
        }
        Type::Enum(e) => {
            let name = json.as_str().ok_or_else(|| expected(ty, json))?;
            if !e.names().any(|n| n == name) {
                return Err(format!("{} has no case '{name}'", render_type(ty)));
            }
            Val::Enum(name.to_string())
        }
        Type::Option(option) => match json {
            Json::Null => Val::Option(None),
            value => Val::Option(Some(Box::new(json_to_val(value, &option.ty())?))),
        },
        Type::Result(result) => {
            let object = json.as_object().filter(|o| o.len() == 1);
            let Some((key, payload)) = object.and_then(|o| o.iter().next()) else {
                return Err(format!(
                    "{}; write {{\"ok\": ...}} or {{\"err\": ...}}",
                    expected(ty, json)
                ));
            };
            match key.as_str() {
                "ok" => Val::Result(Ok(boxed(payload, result.ok())?)),
                "err" => Val::Result(Err(boxed(payload, result.err())?)),
                _ => {
                    return Err(format!(
                        "results are {{\"ok\": ...}} or {{\"err\": ...}}, got '{key}'"
                    ));
                }
            }
        }
        Type::Flags(flags) => {
            let names = json.as_array().ok_or_else(|| expected(ty, json))?;
            let mut set = Vec::new();
            for name in names {
                let name = name.as_str().ok_or_else(|| expected(ty, json))?;
                if !flags.names().any(|n| n == name) {
                    return Err(format!("{} has no flag '{name}'", render_type(ty)));
                }
                set.push(name.to_string());
            }
            Val::Flags(set)
        }
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => {
            return Err(format!(
                "{} values cannot be passed from outside",
                render_type(ty)
            ));
        }
    })
}

fn payload_json(payload: &Option<Box<Val>>) -> Result<Json, String> {
    match payload {
        None => Ok(Json::Null),
        Some(v) => val_to_json(v),
    }
}

fn float_json(f: f64) -> Json {
    if f.is_nan() {
        Json::String("nan".into())
    } else if f.is_infinite() {
        Json::String(if f > 0.0 { "inf" } else { "-inf" }.into())
    } else {
        serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
    }
}

/// Converts a component value to JSON (the mapping in the module docs).
pub fn val_to_json(val: &Val) -> Result<Json, String> {
    Ok(match val {
        Val::Bool(b) => Json::Bool(*b),
        Val::S8(v) => Json::from(*v),
        Val::U8(v) => Json::from(*v),
        Val::S16(v) => Json::from(*v),
        Val::U16(v) => Json::from(*v),
        Val::S32(v) => Json::from(*v),
        Val::U32(v) => Json::from(*v),
        Val::S64(v) => Json::from(*v),
        Val::U64(v) => Json::from(*v),
        Val::Float32(v) => float_json(f64::from(*v)),
        Val::Float64(v) => float_json(*v),
        Val::Char(c) => Json::String(c.to_string()),
        Val::String(s) => Json::String(s.clone()),
        Val::List(items) | Val::Tuple(items) | Val::FixedLengthList(items) => {
            Json::Array(items.iter().map(val_to_json).collect::<Result<_, _>>()?)
        }
        Val::Map(pairs) => Json::Array(
            pairs
                .iter()
                .map(|(k, v)| Ok(Json::Array(vec![val_to_json(k)?, val_to_json(v)?])))
                .collect::<Result<_, String>>()?,
        ),
        Val::Record(fields) => {
            let mut object = Map::new();
            for (name, v) in fields {
                object.insert(name.clone(), val_to_json(v)?);
            }
            Json::Object(object)
        }
        Val::Variant(name, None) => Json::String(name.clone()),
        Val::Variant(name, Some(payload)) => {
            let mut object = Map::new();
            object.insert(name.clone(), val_to_json(payload)?);
            Json::Object(object)
        }
        Val::Enum(name) => Json::String(name.clone()),
        Val::Option(None) => Json::Null,
        Val::Option(Some(v)) => val_to_json(v)?,
        Val::Result(result) => {
            let (key, payload) = match result {
                Ok(p) => ("ok", p),
                Err(p) => ("err", p),
            };
            let mut object = Map::new();
            object.insert(key.to_string(), payload_json(payload)?);
            Json::Object(object)
        }
        Val::Flags(names) => Json::Array(names.iter().cloned().map(Json::String).collect()),
        Val::Resource(_) | Val::Future(_) | Val::Stream(_) | Val::ErrorContext(_) => {
            return Err("resources, futures and streams cannot leave a canister".into());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_text_splits_method_and_args() {
        let call = parse_call_text(" add(\"apple\", 5) ").unwrap();
        assert_eq!(call.method, "add");
        assert_eq!(call.args, "\"apple\", 5");
        assert_eq!(parse_call_text("api.get").unwrap().args, "");
        assert!(parse_call_text("add(1").is_err());
        assert!(parse_call_text("(1)").is_err());
        assert!(parse_call_text("a b(1)").is_err());
    }

    #[test]
    fn scalars_round_trip_through_json() {
        let cases = [
            (Type::U64, Json::from(u64::MAX)),
            (Type::S8, Json::from(-5)),
            (Type::String, Json::from("x")),
            (Type::Bool, Json::from(true)),
            (Type::Char, Json::from("é")),
        ];
        for (ty, json) in cases {
            let val = json_to_val(&json, &ty).unwrap();
            assert_eq!(val_to_json(&val).unwrap(), json);
        }
        assert_eq!(
            json_to_val(&Json::from("18446744073709551615"), &Type::U64).unwrap(),
            Val::U64(u64::MAX)
        );
        assert!(json_to_val(&Json::from(256), &Type::U8).is_err());
        assert!(json_to_val(&Json::from("5"), &Type::String).is_ok());
        assert!(json_to_val(&Json::from(5), &Type::String).is_err());
        let nan = json_to_val(&Json::from("nan"), &Type::Float64).unwrap();
        assert_eq!(val_to_json(&nan).unwrap(), Json::from("nan"));
    }
}
