//! The SMART discovery document (`[base]/.well-known/smart-configuration`, SMART App Launch
//! 2.2 "Conformance") that fhirguard answers for a policy that configures one. Pure: the
//! configured values, the issuer's OpenID metadata as the host last fetched it, and what the
//! policy enforces in; a JSON document out.

use serde_json::{Map, Value, json};

use crate::config::{PolicyConfig, SmartConfigurationConfig};
use crate::core::fhir;
use crate::core::policy::{AllowReason, Decision, Request, Respond, select_policy};

/// Relative to the policy's basePath.
pub const SMART_CONFIGURATION_PATH: &str = "/.well-known/smart-configuration";

/// The policy whose discovery document this request asks for, if any. Cheap for every other
/// request: only a path ending in the well-known name is looked at more closely. (Another
/// spelling of the path is no discovery request; it stays a public path passed upstream.)
pub fn discovery_request(policies: &[PolicyConfig], req: &Request<'_>) -> Option<usize> {
    if !matches!(req.method, "GET" | "HEAD") {
        return None;
    }
    let (raw_path, _) = fhir::split_path(req.path);
    if !raw_path.ends_with(SMART_CONFIGURATION_PATH) {
        return None;
    }
    let segments = fhir::normalize_path(raw_path).ok()?;
    let index = select_policy(policies, req.policy_ref, req.host, &segments)?;
    let p = &policies[index];
    p.smart_configuration.as_ref()?;
    let base: Vec<&str> = p.base_path.split('/').filter(|s| !s.is_empty()).collect();
    let rel = segments.get(base.len()..)?;
    let matches_base = segments.iter().zip(&base).all(|(a, b)| a == b);
    (matches_base && format!("/{}", rel.join("/")) == SMART_CONFIGURATION_PATH).then_some(index)
}

/// What the policy enforces, as SMART capabilities: fhirguard reads v1 and v2 scopes, patient
/// context, `user/` and `system/` scopes.
pub fn derived_capabilities() -> [&'static str; 4] {
    [
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
    ]
}

/// The resource scopes the policy can enforce, in their widest v2 forms.
pub fn derived_scopes() -> [&'static str; 6] {
    [
        "patient/*.cruds",
        "patient/*.rs",
        "user/*.cruds",
        "user/*.rs",
        "system/*.cruds",
        "system/*.rs",
    ]
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|i| i == item) {
        list.push(item.to_string());
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn is_resource_scope(s: &str) -> bool {
    ["patient/", "user/", "system/"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// Builds the document. `openid` is the issuer's OpenID Provider Metadata (the last good
/// fetch), when the policy asks for OpenID discovery and one succeeded. Fails when a field
/// SMART requires (`token_endpoint`) is known from neither source.
pub fn document(sc: &SmartConfigurationConfig, openid: Option<&Value>) -> Result<Value, String> {
    let from_idp = |key: &str| -> Option<String> {
        openid
            .and_then(|o| o.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let pick =
        |configured: &Option<String>, key: &str| configured.clone().or_else(|| from_idp(key));
    let mut doc = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            doc.insert(k.to_string(), Value::String(v));
        }
    };
    // The issuer is the configured one: it names where discovery was fetched from, and a
    // metadata document claiming another issuer must not redirect apps.
    put("issuer", sc.issuer.clone());
    put("jwks_uri", pick(&sc.jwks_uri, "jwks_uri"));
    let authorization_endpoint = pick(&sc.authorization_endpoint, "authorization_endpoint");
    put("authorization_endpoint", authorization_endpoint.clone());
    let Some(token_endpoint) = pick(&sc.token_endpoint, "token_endpoint") else {
        return Err(
            "no token endpoint is configured and OpenID discovery has not provided one".into(),
        );
    };
    put("token_endpoint", Some(token_endpoint));
    put(
        "registration_endpoint",
        pick(&sc.registration_endpoint, "registration_endpoint"),
    );
    put(
        "management_endpoint",
        pick(&sc.management_endpoint, "management_endpoint"),
    );
    put(
        "introspection_endpoint",
        pick(&sc.introspection_endpoint, "introspection_endpoint"),
    );
    put(
        "revocation_endpoint",
        pick(&sc.revocation_endpoint, "revocation_endpoint"),
    );

    let mut grant_types = if sc.grant_types.is_empty() {
        strings(openid.and_then(|o| o.get("grant_types_supported")))
            .into_iter()
            .filter(|g| g == "authorization_code" || g == "client_credentials")
            .collect()
    } else {
        sc.grant_types.clone()
    };
    if grant_types.is_empty() {
        grant_types.push("authorization_code".into());
    }
    let mut challenge = if sc.code_challenge_methods.is_empty() {
        strings(openid.and_then(|o| o.get("code_challenge_methods_supported")))
    } else {
        sc.code_challenge_methods.clone()
    };
    // SMART 2.2: S256 must be offered and plain must not.
    challenge.retain(|m| m != "plain");
    push_unique(&mut challenge, "S256");
    let auth_methods = if sc.token_endpoint_auth_methods.is_empty() {
        strings(openid.and_then(|o| o.get("token_endpoint_auth_methods_supported")))
    } else {
        sc.token_endpoint_auth_methods.clone()
    };

    let mut capabilities: Vec<String> = Vec::new();
    for c in &sc.capabilities {
        push_unique(&mut capabilities, c);
    }
    for c in derived_capabilities() {
        push_unique(&mut capabilities, c);
    }
    let mut scopes: Vec<String> = Vec::new();
    for s in derived_scopes() {
        push_unique(&mut scopes, s);
    }
    for s in &sc.scopes {
        push_unique(&mut scopes, s);
    }
    // The issuer's own scopes (openid, fhirUser, launch/patient, ...), but never its resource
    // scopes: what those grant here is decided by fhirguard, listed above.
    for s in strings(openid.and_then(|o| o.get("scopes_supported"))) {
        if !is_resource_scope(&s) {
            push_unique(&mut scopes, &s);
        }
    }

    doc.insert("grant_types_supported".into(), json!(grant_types));
    doc.insert("code_challenge_methods_supported".into(), json!(challenge));
    if !auth_methods.is_empty() {
        doc.insert(
            "token_endpoint_auth_methods_supported".into(),
            json!(auth_methods),
        );
    }
    if authorization_endpoint.is_some() {
        doc.insert("response_types_supported".into(), json!(["code"]));
    }
    doc.insert("scopes_supported".into(), json!(scopes));
    doc.insert("capabilities".into(), json!(capabilities));
    Ok(Value::Object(doc))
}

/// The 200 answer carrying the document.
pub fn respond(p: &PolicyConfig, doc: &Value) -> Decision {
    Decision::Respond(Respond {
        policy: format!("{}/{}", p.namespace, p.name),
        reason: AllowReason::SmartConfiguration,
        status: 200,
        content_type: "application/json",
        body: doc.to_string(),
    })
}

/// The SMART App Launch 2.2 fields a discovery document must carry, and the rules on them
/// that do not depend on the server's capabilities. Empty when the document is valid.
pub fn smart_2_2_problems(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for k in ["token_endpoint"] {
        if doc.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
            out.push(format!("{k} is required"));
        }
    }
    for k in [
        "grant_types_supported",
        "capabilities",
        "code_challenge_methods_supported",
    ] {
        if doc
            .get(k)
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            out.push(format!("{k} is required as a non-empty array"));
        }
    }
    let methods = strings(doc.get("code_challenge_methods_supported"));
    if !methods.iter().any(|m| m == "S256") {
        out.push("code_challenge_methods_supported must include S256".into());
    }
    if methods.iter().any(|m| m == "plain") {
        out.push("code_challenge_methods_supported must not include plain".into());
    }
    let caps = strings(doc.get("capabilities"));
    let has = |c: &str| caps.iter().any(|x| x == c);
    if (has("launch-ehr") || has("launch-standalone"))
        && doc.get("authorization_endpoint").is_none()
    {
        out.push("authorization_endpoint is required with launch-ehr/launch-standalone".into());
    }
    if has("sso-openid-connect") {
        for k in ["issuer", "jwks_uri"] {
            if doc.get(k).is_none() {
                out.push(format!("{k} is required with sso-openid-connect"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc() -> SmartConfigurationConfig {
        SmartConfigurationConfig {
            issuer: Some("https://idp.example".into()),
            token_endpoint: Some("https://idp.example/token".into()),
            authorization_endpoint: Some("https://idp.example/authorize".into()),
            capabilities: vec!["launch-standalone".into(), "client-public".into()],
            ..Default::default()
        }
    }

    #[test]
    fn configured_values_make_a_valid_document() {
        let doc = document(&sc(), None).unwrap();
        assert!(smart_2_2_problems(&doc).is_empty(), "{doc}");
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(doc["grant_types_supported"], json!(["authorization_code"]));
        let caps = strings(doc.get("capabilities"));
        assert!(caps.contains(&"permission-v2".to_string()));
        assert!(caps.contains(&"launch-standalone".to_string()));
    }

    #[test]
    fn openid_metadata_fills_gaps_and_never_overrides_or_adds_plain() {
        let mut c = sc();
        c.token_endpoint = None;
        c.authorization_endpoint = None;
        assert!(document(&c, None).is_err());
        let idp = json!({
            "issuer": "https://evil.example",
            "token_endpoint": "https://idp.example/t",
            "authorization_endpoint": "https://idp.example/a",
            "jwks_uri": "https://idp.example/jwks",
            "grant_types_supported": ["authorization_code", "implicit", "password"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "scopes_supported": ["openid", "fhirUser", "patient/*.*"],
        });
        let doc = document(&c, Some(&idp)).unwrap();
        assert_eq!(doc["issuer"], "https://idp.example");
        assert_eq!(doc["token_endpoint"], "https://idp.example/t");
        assert_eq!(doc["grant_types_supported"], json!(["authorization_code"]));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        let scopes = strings(doc.get("scopes_supported"));
        assert!(scopes.contains(&"openid".to_string()));
        assert!(!scopes.contains(&"patient/*.*".to_string()));
        c.token_endpoint = Some("https://configured.example/t".into());
        let doc = document(&c, Some(&idp)).unwrap();
        assert_eq!(doc["token_endpoint"], "https://configured.example/t");
    }

    #[test]
    fn the_validator_catches_missing_fields() {
        assert!(!smart_2_2_problems(&json!({})).is_empty());
        let doc = json!({"token_endpoint": "x", "grant_types_supported": ["a"],
            "capabilities": ["launch-ehr"], "code_challenge_methods_supported": ["S256", "plain"]});
        let p = smart_2_2_problems(&doc);
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
