//! The shape check: a resource's `spec` against the CRD's own OpenAPI schema, before anything
//! is deserialised. serde stops at the first mismatch and names no path ("missing field
//! `htpasswdSecretRef`" for a spec whose only mistake is a misspelt key); this walks the whole
//! spec once and names every problem by its path, so `render`, the controller's `Accepted`
//! condition and the API server agree on what is wrong.
//!
//! It also produces a *cleaned* copy of the spec for the compile: unknown fields and nulls are
//! dropped (as the API server prunes them), and a part that cannot be used is replaced by a
//! placeholder or left out. That copy is only compiled for diagnostics (Secrets that do not
//! exist, bad htpasswd files, ...), so one run reports everything; an object with any shape
//! problem is never accepted.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde_json::{Map, Value};

use super::{FhirConnection, FhirSecurityPolicy};

/// One thing wrong with the spec's shape: the full field path (`spec.match.basePath`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeProblem {
    pub path: String,
    pub message: String,
}

/// What the shape check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Every problem, in the order of the spec (an unknown field comes right before the
    /// required field it probably misspells).
    pub problems: Vec<ShapeProblem>,
    /// The spec with unknown fields and nulls dropped and unusable parts replaced or removed;
    /// `None` when nothing usable is left. Equal to the input (minus nulls) when there are no
    /// problems.
    pub cleaned: Option<Value>,
}

fn spec_schema<K: CustomResourceExt>() -> Value {
    serde_json::to_value(K::crd())
        .ok()
        .and_then(|crd| {
            crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
                .cloned()
        })
        .unwrap_or(Value::Null)
}

fn policy_schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(spec_schema::<FhirSecurityPolicy>)
}

fn connection_schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(spec_schema::<FhirConnection>)
}

/// Checks a FhirSecurityPolicy's `spec` (`None` when the document has none).
pub fn check_policy(spec: Option<&Value>) -> Checked {
    check(policy_schema(), spec)
}

/// Checks a FhirConnection's `spec`.
pub fn check_connection(spec: Option<&Value>) -> Checked {
    check(connection_schema(), spec)
}

fn check(schema: &Value, spec: Option<&Value>) -> Checked {
    let mut w = Walker::default();
    let cleaned = match spec {
        None | Some(Value::Null) => {
            w.push("spec", "required field missing".to_string());
            None
        }
        Some(v) => w.walk(v, schema, "spec").ok(),
    };
    Checked {
        problems: w.problems,
        cleaned,
    }
}

#[derive(Default)]
struct Walker {
    problems: Vec<ShapeProblem>,
}

/// A node that cannot be used; the problem is already recorded.
struct Unusable;

impl Walker {
    fn push(&mut self, path: &str, message: String) {
        self.problems.push(ShapeProblem {
            path: path.to_string(),
            message,
        });
    }

    fn walk(&mut self, v: &Value, s: &Value, path: &str) -> Result<Value, Unusable> {
        match s.get("type").and_then(Value::as_str) {
            Some("object") => self.object(v, s, path),
            Some("array") => self.array(v, s, path),
            Some("string") => self.string(v, s, path),
            Some("integer") => self.scalar(v, path, "an integer", |v| v.is_i64() || v.is_u64()),
            Some("number") => self.scalar(v, path, "a number", Value::is_number),
            Some("boolean") => self.scalar(v, path, "true or false", Value::is_boolean),
            // No type: anything goes (nothing in these CRDs today).
            _ => Ok(v.clone()),
        }
    }

    fn scalar(
        &mut self,
        v: &Value,
        path: &str,
        expected: &str,
        ok: fn(&Value) -> bool,
    ) -> Result<Value, Unusable> {
        if ok(v) {
            Ok(v.clone())
        } else {
            self.push(path, format!("expected {expected}, found {}", describe(v)));
            Err(Unusable)
        }
    }

    fn string(&mut self, v: &Value, s: &Value, path: &str) -> Result<Value, Unusable> {
        let Some(text) = v.as_str() else {
            self.push(path, format!("expected a string, found {}", describe(v)));
            return Err(Unusable);
        };
        if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
            let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
            if !names.contains(&text) {
                self.push(
                    path,
                    format!(
                        "must be one of {} (found {})",
                        names.join(", "),
                        describe(v)
                    ),
                );
                return Err(Unusable);
            }
        }
        let chars = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            let message = if min == 1 {
                "must not be empty".to_string()
            } else {
                format!("must be at least {min} characters (found {chars})")
            };
            self.push(path, message);
            return Err(Unusable);
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            self.push(
                path,
                format!("must be at most {max} characters (found {chars})"),
            );
            return Err(Unusable);
        }
        if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
            && !matches_pattern(pattern, text)
        {
            self.push(
                path,
                format!("{} (found {})", pattern_rule(pattern), describe(v)),
            );
            return Err(Unusable);
        }
        Ok(v.clone())
    }

    fn array(&mut self, v: &Value, s: &Value, path: &str) -> Result<Value, Unusable> {
        let Some(items) = v.as_array() else {
            self.push(path, format!("expected a list, found {}", describe(v)));
            return Err(Unusable);
        };
        if let Some(min) = s.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            let message = if min == 1 {
                "must list at least one item".to_string()
            } else {
                format!("must list at least {min} items (found {})", items.len())
            };
            self.push(path, message);
            return Err(Unusable);
        }
        let item_schema = s.get("items").unwrap_or(&Value::Null);
        let mut out = Vec::with_capacity(items.len());
        let mut usable = true;
        for (i, item) in items.iter().enumerate() {
            // Every item is checked even after a broken one, so all problems show at once.
            match self.walk(item, item_schema, &format!("{path}[{i}]")) {
                Ok(c) => out.push(c),
                Err(Unusable) => usable = false,
            }
        }
        if usable {
            Ok(Value::Array(out))
        } else {
            Err(Unusable)
        }
    }

    fn object(&mut self, v: &Value, s: &Value, path: &str) -> Result<Value, Unusable> {
        let Some(map) = v.as_object() else {
            self.push(path, format!("expected an object, found {}", describe(v)));
            return Err(Unusable);
        };
        let empty = Map::new();
        let props = s
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let additional = s.get("additionalProperties").filter(|a| a.is_object());
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // Nulls count as absent, as the API server prunes them.
        let present = |k: &str| map.get(k).is_some_and(|v| !v.is_null());
        let missing: Vec<&str> = required.iter().copied().filter(|r| !present(r)).collect();
        let absent_known: Vec<&str> = props
            .keys()
            .map(String::as_str)
            .filter(|k| !present(k))
            .collect();

        let mut out = Map::new();
        let mut usable = true;
        let mut explained: Vec<&str> = Vec::new();
        for (k, val) in map {
            if val.is_null() {
                continue;
            }
            let sub = format!("{path}.{k}");
            let child_schema = props.get(k).or(additional);
            match child_schema {
                Some(cs) => match self.walk(val, cs, &sub) {
                    Ok(c) => {
                        out.insert(k.clone(), c);
                    }
                    Err(Unusable) => {
                        if required.contains(&k.as_str()) {
                            match placeholder(cs) {
                                Some(p) => {
                                    out.insert(k.clone(), p);
                                }
                                None => usable = false,
                            }
                        }
                    }
                },
                None => {
                    let guess = closest(k, &absent_known);
                    let message = match guess {
                        Some(g) if missing.contains(&g) => {
                            format!(
                                "unknown field; did you mean {g}? ({g} is required and missing)"
                            )
                        }
                        Some(g) => format!("unknown field; did you mean {g}?"),
                        None if props.is_empty() => "unknown field".to_string(),
                        None => {
                            let names: Vec<&str> = props.keys().map(String::as_str).collect();
                            format!("unknown field (expected one of: {})", names.join(", "))
                        }
                    };
                    self.push(&sub, message);
                    // The missing field it misspells is reported right next to it.
                    if let Some(g) = guess.filter(|g| missing.contains(g) && !explained.contains(g))
                    {
                        explained.push(g);
                        self.push(
                            &format!("{path}.{g}"),
                            format!(
                                "required field missing; the unknown field {k} looks like a misspelling of it"
                            ),
                        );
                    }
                }
            }
        }
        for m in &missing {
            if !explained.contains(m) {
                self.push(&format!("{path}.{m}"), "required field missing".to_string());
            }
            match props.get(*m).and_then(placeholder) {
                Some(p) => {
                    out.insert((*m).to_string(), p);
                }
                None => usable = false,
            }
        }
        if usable {
            Ok(Value::Object(out))
        } else {
            Err(Unusable)
        }
    }
}

/// A stand-in for a required value that is missing or unusable, so that the rest of the spec
/// can still be compiled for diagnostics. Only strings (and lists of strings) get one; for
/// anything else the enclosing optional part is left out instead.
fn placeholder(s: &Value) -> Option<Value> {
    match s.get("type").and_then(Value::as_str) {
        Some("string") if s.get("enum").is_none() => {
            let pattern = s.get("pattern").and_then(Value::as_str);
            ["/", "https://placeholder.invalid/", "60s", "placeholder"]
                .into_iter()
                .find(|c| pattern.is_none_or(|p| matches_pattern(p, c)))
                .map(|c| Value::String(c.to_string()))
        }
        Some("array") => {
            let item = placeholder(s.get("items")?)?;
            Some(Value::Array(vec![item]))
        }
        _ => None,
    }
}

fn matches_pattern(pattern: &str, text: &str) -> bool {
    static CACHE: OnceLock<std::sync::Mutex<BTreeMap<String, Option<regex::Regex>>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let Ok(mut cache) = cache.lock() else {
        return false;
    };
    let re = cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).ok());
    // A pattern that does not compile cannot be satisfied; the API server would refuse the CRD.
    re.as_ref().is_some_and(|re| re.is_match(text))
}

/// The patterns these CRDs use, said in words.
fn pattern_rule(pattern: &str) -> String {
    match pattern {
        "^/" => "must start with /".to_string(),
        "^https?://" => "must be an http:// or https:// URL".to_string(),
        "^https://" => "must be an https:// URL".to_string(),
        "^([0-9]+(s|m|h))+$" => "must be a duration such as 30s, 10m or 1h".to_string(),
        p => format!("must match the pattern {p}"),
    }
}

/// A value as it appears in a message: its kind, and short scalars themselves.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => {
            let shown: String = s.chars().take(40).collect();
            let ellipsis = if s.chars().count() > 40 { "..." } else { "" };
            format!("a string ({:?})", format!("{shown}{ellipsis}"))
        }
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// The known field an unknown one most likely misspells: equal ignoring case, or within two
/// edits (a transposition counts as one) and less than half its length.
fn closest<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let u = unknown.to_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&u, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= 2 && *d * 2 < c.chars().count())
        .min()
        .map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("basci", "basic"), 1);
        assert_eq!(edit_distance("htpaswdsecretref", "htpasswdsecretref"), 1);
        assert_eq!(
            closest("basepath", &["basePath", "hosts"]),
            Some("basePath")
        );
        assert_eq!(closest("jwk", &["jwt", "basic"]), Some("jwt"));
        assert_eq!(
            closest("tls", &["url"]),
            None,
            "three edits is a different word"
        );
        assert_eq!(closest("zzz", &["basic"]), None);
    }

    #[test]
    fn placeholders_satisfy_the_patterns() {
        let s = |p: &str| serde_json::json!({"type": "string", "pattern": p});
        assert_eq!(placeholder(&s("^/")), Some(Value::from("/")));
        assert_eq!(
            placeholder(&s("^https://")),
            Some(Value::from("https://placeholder.invalid/"))
        );
        assert_eq!(
            placeholder(&s("^([0-9]+(s|m|h))+$")),
            Some(Value::from("60s"))
        );
        assert_eq!(
            placeholder(&serde_json::json!({"type": "string", "enum": ["A"]})),
            None
        );
    }
}
