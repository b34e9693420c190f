//! Request bodies on every kind of endpoint: Bundles (batch and transaction), Parameters,
//! resources and `POST _search` forms. No panic; a classified bundle writes exactly when one
//! of its entries does.
#![no_main]

use fhirguard_authz::core::fhir::{self, Body, HttpRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let segs: Vec<String> = match selector % 5 {
        0 => vec![],
        1 => vec!["Observation".into()],
        2 => vec!["Patient".into(), "123".into()],
        3 => vec!["Patient".into(), "$everything".into()],
        _ => vec!["Observation".into(), "_search".into()],
    };
    let method = if selector & 0x80 != 0 { "PUT" } else { "POST" };
    let content_type = if selector & 0x40 != 0 {
        "application/x-www-form-urlencoded"
    } else {
        "application/fhir+json"
    };
    if let Ok(r) = fhir::classify(HttpRequest {
        method,
        segments: &segs,
        query: None,
        body: Some(Body {
            bytes: body,
            content_type: Some(content_type),
        }),
        if_none_exist: None,
    }) && !r.entries.is_empty()
    {
        assert_eq!(r.writes, r.entries.iter().any(|e| e.writes));
    }
});
