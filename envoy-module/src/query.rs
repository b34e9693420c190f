//! The query rewrite of an allow (`set_query`, `remove_query`), applied to `:path` the way
//! Envoy's ext_authz filter applies `query_parameters_to_set`/`_to_remove`, so both hosts send
//! the upstream the same path: the query is split into raw (still encoded) `key=value` pairs,
//! grouped by key in key order, a set replaces every value of its key, a remove drops the key,
//! and the pairs are written back in that order (`key=` for a key without value).

use std::collections::BTreeMap;

pub fn rewrite(path: &str, set: &[(String, String)], remove: &[String]) -> String {
    let cut = path.find(['?', '#']).unwrap_or(path.len());
    let (base, rest) = path.split_at(cut);
    let query = rest
        .strip_prefix('?')
        .map(|q| q.split('#').next().unwrap_or(""))
        .unwrap_or("");
    let mut params: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.entry(k).or_default().push(v);
    }
    for (k, v) in set {
        params.insert(k.as_str(), vec![v.as_str()]);
    }
    for k in remove {
        params.remove(k.as_str());
    }
    let mut out = base.to_string();
    let mut delim = '?';
    for (k, values) in &params {
        for v in values {
            out.push(delim);
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            delim = '&';
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    fn s(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    type Case = (
        &'static str,
        Vec<(String, String)>,
        Vec<String>,
        &'static str,
    );

    #[test]
    fn sets_replace_removes_drop_and_keys_come_out_in_order() {
        let cases: &[Case] = &[
            (
                "/fhir/Observation",
                vec![s("patient", "123")],
                vec![],
                "/fhir/Observation?patient=123",
            ),
            (
                "/fhir/Observation?code=x&patient=9&patient=8",
                vec![s("patient", "123")],
                vec![],
                "/fhir/Observation?code=x&patient=123",
            ),
            ("/p?b=2&a=1&a=0", vec![], vec![], "/p?a=1&a=0&b=2"),
            (
                "/p?subject=Patient%2F1&x",
                vec![],
                vec!["subject".into()],
                "/p?x=",
            ),
            ("/p?only=1", vec![], vec!["only".into()], "/p"),
        ];
        for (path, set, remove, want) in cases {
            assert_eq!(rewrite(path, set, remove), *want, "{path}");
        }
    }
}
