//! A JS argument as JSON, as `JSON.stringify` would see it (`undefined` properties are left out),
//! but refusing what JSON cannot say: `NaN`/`Infinity`, cycles, functions, symbols, BigInts, and
//! nesting deeper than [`MAX_DEPTH`]. Errors carry the caller's `code` and start with the JSON
//! path from the argument's name (`telemetry.intervalMs: expected a finite number, got NaN`), so
//! a wrong argument never surfaces as napi's own `StringExpected` or "Failed to convert js number
//! to serde_json::Number". The walk, its checks and its messages are here; the binding reads each
//! value through Node-API ([`JsValues`]).

use serde_json::{Map, Number, Value};

use crate::error::{ErrorCode, SidecarError};

/// Deeper than any config or options object gpu-sidecar reads.
pub const MAX_DEPTH: usize = 64;

/// One JS value as the walk sees it, a primitive's value read.
#[derive(Debug, Clone, PartialEq)]
pub enum JsKind {
    Undefined,
    Null,
    Boolean(bool),
    Number(f64),
    String(String),
    /// An array of this length.
    Array(u32),
    /// Any other object.
    Object,
    Function,
    Symbol,
    BigInt,
    Other,
}

impl JsKind {
    /// What the value is, for error messages: `undefined`, `the number NaN`, `an object`...
    pub fn describe(&self) -> String {
        match self {
            JsKind::Undefined => "undefined".into(),
            JsKind::Null => "null".into(),
            JsKind::Boolean(_) => "a boolean".into(),
            JsKind::Number(n) => format!("the number {}", js_number(*n)),
            JsKind::String(_) => "a string".into(),
            JsKind::Array(_) => "an array".into(),
            JsKind::Object => "an object".into(),
            JsKind::Function => "a function".into(),
            JsKind::Symbol => "a symbol".into(),
            JsKind::BigInt => "a BigInt".into(),
            JsKind::Other => "an unknown value".into(),
        }
    }
}

/// Reads JS values for the walk. An `Err` is why a value could not be read (a getter or Proxy
/// trap that threw), reported at the path where it happened.
pub trait JsValues {
    type Value: Copy;
    fn kind(&self, value: Self::Value) -> Result<JsKind, String>;
    fn element(&self, array: Self::Value, index: u32) -> Result<Self::Value, String>;
    /// The own enumerable string keys, as text and as the key values [`JsValues::property`] takes.
    fn keys(&self, object: Self::Value) -> Result<Vec<(String, Self::Value)>, String>;
    fn property(&self, object: Self::Value, key: Self::Value) -> Result<Self::Value, String>;
    /// `a === b`.
    fn same(&self, a: Self::Value, b: Self::Value) -> Result<bool, String>;
}

/// `value` as JSON; errors carry `code` and the JSON path from `root`.
pub fn to_json<J: JsValues>(js: &J, value: J::Value, root: &str, code: ErrorCode) -> Result<Value, SidecarError> {
    Walk { js, code, stack: Vec::new() }.convert(value, root)
}

/// How JS prints a number: `NaN`, `Infinity`, `-Infinity`, `10`, `0.5`.
pub fn js_number(n: f64) -> String {
    if n.is_nan() {
        "NaN".into()
    } else if n.is_infinite() {
        if n > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        n.to_string()
    }
}

/// A JSON number: integers stay integers (so messages say `10`, not `10.0`); `None` for NaN and
/// the infinities.
fn number(n: f64) -> Option<Value> {
    if !n.is_finite() {
        return None;
    }
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        return Some(Value::Number(Number::from(n as i64)));
    }
    Number::from_f64(n).map(Value::Number)
}

struct Walk<'a, J: JsValues> {
    js: &'a J,
    code: ErrorCode,
    /// The objects being converted, outermost first, to find cycles.
    stack: Vec<J::Value>,
}

impl<J: JsValues> Walk<'_, J> {
    fn error(&self, path: &str, what: impl std::fmt::Display) -> SidecarError {
        SidecarError::new(self.code, format!("{path}: {what}"))
    }

    fn convert(&mut self, value: J::Value, path: &str) -> Result<Value, SidecarError> {
        let kind = self.js.kind(value).map_err(|e| self.error(path, e))?;
        self.convert_kind(kind, value, path)
    }

    fn convert_kind(&mut self, kind: JsKind, value: J::Value, path: &str) -> Result<Value, SidecarError> {
        match kind {
            JsKind::Undefined | JsKind::Null => Ok(Value::Null),
            JsKind::Boolean(b) => Ok(Value::Bool(b)),
            JsKind::Number(n) => {
                number(n).ok_or_else(|| self.error(path, format!("expected a finite number, got {}", js_number(n))))
            }
            JsKind::String(s) => Ok(Value::String(s)),
            JsKind::Array(length) => self.nested(value, path, |walk| walk.array(value, length, path)),
            JsKind::Object => self.nested(value, path, |walk| walk.map(value, path)),
            JsKind::Function => Err(self.error(path, "expected a JSON value, got a function")),
            JsKind::Symbol => Err(self.error(path, "expected a JSON value, got a symbol")),
            JsKind::BigInt => Err(self.error(path, "expected a JSON value, got a BigInt (use a number)")),
            JsKind::Other => Err(self.error(path, "expected a JSON value")),
        }
    }

    /// Converts an object or array with `convert`, unless it contains itself or is too deep.
    fn nested(
        &mut self,
        value: J::Value,
        path: &str,
        convert: impl FnOnce(&mut Self) -> Result<Value, SidecarError>,
    ) -> Result<Value, SidecarError> {
        for seen in &self.stack {
            if self.js.same(*seen, value).map_err(|e| self.error(path, e))? {
                return Err(self.error(path, "a cyclic reference (the object contains itself)"));
            }
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(path, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.stack.push(value);
        let result = convert(self);
        self.stack.pop();
        result
    }

    fn array(&mut self, value: J::Value, length: u32, path: &str) -> Result<Value, SidecarError> {
        let mut items = Vec::with_capacity(length.min(1024) as usize);
        for i in 0..length {
            let item_path = format!("{path}[{i}]");
            let item = self.js.element(value, i).map_err(|e| self.error(&item_path, e))?;
            items.push(self.convert(item, &item_path)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, value: J::Value, path: &str) -> Result<Value, SidecarError> {
        let mut map = Map::new();
        for (name, key) in self.js.keys(value).map_err(|e| self.error(path, e))? {
            let field_path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            let field = self.js.property(value, key).map_err(|e| self.error(&field_path, e))?;
            let kind = self.js.kind(field).map_err(|e| self.error(&field_path, e))?;
            if kind == JsKind::Undefined {
                continue; // as JSON.stringify does
            }
            let converted = self.convert_kind(kind, field, &field_path)?;
            map.insert(name, converted);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JS heap in miniature: values are indices, so objects can contain themselves.
    enum Fake {
        Kind(JsKind),
        Array(Vec<usize>),
        Object(Vec<(&'static str, usize)>),
        /// A getter that throws when read.
        Throws(&'static str),
    }

    struct Heap(Vec<Fake>);

    impl JsValues for Heap {
        type Value = usize;
        fn kind(&self, value: usize) -> Result<JsKind, String> {
            Ok(match &self.0[value] {
                Fake::Kind(kind) => kind.clone(),
                Fake::Array(items) => JsKind::Array(items.len() as u32),
                Fake::Object(_) => JsKind::Object,
                Fake::Throws(why) => return Err(format!("cannot be read: {why}")),
            })
        }
        fn element(&self, array: usize, index: u32) -> Result<usize, String> {
            let Fake::Array(items) = &self.0[array] else { unreachable!() };
            Ok(items[index as usize])
        }
        fn keys(&self, object: usize) -> Result<Vec<(String, usize)>, String> {
            let Fake::Object(fields) = &self.0[object] else { unreachable!() };
            Ok(fields.iter().enumerate().map(|(i, (name, _))| (name.to_string(), i)).collect())
        }
        fn property(&self, object: usize, key: usize) -> Result<usize, String> {
            let Fake::Object(fields) = &self.0[object] else { unreachable!() };
            Ok(fields[key].1)
        }
        fn same(&self, a: usize, b: usize) -> Result<bool, String> {
            Ok(a == b)
        }
    }

    fn convert(heap: Vec<Fake>) -> Result<Value, String> {
        to_json(&Heap(heap), 0, "options", ErrorCode::InvalidConfig).map_err(|e| {
            assert_eq!(e.code, ErrorCode::InvalidConfig);
            e.message
        })
    }

    fn number(n: f64) -> Fake {
        Fake::Kind(JsKind::Number(n))
    }

    #[test]
    fn values_convert_as_json_stringify_sees_them_leaving_undefined_fields_out() {
        let heap = vec![
            Fake::Object(vec![("a", 1), ("gone", 2), ("list", 3), ("half", 5), ("big", 6), ("name", 7)]),
            number(10.0),
            Fake::Kind(JsKind::Undefined),
            Fake::Array(vec![4, 2]),
            Fake::Kind(JsKind::Boolean(true)),
            number(0.5),
            number(1e20),
            Fake::Kind(JsKind::String("asr".into())),
        ];
        let value = convert(heap).unwrap();
        assert_eq!(
            value,
            serde_json::json!({ "a": 10, "list": [true, null], "half": 0.5, "big": 1e20, "name": "asr" })
        );
        // An integer stays one (messages say `10`, not `10.0`); one past 2^53 is a float.
        assert!(value["a"].is_i64() && value["big"].is_f64());
    }

    #[test]
    fn what_json_cannot_say_is_refused_at_its_json_path() {
        let with = |field: Fake| convert(vec![Fake::Object(vec![("x", 1)]), Fake::Array(vec![2]), field]);
        for (field, message) in [
            (number(f64::NAN), "options.x[0]: expected a finite number, got NaN"),
            (number(f64::NEG_INFINITY), "options.x[0]: expected a finite number, got -Infinity"),
            (Fake::Kind(JsKind::Function), "options.x[0]: expected a JSON value, got a function"),
            (Fake::Kind(JsKind::Symbol), "options.x[0]: expected a JSON value, got a symbol"),
            (Fake::Kind(JsKind::BigInt), "options.x[0]: expected a JSON value, got a BigInt (use a number)"),
            (Fake::Throws("Error: boom"), "options.x[0]: cannot be read: Error: boom"),
        ] {
            assert_eq!(with(field).unwrap_err(), message);
        }
    }

    #[test]
    fn a_cycle_and_nesting_past_the_limit_are_refused() {
        let cyclic = vec![Fake::Object(vec![("policies", 1)]), Fake::Object(vec![("ASR", 0)])];
        assert_eq!(
            convert(cyclic).unwrap_err(),
            "options.policies.ASR: a cyclic reference (the object contains itself)"
        );
        // The same object twice side by side is no cycle.
        let shared = vec![Fake::Array(vec![1, 1]), Fake::Object(vec![])];
        assert_eq!(convert(shared).unwrap(), serde_json::json!([{}, {}]));
        let deep: Vec<Fake> =
            (0..=MAX_DEPTH).map(|i| Fake::Array(if i < MAX_DEPTH { vec![i + 1] } else { vec![] })).collect();
        let message = convert(deep).unwrap_err();
        assert!(message.ends_with("[0]: nested deeper than 64 levels"), "{message}");
    }

    #[test]
    fn a_root_without_a_name_gives_bare_field_paths() {
        let heap = Heap(vec![Fake::Object(vec![("at", 1)]), number(f64::NAN)]);
        let error = to_json(&heap, 0, "", ErrorCode::InvalidArgument).unwrap_err();
        assert_eq!(
            (error.code, error.message.as_str()),
            (ErrorCode::InvalidArgument, "at: expected a finite number, got NaN")
        );
    }

    #[test]
    fn values_are_described_as_js_would_name_them() {
        assert_eq!(JsKind::Number(f64::INFINITY).describe(), "the number Infinity");
        assert_eq!(JsKind::Number(3.0).describe(), "the number 3");
        assert_eq!(JsKind::Array(0).describe(), "an array");
        assert_eq!(JsKind::String("x".into()).describe(), "a string");
    }
}
