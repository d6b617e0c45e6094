//! Just enough JSON writing for status files and reports (the agent has no serde).

/// Quote and escape a string as a JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Builds one JSON object, field by field, in insertion order.
#[derive(Default)]
pub struct Object {
    body: String,
}

impl Object {
    pub fn new() -> Object {
        Object::default()
    }

    fn key(&mut self, k: &str) {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        self.body.push_str(&string(k));
        self.body.push(':');
    }

    pub fn str(mut self, k: &str, v: &str) -> Object {
        self.key(k);
        self.body.push_str(&string(v));
        self
    }

    pub fn opt_str(self, k: &str, v: Option<&str>) -> Object {
        match v {
            Some(v) => self.str(k, v),
            None => self.raw(k, "null"),
        }
    }

    pub fn num(mut self, k: &str, v: impl Into<i128>) -> Object {
        self.key(k);
        self.body.push_str(&v.into().to_string());
        self
    }

    pub fn opt_num(self, k: &str, v: Option<u64>) -> Object {
        match v {
            Some(v) => self.num(k, v),
            None => self.raw(k, "null"),
        }
    }

    pub fn bool(self, k: &str, v: bool) -> Object {
        self.raw(k, if v { "true" } else { "false" })
    }

    /// Insert already-serialised JSON (an array or nested object).
    pub fn raw(mut self, k: &str, json: &str) -> Object {
        self.key(k);
        self.body.push_str(json);
        self
    }

    pub fn finish(self) -> String {
        format!("{{{}}}", self.body)
    }
}

/// A JSON array from already-serialised items.
pub fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_orders() {
        let o = Object::new()
            .str("a", "x\"y\n\u{1}")
            .num("n", 5u64)
            .opt_str("none", None)
            .bool("b", true)
            .raw("l", &array([string("p"), string("q")]))
            .finish();
        assert_eq!(
            o,
            r#"{"a":"x\"y\n\u0001","n":5,"none":null,"b":true,"l":["p","q"]}"#
        );
    }
}
