//! The bits of Python behaviour that Hugging Face templates rely on: how `{{ value }}` prints
//! (`True`, `None`, `['a', 1]`), `json.dumps` for `tojson`, and `strftime_now`.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};

/// Python's `str(value)`: what `{{ value }}` prints under jinja2.
pub fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => py_repr(value),
    }
}

/// Python's `repr(value)` for the JSON-like values templates handle.
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&py_number(value)),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (index, item) in value.try_iter().into_iter().flatten().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (index, key) in value.try_iter().into_iter().flatten().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key);
                out.push_str(": ");
                write_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// Python's string repr: single quotes unless the text has a single quote and no double quote.
fn write_str_repr(out: &mut String, text: &str) {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's repr of an int or float (`1.0`, `1e-05`, `inf`).
fn py_number(value: &Value) -> String {
    if let Ok(integer) = i128::try_from(value.clone()) {
        if !value.is_integer() {
            // A float with an integral value, e.g. 2.0.
            return format!("{integer}.0");
        }
        return integer.to_string();
    }
    let float = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    py_float(float)
}

fn py_float(float: f64) -> String {
    if float.is_nan() {
        return "NaN".to_owned();
    }
    if float.is_infinite() {
        return if float > 0.0 {
            "Infinity".to_owned()
        } else {
            "-Infinity".to_owned()
        };
    }
    if float == float.trunc() && float.abs() < 1e16 {
        return format!("{float:.1}");
    }
    let repr = format!("{float:?}");
    // Rust writes 1e-5 where Python writes 1e-05.
    match repr.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(digits) => ('-', digits),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => repr,
    }
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, which is not minijinja's HTML-safe `tojson`.
pub fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(indent) if indent.is_none() => None,
        Some(indent) => match indent.as_str() {
            Some(text) => Some(text.to_owned()),
            None => {
                let width = i64::try_from(indent).map_err(|_| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    )
                })?;
                Some(" ".repeat(width.max(0) as usize))
            }
        },
    };
    let (item_separator, key_separator) = match separators {
        Some(separators) if !separators.is_none() => {
            let item = separators
                .get_item_by_index(0)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            let key = separators
                .get_item_by_index(1)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            match (item, key) {
                (Some(item), Some(key)) => (item, key),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ));
                }
            }
        }
        // json.dumps uses ", " without indent and "," with one.
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let options = JsonOptions {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
        indent,
        item_separator,
        key_separator,
    };
    let mut out = String::new();
    write_json(&mut out, value, &options, 0)?;
    Ok(Value::from(out))
}

struct JsonOptions {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
}

fn write_json(
    out: &mut String,
    value: &Value,
    options: &JsonOptions,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let number = py_number(value);
            out.push_str(&number);
        }
        ValueKind::String => write_json_string(
            out,
            value.as_str().unwrap_or_default(),
            options.ensure_ascii,
        ),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), options, depth, |out, index| {
                write_json(out, &items[index], options, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if options.sort_keys {
                keys.sort();
            }
            write_container(out, '{', '}', keys.len(), options, depth, |out, index| {
                let key = &keys[index];
                // json.dumps turns int, float, bool and None keys into strings.
                let key_text = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
                    ValueKind::None | ValueKind::Undefined => "null".to_owned(),
                    _ => py_str(key),
                };
                write_json_string(out, &key_text, options.ensure_ascii);
                out.push_str(&options.key_separator);
                write_json(out, &value.get_item(key)?, options, depth + 1)
            })?;
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a {} is not JSON serializable", value.kind()),
            ));
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    options: &JsonOptions,
    depth: usize,
    mut write_item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for index in 0..len {
        if index > 0 {
            out.push_str(&options.item_separator);
        }
        if let Some(indent) = &options.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth + 1));
        }
        write_item(out, index)?;
    }
    if let Some(indent) = &options.indent {
        out.push('\n');
        out.push_str(&indent.repeat(depth));
    }
    out.push(close);
    Ok(())
}

fn write_json_string(out: &mut String, text: &str, ensure_ascii: bool) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The template variable that pins `strftime_now` to a fixed time (RFC 3339), for
/// reproducible renders. Not set by default.
pub const NOW_VARIABLE: &str = "__temper_now";

/// `strftime_now(format)`: the current local time formatted with a C `strftime` format.
pub fn strftime_now(state: &State, format: &str) -> Result<Value, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|item| matches!(item, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format string {format:?}"),
        ));
    }
    let pinned = state
        .lookup(NOW_VARIABLE)
        .and_then(|value| value.as_str().map(str::to_owned));
    let now = match pinned {
        Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
            .map_err(|error| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: bad pinned time {text:?}: {error}"),
                )
            })?
            .naive_local(),
        None => chrono::Local::now().naive_local(),
    };
    Ok(Value::from(
        now.format_with_items(items.into_iter()).to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, ctx: Value) -> String {
        let env = crate::template::environment();
        env.render_str(source, ctx).unwrap()
    }

    #[test]
    fn values_print_as_python_prints_them() {
        let ctx = minijinja::context! { t => true, n => (), l => vec![Value::from("a'b"), Value::from(1), Value::from(2.5)] };
        assert_eq!(
            render("{{ t }} {{ n }} {{ l }} {{ t | string }}", ctx),
            "True None [\"a'b\", 1, 2.5] True"
        );
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let data: Value = Value::from_serialize(
            serde_json::json!({"b": [1, 2.0, "é<"], "a": {"x": null, "y": false}}),
        );
        assert_eq!(
            render(
                "{{ d | tojson }}",
                minijinja::context! { d => data.clone() }
            ),
            r#"{"b": [1, 2.0, "é<"], "a": {"x": null, "y": false}}"#
        );
        assert_eq!(
            render(
                "{{ d | tojson(indent=2, sort_keys=true) }}",
                minijinja::context! { d => data }
            ),
            "{\n  \"a\": {\n    \"x\": null,\n    \"y\": false\n  },\n  \"b\": [\n    1,\n    2.0,\n    \"é<\"\n  ]\n}"
        );
    }

    #[test]
    fn floats_use_python_repr() {
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(3.0), "3.0");
    }

    #[test]
    fn strftime_now_can_be_pinned_and_rejects_bad_formats() {
        let ctx = minijinja::context! { __temper_now => "2024-07-26T10:00:00+00:00" };
        assert_eq!(
            render("{{ strftime_now('%d %b %Y') }}", ctx.clone()),
            "26 Jul 2024"
        );
        let env = crate::template::environment();
        assert!(env.render_str("{{ strftime_now('%Q') }}", ctx).is_err());
    }
}
