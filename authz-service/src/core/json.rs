//! JSON as fhirguard reads attacker-supplied documents: one meaning or none.
//!
//! `serde_json` keeps the *last* of two members with the same name, while other parsers keep
//! the first (or merge, or fail). A body with two `subject` members, or a token with two
//! `patient` claims, would then be judged on one value and executed on the other. Every
//! document a decision rests on (request bodies, token headers and payloads) is parsed here,
//! and a repeated member name anywhere in it is refused.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The member name, and where it is (`entry[2].request`).
    #[error("the member {name:?} appears twice in {at}")]
    DuplicateKey { name: String, at: String },
    #[error("{0}")]
    Syntax(String),
}

/// Parses `bytes` as one JSON document, refusing repeated member names at any depth.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut dup: Option<(String, String)> = None;
    let v = StrictValue {
        path: Vec::new(),
        dup: &mut dup,
    }
    .deserialize(&mut de);
    if let Some((name, at)) = dup {
        return Err(JsonError::DuplicateKey { name, at });
    }
    let v = v.map_err(|e| JsonError::Syntax(without_position_text(&e)))?;
    de.end()
        .map_err(|e| JsonError::Syntax(without_position_text(&e)))?;
    Ok(v)
}

/// serde_json's messages name a category and a line/column, never document content.
fn without_position_text(e: &serde_json::Error) -> String {
    e.to_string()
}

/// A path segment for the duplicate report: member names only where they are plain
/// identifiers (FHIR element names), so that a report never repeats a value.
#[derive(Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render(path: &[Seg]) -> String {
    if path.is_empty() {
        return "the document".into();
    }
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn safe_name(k: &str) -> String {
    if k.len() <= 64
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        "<member>".into()
    }
}

struct StrictValue<'p> {
    path: Vec<Seg>,
    dup: &'p mut Option<(String, String)>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let StrictValue { path, dup } = self;
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let mut p = path.clone();
            p.push(Seg::Index(i));
            match seq.next_element_seed(StrictValue {
                path: p,
                dup: &mut *dup,
            })? {
                Some(v) => out.push(v),
                None => break,
            }
            i += 1;
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let StrictValue { path, dup } = self;
        let mut out = Map::new();
        // Case-insensitive binders (.NET's, some Java ones) treat `Reference` and `reference`
        // as one member: two names that differ only in case are a duplicate too.
        let mut folded = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !folded.insert(key.to_lowercase()) {
                let at = render(&path);
                *dup = Some((safe_name(&key), at));
                return Err(de::Error::custom("duplicate member"));
            }
            let mut p = path.clone();
            p.push(Seg::Key(safe_name(&key)));
            let v = map.next_value_seed(StrictValue {
                path: p,
                dup: &mut *dup,
            })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_members_are_refused_at_any_depth() {
        let cases: &[(&str, &str, &str)] = &[
            (r#"{"a":1,"a":2}"#, "a", "the document"),
            (
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/1"},"subject":{"reference":"Patient/2"}}"#,
                "subject",
                "the document",
            ),
            (
                r#"{"entry":[{"request":{"method":"GET","method":"DELETE","url":"Patient/1"}}]}"#,
                "method",
                "entry[0].request",
            ),
            (r#"{"entry":[],"entry":[{}]}"#, "entry", "the document"),
            // The same name after escape decoding is the same member.
            (
                r#"{"patient":"1","pati\u0065nt":"2"}"#,
                "patient",
                "the document",
            ),
            (r#"[{"x":{"y":1,"y":1}}]"#, "y", "[0].x"),
            // Names that differ only in case are one member to case-insensitive binders.
            (
                r#"{"subject":{"reference":"Patient/1","Reference":"Patient/2"}}"#,
                "Reference",
                "subject",
            ),
            (
                r#"{"resourceType":"Observation","ResourceType":"Patient"}"#,
                "ResourceType",
                "the document",
            ),
        ];
        for (doc, name, at) in cases {
            assert_eq!(
                parse_strict(doc.as_bytes()),
                Err(JsonError::DuplicateKey {
                    name: name.to_string(),
                    at: at.to_string()
                }),
                "{doc}"
            );
        }
    }

    #[test]
    fn ordinary_documents_parse_as_serde_json_does() {
        for doc in [
            r#"{"a":1,"b":[1,2,{"c":null}],"d":"x","e":1.5,"f":-3,"g":true}"#,
            "[]",
            "\"s\"",
            r#"{"a":{"a":{"a":1}}}"#,
        ] {
            let want: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(parse_strict(doc.as_bytes()).unwrap(), want, "{doc}");
        }
    }

    #[test]
    fn malformed_documents_are_errors_without_content() {
        for doc in [
            "",
            "{",
            r#"{"a":1} x"#,
            "{'a':1}",
            r#"{"a":1,}"#,
            "\u{feff}{}",
        ] {
            match parse_strict(doc.as_bytes()) {
                Err(JsonError::Syntax(m)) => assert!(!m.contains("a\":1"), "{m}"),
                other => panic!("{doc:?}: {other:?}"),
            }
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_strict(deep.as_bytes()).is_err(), "depth is bounded");
    }

    #[test]
    fn a_report_never_repeats_odd_member_names() {
        let e = parse_strict(br#"{"Patient/456 x":1,"Patient/456 x":2}"#).unwrap_err();
        assert!(!e.to_string().contains("456"), "{e}");
    }
}
