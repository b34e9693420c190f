//! A whole request through the pure decision core: policy selection, path normalisation,
//! classification and credential extraction. Input lines: method, path (with query),
//! Authorization header, If-None-Exist; the rest is the body.
#![no_main]

use fhirguard_authz::config::CompiledConfig;
use fhirguard_authz::core::fhir::{self, Body};
use fhirguard_authz::core::policy::{self, Request};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn policies() -> &'static CompiledConfig {
    static C: OnceLock<CompiledConfig> = OnceLock::new();
    C.get_or_init(|| {
        CompiledConfig::from_json(include_str!("../policies.json")).expect("fuzz policies")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(5, '\n');
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let authorization = parts.next().filter(|a| !a.is_empty());
    let if_none_exist = parts.next().filter(|a| !a.is_empty());
    let body = parts.next();
    let req = Request {
        method,
        host: "ehr.example",
        path,
        authorization,
        if_none_exist,
        headers: &[],
        body: body.map(|b| Body {
            bytes: b.as_bytes(),
            content_type: Some("application/fhir+json"),
        }),
        policy_ref: None,
    };
    let _ = policy::prepare(&policies().policies, &req);

    // Normalisation is idempotent: what it yields normalises to itself.
    let (raw_path, _) = fhir::split_path(path);
    if let Ok(segs) = fhir::normalize_path(raw_path) {
        let again = format!("/{}", segs.join("/"));
        if !again.contains(['?', '#']) {
            assert_eq!(fhir::normalize_path(&again), Ok(segs));
        }
    }
});
