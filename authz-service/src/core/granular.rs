//! Granular SMART scopes (`patient/Observation.rs?category=...|laboratory`) evaluated against a
//! resource: a stored one (reads, updates, deletes by id) or a body being written.
//!
//! A filter is a list of `param=value` items, all of which must hold; a value may list
//! alternatives separated by `,`, any of which may match. Each parameter is evaluated from the
//! element paths of its R4 SearchParameter definition ([`crate::core::definitions`]), for the
//! parameter kinds SMART's examples use: token, reference, string and uri, with these
//! modifiers:
//!
//! | kind | without modifier | modifiers |
//! |---|---|---|
//! | token | `code`, `system\|code`, `\|code`, `system\|` on Coding, CodeableConcept, Identifier, ContactPoint and code/string/uri/boolean elements | `:not`, `:text` (starts-with on display and text), `:of-type` (Identifier) |
//! | reference | `Type/id`, `id` (when the parameter has one target type), an absolute URL | `:Type`, `:identifier` |
//! | string | starts-with, ignoring ASCII case | `:exact`, `:contains` |
//! | uri | equal | `:below` (prefix), `:above` |
//!
//! A filter using anything else (date, quantity or composite parameters, chains, `_filter`,
//! terminology modifiers such as `:in`, `:above` on tokens) cannot be evaluated here; it never
//! matches, and the refusal names the parameter. Evaluation is conservative: where FHIR
//! matching would also accept a spelling fhirguard does not (accent folding, for instance),
//! the resource does not match and the request is refused.

use serde_json::Value;

use crate::core::compartment::values_at;
use crate::core::definitions::{self, ParamKind};

/// Why a filter cannot be evaluated against resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unevaluable {
    #[error("the filter is not a valid query string")]
    Malformed,
    #[error("{param} is not a search parameter of {resource_type} that fhirguard evaluates")]
    Parameter {
        param: String,
        resource_type: String,
    },
    #[error("the :{modifier} modifier on {param} is not evaluated by fhirguard")]
    Modifier { param: String, modifier: String },
    #[error("the element {param} reads has a shape its definition does not allow")]
    Shape { param: String },
}

/// Whether any step of `keys` holds an array (on a path whose elements are all single-valued).
fn path_holds_an_array(value: &Value, keys: &[&str]) -> bool {
    match keys.split_first() {
        None => false,
        Some((k, rest)) => match value.get(*k) {
            Some(Value::Array(_)) => true,
            Some(v) => path_holds_an_array(v, rest),
            None => false,
        },
    }
}

/// Whether a value has the JSON shape of its FHIR type, as far as matching reads it.
fn shape_fits(v: &Value, value_type: &str) -> bool {
    let array_of_objects = |x: Option<&Value>| match x {
        None => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_object),
        Some(_) => false,
    };
    let string_member = |k: &str| v.get(k).is_none_or(Value::is_string);
    match value_type {
        "CodeableConcept" => {
            v.is_object() && array_of_objects(v.get("coding")) && string_member("text") && {
                v.get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .all(|c| {
                        c.get("system").is_none_or(Value::is_string)
                            && c.get("code").is_none_or(Value::is_string)
                    })
            }
        }
        "Coding" | "Identifier" | "ContactPoint" => {
            v.is_object()
                && ["system", "code", "value", "display"]
                    .iter()
                    .all(|k| string_member(k))
        }
        "Reference" => v.is_object() && string_member("reference"),
        "HumanName" | "Address" => v.is_object(),
        "boolean" => v.is_boolean(),
        _ => v.is_string(),
    }
}

/// Whether `resource` (of `resource_type`) matches every item of `filter`.
pub fn matches(resource: &Value, resource_type: &str, filter: &str) -> Result<bool, Unevaluable> {
    let items = crate::core::fhir::parse_query(filter).map_err(|_| Unevaluable::Malformed)?;
    if items.is_empty() {
        return Err(Unevaluable::Malformed);
    }
    let mut all = true;
    for (name, value) in &items {
        // Evaluate every item (even after a miss) so that an unevaluable one is always named.
        all &= item_matches(resource, resource_type, name, value)?;
    }
    Ok(all)
}

/// Checks that every parameter of `filter` is one fhirguard can evaluate on `resource_type`,
/// without a resource (for messages and config validation).
pub fn check(resource_type: &str, filter: &str) -> Result<(), Unevaluable> {
    let empty = serde_json::json!({ "resourceType": resource_type });
    matches(&empty, resource_type, filter).map(|_| ())
}

/// The top-level elements a filter's parameters read, as FHIR names them (`category`,
/// `medication` for `medicationCodeableConcept`), so that a patch can be kept away from them.
pub fn elements(resource_type: &str, filter: &str) -> Vec<&'static str> {
    let Ok(items) = crate::core::fhir::parse_query(filter) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, _) in items {
        let code = name.split(':').next().unwrap_or("");
        if let Some(sp) = definitions::search_param(resource_type, code) {
            for p in sp.paths {
                if !out.contains(&p.root) {
                    out.push(p.root);
                }
            }
        }
    }
    out
}

fn item_matches(resource: &Value, t: &str, name: &str, value: &str) -> Result<bool, Unevaluable> {
    let (code, modifier) = name
        .split_once(':')
        .map_or((name, None), |(c, m)| (c, Some(m)));
    let unevaluable = || Unevaluable::Parameter {
        param: code.to_string(),
        resource_type: t.to_string(),
    };
    if code.contains('.') || code.starts_with("_has") || code == "_filter" {
        return Err(unevaluable());
    }
    let sp = definitions::search_param(t, code).ok_or_else(unevaluable)?;
    if sp.paths.is_empty() {
        return Err(unevaluable());
    }
    let bad_modifier = |m: &str| Unevaluable::Modifier {
        param: code.to_string(),
        modifier: m.to_string(),
    };
    // The values at every path of the parameter, with the path's type filter. A value whose
    // shape disagrees with the definitions (an array on a single-valued element, a `coding`
    // that is not an array) is read differently by different servers: the filter cannot be
    // evaluated against it.
    let mut found: Vec<(&Value, &str, Option<&str>)> = Vec::new();
    for p in sp.paths {
        let mut vals = Vec::new();
        values_at(resource, p.keys, &mut vals);
        if !p.multi && path_holds_an_array(resource, p.keys) {
            return Err(Unevaluable::Shape {
                param: code.to_string(),
            });
        }
        for v in &vals {
            if !shape_fits(v, p.value_type) {
                return Err(Unevaluable::Shape {
                    param: code.to_string(),
                });
            }
        }
        found.extend(vals.into_iter().map(|v| (v, p.value_type, p.only_type)));
    }
    let alternatives: Vec<&str> = split_alternatives(value);
    match sp.kind {
        ParamKind::Token => {
            let negate = match modifier {
                None => false,
                // "No value matches" must be provable: a system on a primitive code, which
                // fhirguard cannot compare, makes it unevaluable rather than true.
                Some("not") => {
                    if alternatives.iter().any(|a| {
                        found
                            .iter()
                            .any(|(_, ty, _)| primitive_token(ty) && a.contains('|'))
                    }) {
                        return Err(bad_modifier("not"));
                    }
                    true
                }
                Some("text") => {
                    return Ok(alternatives
                        .iter()
                        .any(|a| found.iter().any(|(v, ty, _)| token_text(v, ty, a))));
                }
                Some("of-type") => {
                    return Ok(alternatives
                        .iter()
                        .any(|a| found.iter().any(|(v, ty, _)| identifier_of_type(v, ty, a))));
                }
                Some(m) => return Err(bad_modifier(m)),
            };
            let any = alternatives
                .iter()
                .any(|a| found.iter().any(|(v, ty, _)| token_matches(v, ty, a)));
            Ok(any != negate)
        }
        ParamKind::Reference => {
            let type_filter = match modifier {
                None => None,
                Some("identifier") => {
                    return Ok(alternatives.iter().any(|a| {
                        found.iter().any(|(v, _, _)| {
                            v.get("identifier")
                                .is_some_and(|i| token_matches(i, "Identifier", a))
                        })
                    }));
                }
                Some(m) if definitions::is_resource_type(m) => Some(m),
                Some(m) => return Err(bad_modifier(m)),
            };
            Ok(alternatives.iter().any(|a| {
                found
                    .iter()
                    .any(|(v, _, only)| reference_matches(v, a, type_filter.or(*only), sp.targets))
            }))
        }
        ParamKind::String => {
            let how = match modifier {
                None => StringMatch::StartsWith,
                Some("exact") => StringMatch::Exact,
                Some("contains") => StringMatch::Contains,
                Some(m) => return Err(bad_modifier(m)),
            };
            Ok(alternatives
                .iter()
                .any(|a| found.iter().any(|(v, _, _)| string_matches(v, a, how))))
        }
        ParamKind::Uri => {
            let how = match modifier {
                None => UriMatch::Equal,
                Some("below") => UriMatch::Below,
                Some("above") => UriMatch::Above,
                Some(m) => return Err(bad_modifier(m)),
            };
            Ok(alternatives.iter().any(|a| {
                found
                    .iter()
                    .any(|(v, _, _)| v.as_str().is_some_and(|u| uri_matches(u, a, how)))
            }))
        }
    }
}

/// Splits a search value at unescaped commas and removes FHIR's `\` escapes.
fn split_alternatives(value: &str) -> Vec<&str> {
    // Escaped separators (`\,`, `\|`, `\$`) cannot be told from their literal use here
    // without allocating; a value that contains an escape is taken as one alternative that
    // never matches an unescaped element, which only ever refuses.
    if value.contains('\\') {
        return vec![value];
    }
    value.split(',').collect()
}

fn primitive_token(value_type: &str) -> bool {
    matches!(
        value_type,
        "code" | "string" | "uri" | "id" | "canonical" | "boolean"
    )
}

/// `system|code`, `|code`, `system|`, or `code`.
fn split_token(t: &str) -> (Option<&str>, Option<&str>) {
    match t.split_once('|') {
        None => (None, Some(t)),
        Some((s, c)) => (Some(s), (!c.is_empty()).then_some(c)),
    }
}

fn coding_matches(system: Option<&str>, code: Option<&str>, want: &str) -> bool {
    let (ws, wc) = split_token(want);
    let system_ok = match ws {
        None => true,
        Some("") => system.is_none(),
        Some(s) => system == Some(s),
    };
    let code_ok = match wc {
        None => true,
        Some(c) => code == Some(c),
    };
    system_ok && code_ok && (wc.is_some() || ws.is_some_and(|s| !s.is_empty()))
}

fn token_matches(v: &Value, value_type: &str, want: &str) -> bool {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    match value_type {
        "Coding" => coding_matches(s("system"), s("code"), want),
        "CodeableConcept" => v.get("coding").and_then(Value::as_array).is_some_and(|cs| {
            cs.iter().any(|c| {
                coding_matches(
                    c.get("system").and_then(Value::as_str),
                    c.get("code").and_then(Value::as_str),
                    want,
                )
            })
        }),
        "Identifier" => coding_matches(s("system"), s("value"), want),
        "ContactPoint" => coding_matches(None, s("value"), want),
        // Primitive codes carry no system: only a bare code (or `|code`, which FHIR reads as
        // "no system") can be proven to match.
        "code" | "string" | "uri" | "id" | "canonical" => {
            let (ws, wc) = split_token(want);
            ws.is_none_or(str::is_empty) && wc.is_some() && v.as_str() == wc
        }
        "boolean" => {
            let (ws, wc) = split_token(want);
            ws.is_none() && v.as_bool().map(|b| b.to_string()).as_deref() == wc
        }
        _ => false,
    }
}

fn starts_with_ignore_case(hay: &str, needle: &str) -> bool {
    hay.len() >= needle.len()
        && hay.is_char_boundary(needle.len())
        && hay[..needle.len()].eq_ignore_ascii_case(needle)
}

fn token_text(v: &Value, value_type: &str, want: &str) -> bool {
    let texts: Vec<&str> = match value_type {
        "CodeableConcept" => {
            let mut t: Vec<&str> = v.get("text").and_then(Value::as_str).into_iter().collect();
            for c in v
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                t.extend(c.get("display").and_then(Value::as_str));
            }
            t
        }
        "Coding" => v
            .get("display")
            .and_then(Value::as_str)
            .into_iter()
            .collect(),
        "Identifier" => v
            .pointer("/type/text")
            .and_then(Value::as_str)
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    texts.iter().any(|t| starts_with_ignore_case(t, want))
}

/// `:of-type=system|code|value` on an Identifier.
fn identifier_of_type(v: &Value, value_type: &str, want: &str) -> bool {
    if value_type != "Identifier" {
        return false;
    }
    let mut parts = want.splitn(3, '|');
    let (Some(ts), Some(tc), Some(val)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    v.get("value").and_then(Value::as_str) == Some(val)
        && v.pointer("/type/coding")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("system").and_then(Value::as_str) == Some(ts)
                        && c.get("code").and_then(Value::as_str) == Some(tc)
                })
            })
}

fn reference_matches(v: &Value, want: &str, only_type: Option<&str>, targets: &[&str]) -> bool {
    let Some(r) = v.get("reference").and_then(Value::as_str) else {
        return false;
    };
    if only_type.is_some_and(|t| !r.starts_with(&format!("{t}/"))) {
        return false;
    }
    if want.contains('/') {
        return r == want;
    }
    // A bare id means Type/id only when the parameter can point to one type alone.
    let single = match targets {
        [t] => Some(*t),
        _ => None,
    };
    match only_type.or(single) {
        Some(t) => r == format!("{t}/{want}"),
        None => false,
    }
}

#[derive(Clone, Copy)]
enum StringMatch {
    StartsWith,
    Exact,
    Contains,
}

fn string_values(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        // HumanName and Address: the string parameters over them search their parts.
        Value::Object(o) => {
            let mut out = Vec::new();
            for (_, x) in o.iter() {
                match x {
                    Value::String(s) => out.push(s.as_str()),
                    Value::Array(a) => out.extend(a.iter().filter_map(Value::as_str)),
                    _ => {}
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

fn string_matches(v: &Value, want: &str, how: StringMatch) -> bool {
    string_values(v).into_iter().any(|s| match how {
        StringMatch::Exact => s == want,
        StringMatch::StartsWith => starts_with_ignore_case(s, want),
        StringMatch::Contains => s.to_ascii_lowercase().contains(&want.to_ascii_lowercase()),
    })
}

#[derive(Clone, Copy)]
enum UriMatch {
    Equal,
    Below,
    Above,
}

fn uri_matches(u: &str, want: &str, how: UriMatch) -> bool {
    match how {
        UriMatch::Equal => u == want,
        UriMatch::Below => u.starts_with(want),
        UriMatch::Above => want.starts_with(u),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

    fn obs() -> Value {
        json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": LAB, "code": "laboratory", "display": "Laboratory"}], "text": "Lab"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/d1"}],
            "identifier": [{"system": "urn:mrn", "value": "42", "type": {"coding": [{"system": "http://t", "code": "MR"}]}}]
        })
    }

    /// (filter, matches the Observation above?)
    #[rustfmt::skip]
    const CASES: &[(&str, bool)] = &[
        ("category=laboratory", true),
        ("category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", true),
        ("category=http://terminology.hl7.org/CodeSystem/observation-category|", true),
        ("category=http://other|laboratory", false),
        ("category=|laboratory", false),
        ("category=vital-signs", false),
        ("category=vital-signs,laboratory", true),
        ("category=laboratory&code=1234-5", true),
        ("category=laboratory&code=9999-9", false),
        ("category:not=vital-signs", true),
        ("category:not=laboratory", false),
        ("category:text=lab", true),
        ("category:text=vit", false),
        ("status=final", true),
        ("status=|final", true),
        ("status=http://hl7.org/fhir/observation-status|final", false),
        ("status=amended", false),
        ("subject=Patient/p1", true),
        ("subject=Patient/p2", false),
        ("subject=p1", false),
        ("patient=p1", true),
        ("subject:Patient=p1", true),
        ("subject:Group=p1", false),
        ("performer=Practitioner/d1", true),
        ("identifier=urn:mrn|42", true),
        ("identifier=42", true),
        ("identifier=urn:other|42", false),
        ("identifier:of-type=http://t|MR|42", true),
        ("identifier:of-type=http://t|XX|42", false),
        ("_id=o1", false),
    ];

    #[test]
    fn filters_against_a_resource() {
        let o = obs();
        for (filter, want) in CASES {
            assert_eq!(matches(&o, "Observation", filter), Ok(*want), "{filter}");
        }
    }

    #[test]
    fn strings_and_uris() {
        let p = json!({"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Ann"]}], "gender": "female"});
        for (filter, want) in [
            ("name=smi", true),
            ("name=ann", true),
            ("name:exact=Smith", true),
            ("name:exact=smith", false),
            ("name:contains=mit", true),
            ("family=jones", false),
            ("gender=female", true),
        ] {
            assert_eq!(matches(&p, "Patient", filter), Ok(want), "{filter}");
        }
        let q = json!({"resourceType": "Questionnaire", "url": "http://example.org/q/phq9"});
        for (filter, want) in [
            ("url=http://example.org/q/phq9", true),
            ("url=http://example.org/q", false),
            ("url:below=http://example.org/q", true),
            ("url:above=http://example.org/q/phq9/v2", true),
        ] {
            assert_eq!(matches(&q, "Questionnaire", filter), Ok(want), "{filter}");
        }
    }

    #[test]
    fn unevaluable_filters_name_the_parameter() {
        let o = obs();
        for (filter, param) in [
            ("date=ge2020", "date"),
            ("value-quantity=5", "value-quantity"),
            ("code-value-concept=x", "code-value-concept"),
            ("subject.name=x", "subject.name"),
            ("nonexistent=x", "nonexistent"),
            ("_filter=x", "_filter"),
        ] {
            match matches(&o, "Observation", filter) {
                Err(Unevaluable::Parameter { param: p, .. }) => assert_eq!(p, param, "{filter}"),
                other => panic!("{filter}: {other:?}"),
            }
        }
        for (filter, modifier) in [
            ("code:in=http://vs", "in"),
            ("code:below=x", "below"),
            ("subject:missing=true", "missing"),
        ] {
            match matches(&o, "Observation", filter) {
                Err(Unevaluable::Modifier { modifier: m, .. }) => {
                    assert_eq!(m, modifier, "{filter}")
                }
                other => panic!("{filter}: {other:?}"),
            }
        }
        assert!(check("Observation", "category=laboratory").is_ok());
        assert!(check("Observation", "date=2020").is_err());
        assert_eq!(
            elements("Observation", "category=x&code:not=y"),
            vec!["category", "code"]
        );
    }
}
