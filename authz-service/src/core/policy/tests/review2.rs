//! From the second attack review: a Basic user with `Read` must not write through a bundle
//! entry whose URL names an operation that writes nothing. HAPI's transaction processor
//! creates `entry.resource` for every POST entry, whatever `request.url` says. Each case must
//! be refused (as malformed, or as `read_only_user`).

use super::*;

fn batch_with(entry_url: &str, resource: &str) -> String {
    format!(
        r#"{{"resourceType":"Bundle","type":"batch","entry":[{{"resource":{resource},"request":{{"method":"POST","url":"{entry_url}"}}}}]}}"#
    )
}

#[test]
fn review2_read_only_user_writes_through_operation_entries() {
    let ps = policies();
    let alice = format!("Basic {}", b64("alice:pw"));
    let bob = Identity {
        basic_user: Some("bob".into()),
        token: None,
    };
    let patient = r#"{"resourceType":"Patient","name":[{"family":"Forged"}]}"#;
    let obs = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/2"}}"#;
    let mut open = Vec::new();
    for (url, resource) in [
        ("Patient/$validate", patient),
        ("Patient/1/$meta", obs),
        ("Observation/$lastn?patient=1", obs),
        ("ValueSet/$expand", patient),
    ] {
        let body = batch_with(url, resource);
        let mut r = req("POST", "ehr.example", "/fhir/r4", Some(&alice));
        r.body = Some(crate::core::fhir::Body {
            bytes: body.as_bytes(),
            content_type: Some("application/fhir+json"),
        });
        let d = match prepare(&ps, &r) {
            Ok(p) => decide(&ps[1], &p, &bob),
            Err(d) => d,
        };
        if d.is_allow() {
            let t: serde_json::Value = serde_json::from_str(resource).unwrap();
            open.push(format!(
                "POST entry {url} with a {} body: allowed for a Read user",
                t["resourceType"]
            ));
        }
    }
    assert!(open.is_empty(), "{}", open.join("\n"));
}
