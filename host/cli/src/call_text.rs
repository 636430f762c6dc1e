//! Parsing the call text of `cellar call` and `cellar query`:
//! `method(args)` or a bare `method`.

use anyhow::{Result, bail};

/// A method name and its WAVE argument list (without the parentheses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallText {
    /// The method, plain (`add`) or qualified (`api.add`).
    pub method: String,
    /// The arguments as WAVE, without the enclosing parentheses; empty for none.
    pub args: String,
    /// Whether the text had parentheses (`get()` rather than `get`).
    pub parenthesized: bool,
}

/// Splits `method(args)` into the method name (everything before the first
/// `(`) and the text between it and the final `)`. A bare `method` has no
/// arguments.
pub fn parse(text: &str) -> Result<CallText> {
    let text = text.trim();
    let (method, args, parenthesized) = match text.find('(') {
        None => (text, "", false),
        Some(open) => {
            let Some(inner) = text[open + 1..].strip_suffix(')') else {
                bail!("`{text}` lacks the closing parenthesis: write `method(args)`");
            };
            (text[..open].trim_end(), inner.trim(), true)
        }
    };
    if method.is_empty() {
        bail!("`{text}` names no method: write `method(args)`, for example `get(\"apple\")`");
    }
    if let Some(bad) = method
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '#')))
    {
        bail!("`{method}` is not a method name (unexpected `{bad}`): write `method(args)`");
    }
    Ok(CallText {
        method: method.to_string(),
        args: args.to_string(),
        parenthesized,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (String, String) {
        let c = parse(text).unwrap();
        (c.method, c.args)
    }

    #[test]
    fn method_with_arguments() {
        assert_eq!(
            ok(r#"add("apple", 5)"#),
            ("add".into(), r#""apple", 5"#.into())
        );
        assert_eq!(ok("api.add(1)"), ("api.add".into(), "1".into()));
        assert_eq!(ok("  get ( \"x\" )  "), ("get".into(), "\"x\"".into()));
    }

    #[test]
    fn nested_parentheses_and_strings_stay_in_the_arguments() {
        assert_eq!(
            ok(r#"put(some((1, ")")), [2])"#),
            ("put".into(), r#"some((1, ")")), [2]"#.into())
        );
    }

    #[test]
    fn bare_method_and_empty_parentheses() {
        let bare = parse("increment").unwrap();
        assert_eq!(
            (bare.method.as_str(), bare.args.as_str()),
            ("increment", "")
        );
        assert!(!bare.parenthesized);
        let empty = parse("get()").unwrap();
        assert_eq!((empty.method.as_str(), empty.args.as_str()), ("get", ""));
        assert!(empty.parenthesized);
        assert_eq!(ok("total-supply"), ("total-supply".into(), "".into()));
    }

    #[test]
    fn malformed_text_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("(1)").is_err());
        assert!(parse("add(1").is_err());
        assert!(parse("add(1) x").is_err());
        assert!(parse("add 1").is_err());
        assert!(parse("a\"b(1)").is_err());
    }
}
