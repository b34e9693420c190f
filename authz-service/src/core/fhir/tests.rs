use super::*;
use Interaction::*;

fn classify_str(
    method: &str,
    rel: &str,
    body: Option<(&str, &str)>,
    if_none_exist: Option<&str>,
) -> Result<FhirRequest, RequestError> {
    let (path, query) = split_path(rel);
    let segments = normalize_path(path)?;
    classify(HttpRequest {
        method,
        segments: &segments,
        query,
        body: body.map(|(ct, b)| Body {
            bytes: b.as_bytes(),
            content_type: Some(ct),
        }),
        if_none_exist,
    })
}

/// (method, path relative to the base, interaction, type, id, writes)
type Case = (
    &'static str,
    &'static str,
    Interaction,
    Option<&'static str>,
    Option<&'static str>,
    bool,
);
#[rustfmt::skip]
const CASES: &[Case] = &[
    ("GET", "/Patient/123", Read, Some("Patient"), Some("123"), false),
    ("HEAD", "/Patient/123", Read, Some("Patient"), Some("123"), false),
    ("GET", "/Observation/a-b.c", Read, Some("Observation"), Some("a-b.c"), false),
    ("GET", "/Patient/123/_history/2", VRead, Some("Patient"), Some("123"), false),
    ("PUT", "/Patient/123", Update, Some("Patient"), Some("123"), true),
    ("PATCH", "/Patient/123", Patch, Some("Patient"), Some("123"), true),
    ("DELETE", "/Patient/123", Delete, Some("Patient"), Some("123"), true),
    ("GET", "/Patient/123/_history", HistoryInstance, Some("Patient"), Some("123"), false),
    ("GET", "/Patient/_history", HistoryType, Some("Patient"), None, false),
    ("GET", "/_history", HistorySystem, None, None, false),
    ("POST", "/Patient", Create, Some("Patient"), None, true),
    ("GET", "/Observation?subject=Patient/1", SearchType, Some("Observation"), None, false),
    ("GET", "/Observation", SearchType, Some("Observation"), None, false),
    ("GET", "/", SearchSystem, None, None, false),
    ("GET", "/?_type=Patient", SearchSystem, None, None, false),
    ("GET", "/metadata", Capabilities, None, None, false),
    ("GET", "/Patient/123/Observation", SearchCompartment, Some("Observation"), None, false),
    ("GET", "/Patient/123/*", SearchCompartment, None, None, false),
    ("GET", "/$export", OperationSystem, None, None, false),
    ("POST", "/$export", OperationSystem, None, None, false),
    ("POST", "/$reindex", OperationSystem, None, None, true),
    ("GET", "/Patient/$match", OperationType, Some("Patient"), None, false),
    ("POST", "/Patient/$match", OperationType, Some("Patient"), None, false),
    ("GET", "/Patient/123/$everything", OperationInstance, Some("Patient"), Some("123"), false),
    ("POST", "/Patient/123/$everything", OperationInstance, Some("Patient"), Some("123"), false),
    ("POST", "/Patient/123/$meta-add", OperationInstance, Some("Patient"), Some("123"), true),
    ("POST", "/Patient/123/$meta-delete", OperationInstance, Some("Patient"), Some("123"), true),
    ("POST", "/ValueSet/$expand", OperationType, Some("ValueSet"), None, false),
    ("POST", "/Observation/$validate", OperationType, Some("Observation"), None, false),
    // Without a visible body, `persist` may be in it.
    ("POST", "/Composition/1/$document", OperationInstance, Some("Composition"), Some("1"), true),
    ("GET", "/Composition/1/$document", OperationInstance, Some("Composition"), Some("1"), false),
    ("GET", "/Composition/1/$document?persist=true", OperationInstance, Some("Composition"), Some("1"), true),
    ("GET", "/Observation/$reindex", OperationType, Some("Observation"), None, true),
    ("GET", "/$graphql?query=mutation", OperationSystem, None, None, true),
    ("GET", "/$graphql?query=x", OperationSystem, None, None, false),
    ("POST", "/$graphql", OperationSystem, None, None, true),
    ("PUT", "/Patient?identifier=x|1", ConditionalUpdate, Some("Patient"), None, true),
    ("PATCH", "/Patient?identifier=x|1", ConditionalPatch, Some("Patient"), None, true),
    ("DELETE", "/Patient?identifier=x|1", ConditionalDelete, Some("Patient"), None, true),
    ("GET", "/Patient/123/", Read, Some("Patient"), Some("123"), false),
    ("GET", "/Pat%69ent/123", Read, Some("Patient"), Some("123"), false),
];

#[test]
fn interactions_table() {
    for (method, path, interaction, rt, id, writes) in CASES {
        let r = classify_str(method, path, None, None)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(r.interaction, *interaction, "{method} {path}");
        assert_eq!(r.resource_type.as_deref(), *rt, "{method} {path}");
        assert_eq!(r.id.as_deref(), *id, "{method} {path}");
        assert_eq!(r.writes, *writes, "{method} {path}");
    }
}

/// Paths that could make fhirguard and the server disagree, and non-FHIR requests.
#[rustfmt::skip]
const REFUSED: &[(&str, &str, u16)] = &[
    ("GET", "/Patient/../Observation/1", 400),
    ("GET", "/Patient/./1", 400),
    ("GET", "/Patient/%2e%2e/x", 400),
    ("GET", "/Patient/%2E", 400),
    ("GET", "/Patient//1", 400),
    ("GET", "//Patient/1", 400),
    ("GET", "/Patient%2F1", 400),
    ("GET", "/Patient%5c1", 400),
    ("GET", "/Patient\\1", 400),
    ("GET", "/Patient/1;jsessionid=x", 400),
    ("GET", "/Patient;x/1", 400),
    ("GET", "/Patient/%252e%252e", 400),
    ("GET", "/Patient/%zz", 400),
    ("GET", "/Patient/%c3", 400),
    ("GET", "/Patient/%00", 400),
    ("GET", "/Patient/a%20b", 400),
    ("GET", "/Patient/1#frag", 400),
    ("GET", "/Patient?name=%zz", 400),
    ("GET", "/Patient?name=%ff", 400),
    ("GET", "/Patient?=x", 400),
    ("GET", "/patient/1", 400),
    ("GET", "/Patient/has space", 400),
    ("GET", "/Patient/12345678901234567890123456789012345678901234567890123456789012345", 400),
    ("GET", "/Patient/1/_history/2/x", 400),
    ("GET", "/Patient/1/Observation/2", 400),
    ("GET", "/_search", 400),
    ("POST", "/metadata", 400),
    ("PUT", "/Patient", 400),
    ("DELETE", "/Patient", 400),
    ("DELETE", "/", 400),
    ("POST", "/Patient/1", 400),
    ("PUT", "/Patient/1/_history/2", 400),
    ("GET", "/Patient/$", 400),
    ("OPTIONS", "/Patient", 405),
    ("TRACE", "/Patient", 405),
    ("CONNECT", "/", 405),
];

#[test]
fn refused_table() {
    for (method, path, status) in REFUSED {
        match classify_str(method, path, None, None) {
            Ok(r) => panic!("{method} {path} classified as {r:?}"),
            Err(e) => assert_eq!(e.http_status(), *status, "{method} {path}: {e}"),
        }
    }
}

#[test]
fn query_parameters_are_decoded() {
    let r = classify_str(
        "GET",
        "/Observation?subject=Patient%2F1&code=a+b&code=c",
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        r.params,
        vec![
            ("subject".into(), "Patient/1".into()),
            ("code".into(), "a b".into()),
            ("code".into(), "c".into())
        ]
    );
}

#[test]
fn post_search_reads_the_form_body() {
    let form = "application/x-www-form-urlencoded; charset=utf-8";
    let r = classify_str(
        "POST",
        "/Observation/_search?_count=5",
        Some((form, "subject=Patient%2F9")),
        None,
    )
    .unwrap();
    assert_eq!(r.interaction, SearchType);
    assert!(!r.writes && r.params_complete);
    assert_eq!(
        r.params,
        vec![
            ("_count".into(), "5".into()),
            ("subject".into(), "Patient/9".into())
        ]
    );

    let r = classify_str("POST", "/_search", None, None).unwrap();
    assert_eq!(r.interaction, SearchSystem);
    assert!(!r.params_complete, "no body: parameters unknown");

    let e = classify_str(
        "POST",
        "/Observation/_search",
        Some(("application/json", "{}")),
        None,
    );
    assert_eq!(e.unwrap_err().http_status(), 400);

    let r = classify_str(
        "POST",
        "/Patient/1/Observation/_search",
        Some((form, "code=x")),
        None,
    )
    .unwrap();
    assert_eq!(r.interaction, SearchCompartment);
    assert_eq!(r.compartment, Some(("Patient".into(), "1".into())));
}

#[test]
fn conditional_create_uses_if_none_exist() {
    let r = classify_str("POST", "/Patient", None, Some("identifier=http://x|1")).unwrap();
    assert_eq!(r.interaction, ConditionalCreate);
    assert_eq!(r.params, vec![("identifier".into(), "http://x|1".into())]);
    assert!(r.writes);
}

#[test]
fn create_bodies_are_parsed_when_json() {
    let j = "application/fhir+json";
    let r = classify_str(
        "POST",
        "/Observation",
        Some((j, r#"{"resourceType":"Observation"}"#)),
        None,
    )
    .unwrap();
    assert_eq!(r.resource.unwrap()["resourceType"], "Observation");
    let e = classify_str("PUT", "/Observation/1", Some((j, "{not json")), None).unwrap_err();
    assert_eq!(e.http_status(), 400);
    // XML is passed through unparsed: Basic authorisation does not need it.
    let r = classify_str(
        "POST",
        "/Observation",
        Some(("application/fhir+xml", "<x/>")),
        None,
    )
    .unwrap();
    assert!(r.resource.is_none());
}

const TX: &str = r#"{"resourceType":"Bundle","type":"transaction","entry":[
    {"request":{"method":"GET","url":"Patient/1"}},
    {"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation"}},
    {"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=a|b"}},
    {"request":{"method":"GET","url":"Observation?subject=Patient/1"}}
]}"#;

#[test]
fn bundles_classify_every_entry() {
    let r = classify_str("POST", "/", Some(("application/fhir+json", TX)), None).unwrap();
    assert_eq!(r.interaction, Transaction);
    assert!(r.writes);
    let got: Vec<_> = r.entries.iter().map(|e| e.interaction).collect();
    assert_eq!(got, vec![Read, Create, ConditionalCreate, SearchType]);
    assert_eq!(
        r.entries[3].params,
        vec![("subject".into(), "Patient/1".into())]
    );
    assert_eq!(
        resource_types(&r).into_iter().collect::<Vec<_>>(),
        vec!["Observation", "Patient"]
    );

    let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1"}}]}"#;
    let r = classify_str("POST", "/", Some(("application/json", batch)), None).unwrap();
    assert_eq!(r.interaction, Batch);
    assert!(!r.writes, "a batch of reads writes nothing");
}

#[test]
fn bad_bundles_are_refused() {
    let bad = [
        r#"{"resourceType":"Patient"}"#,
        r#"{"resourceType":"Bundle","type":"collection"}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":{}}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"http://evil/Patient/1"}}]}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"/Patient/1"}}]}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/../x"}}]}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":""}}]}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"OPTIONS","url":"Patient"}}]}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"url":"Patient"}}]}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":"Patient"},"resource":5}]}"#,
        "not json",
    ];
    for b in bad {
        let e = classify_str("POST", "/", Some(("application/fhir+json", b)), None);
        assert!(e.is_err(), "{b} was accepted: {e:?}");
    }
    let e = classify_str(
        "POST",
        "/",
        Some(("application/fhir+xml", "<Bundle/>")),
        None,
    );
    assert!(e.is_err());
}

/// (rule, method, path, (body content type, body))
type Ambiguous = (
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
);

/// Requests whose meaning fhirguard and a server could read differently: refused (400)
/// before any rule looks at them.
#[rustfmt::skip]
const AMBIGUOUS: &[Ambiguous] = &[
    // operation names are exact
    ("op.case-variant", "GET", "/Patient/1/$Everything", None),
    ("op.upper-case", "GET", "/Patient/1/$EVERYTHING", None),
    ("op.camel-case", "GET", "/Patient/1/$everyThing", None),
    ("op.underscore-for-dash", "POST", "/Observation/1/$meta_add", None),
    ("op.no-dash", "POST", "/Observation/1/$metaadd", None),
    ("op.graphql-case", "GET", "/$GraphQL", None),
    ("op.state-changing-by-get", "GET", "/Observation/1/$meta-add", None),
    ("op.state-changing-by-head", "HEAD", "/Observation/1/$meta-delete", None),
    ("op.process-message-by-get", "GET", "/$process-message", None),
    ("op.param-in-url-and-body", "POST", "/Patient/1/$everything?_type=Observation",
        Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Condition"}]}"#))),
    ("op.param-in-url-and-form", "POST", "/Patient/1/$everything?_type=Observation",
        Some(("application/x-www-form-urlencoded", "_type=Condition"))),
    ("op.parameters-not-an-array", "POST", "/Patient/1/$everything",
        Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":{"name":"_type"}}"#))),
    ("op.access-token-in-parameters", "POST", "/Patient/1/$everything",
        Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"access_token","valueString":"x"}]}"#))),
    // one query parser, one meaning
    ("query.semicolon-separator", "GET", "/Observation?subject=Patient/1;_revinclude=Observation:focus", None),
    ("query.semicolon-anywhere", "GET", "/Observation?code=a;b", None),
    ("query.include-upper", "GET", "/Observation?_INCLUDE=Observation:subject", None),
    ("query.include-mixed", "GET", "/Observation?_Include=Observation:subject", None),
    ("query.revinclude-mixed", "GET", "/Patient?_revInclude=Observation:focus", None),
    ("query.has-upper", "GET", "/Observation?_HAS:Observation:part-of:code=x", None),
    ("query.query-upper", "GET", "/Observation?_Query=x", None),
    ("query.contained-type-lower", "GET", "/Observation?_containedtype=container", None),
    ("query.id-upper", "GET", "/Patient?_ID=1", None),
    ("query.encoded-include-name-upper", "GET", "/Observation?%5FINCLUDE=x", None),
    ("query.name-with-space", "GET", "/Observation?subject%20=Patient/1", None),
    ("query.name-with-plus", "GET", "/Observation?subject+=Patient/1", None),
    ("query.name-with-brackets", "GET", "/Observation?subject%5B0%5D=Patient/1", None),
    ("query.name-with-slash", "GET", "/Observation?a%2Fb=1", None),
    ("query.method-override", "GET", "/Observation?_method=DELETE", None),
    ("query.method-override-upper", "GET", "/Observation?_METHOD=DELETE", None),
    ("query.method-override-in-form", "POST", "/Observation/_search", Some(("application/x-www-form-urlencoded", "_method=DELETE"))),
    ("query.token-in-form-body", "POST", "/Observation/_search", Some(("application/x-www-form-urlencoded", "subject=Patient/1&access_token=x"))),
    ("query.token-in-form-body-encoded", "POST", "/Observation/_search", Some(("application/x-www-form-urlencoded", "access%5Ftoken=x"))),
    ("query.token-in-entry-url", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation?access_token=x"}}]}"#))),
    ("query.method-override-in-entry-url", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/1?_method=DELETE"}}]}"#))),
    // duplicate JSON members
    ("json.duplicate-subject", "POST", "/Observation",
        Some(("application/fhir+json", r#"{"resourceType":"Observation","subject":{"reference":"Patient/1"},"subject":{"reference":"Patient/2"}}"#))),
    ("json.duplicate-reference", "PUT", "/Observation/1",
        Some(("application/fhir+json", r#"{"resourceType":"Observation","id":"1","subject":{"reference":"Patient/1","reference":"Patient/2"}}"#))),
    ("json.duplicate-resource-type", "POST", "/Observation",
        Some(("application/fhir+json", r#"{"resourceType":"Observation","resourceType":"Patient"}"#))),
    ("json.duplicate-entry", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[],"entry":[{"request":{"method":"DELETE","url":"Patient/1"}}]}"#))),
    ("json.duplicate-method", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","method":"DELETE","url":"Patient/1"}}]}"#))),
    ("json.duplicate-type", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","type":"transaction","entry":[]}"#))),
    ("json.duplicate-in-entry-resource", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/1"},"subject":{"reference":"Patient/2"}},"request":{"method":"POST","url":"Observation"}}]}"#))),
    ("json.duplicate-parameter-value", "POST", "/Patient/1/$everything",
        Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Observation","valueString":"Condition"}]}"#))),
    ("json.duplicate-in-json-patch", "PATCH", "/Patient/1",
        Some(("application/json-patch+json", r#"[{"op":"replace","path":"/name","path":"/link","value":[]}]"#))),
    // a body of another type than the URL's (servers create it at its own type)
    ("type.create-other-type", "POST", "/Observation",
        Some(("application/fhir+json", r#"{"resourceType":"Condition","subject":{"reference":"Patient/1"}}"#))),
    ("type.update-other-type", "PUT", "/Observation/1",
        Some(("application/fhir+json", r#"{"resourceType":"Patient","id":"1"}"#))),
    ("type.conditional-update-other-type", "PUT", "/Observation?identifier=a|b",
        Some(("application/fhir+json", r#"{"resourceType":"Patient"}"#))),
    ("type.entry-create-other-type", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Observation"}}]}"#))),
    ("type.entry-operation-with-a-resource", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/2"}},"request":{"method":"POST","url":"Observation/$lastn?patient=1"}}]}"#))),
    ("type.entry-instance-operation-with-a-resource", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Patient/1/$meta"}}]}"#))),
    ("type.entry-search-with-a-resource", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation/_search"}}]}"#))),
    // bundle entry request members
    ("entry.if-match-as-a-match-url", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Parameters"},"request":{"method":"PATCH","url":"Observation/1","ifMatch":"Observation?_id=2"}}]}"#))),
    ("entry.if-none-match-not-an-etag", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/1","ifNoneMatch":"*"}}]}"#))),
    ("entry.unknown-request-member", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/1","modifierExtension":[]}}]}"#))),
    // conditional criteria are search parameters only
    ("conditional.cascade", "DELETE", "/Patient?_id=1&_cascade=delete", None),
    ("conditional.expunge", "DELETE", "/Observation?code=x&_expunge=true", None),
    ("conditional.cascade-in-entry", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Encounter?patient=1&_cascade=delete"}}]}"#))),
    ("conditional.if-none-exist-switch", "POST", "/",
        Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation","ifNoneExist":"code=x&_cascade=delete"}}]}"#))),
    // respelled control names in a Parameters body
    ("parameters.respelled-type", "POST", "/$export?_type=Observation",
        Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_TYPE","valueString":"Patient,Condition"}]}"#))),
    ("parameters.same-name-other-case", "POST", "/Patient/1/$everything?start=2020",
        Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"Start","valueString":"2000"}]}"#))),
    // found by the attack review
    ("review.cascade-delete-param", "DELETE", "/Patient/1?_cascade=delete", None),
    ("review.cascade-delete-observation", "DELETE", "/Observation/1?_cascade=delete", None),
    ("review.update-with-a-parameter", "PUT", "/Observation/1?_cascade=delete", None),
    ("review.read-with-a-search-parameter", "GET", "/Patient/1?_revinclude=Observation:subject", None),
    ("review.create-with-a-parameter", "POST", "/Observation?subject=Patient/1", None),
    ("review.bundle-with-a-parameter", "POST", "/?_cascade=delete", Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch"}"#))),
    ("review.operation-by-delete", "DELETE", "/Patient/1/$meta", None),
    ("review.operation-by-put", "PUT", "/Patient/1/$meta", None),
    ("review.operation-by-patch", "PATCH", "/$everything", None),
    ("review.parameters-two-values", "POST", "/Patient/1/$everything",
        Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueCode":"Observation","valueString":"Condition,MedicationRequest"}]}"#))),
    ("review.parameters-value-and-part", "POST", "/$export",
        Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Observation","part":[]}]}"#))),
    ("review.fhirpath-patch-part-twice", "PATCH", "/Patient/1",
        Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.name"},{"name":"path","valueString":"Patient.link"}]}]}"#))),
    ("review.fragment-in-entry-url", "POST", "/",
        Some(("application/fhir+json", r##"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation?code=x#&subject=Patient/1"}}]}"##))),
    ("review.pin-in-another-case", "GET", "/Observation?subject=Patient/1&Subject=Patient/2", None),
    ("review.pin-in-upper-case", "GET", "/Observation?SUBJECT=Patient/2", None),
    ("review.pin-case-chained", "GET", "/Observation?Subject.name=x", None),
    ("review.reference-member-case", "POST", "/Observation",
        Some(("application/fhir+json", r#"{"resourceType":"Observation","subject":{"reference":"Patient/1","Reference":"Patient/2"}}"#))),
    ("json.escaped-duplicate", "POST", "/Observation",
        Some(("application/fhir+json", r#"{"resourceType":"Observation","subject":{"reference":"Patient/1"},"subj\u0065ct":{"reference":"Patient/2"}}"#))),
];

#[test]
fn ambiguous_requests_are_refused() {
    let mut failures = Vec::new();
    for (rule, method, path, body) in AMBIGUOUS {
        match classify_str(method, path, *body, None) {
            Err(e) if e.http_status() == 400 => {}
            other => failures.push(format!("{rule}: {method} {path}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn at_most_a_hundred_parameters() {
    // Node's querystring and qs keep 1000, Tomcat its maxParameterCount: a pin after the
    // cut would be judged here and never applied.
    let mut q = String::from("/Observation?");
    for _ in 0..MAX_PARAMS {
        q.push_str("_lastUpdated=ge1900&");
    }
    let ok = classify_str("GET", q.trim_end_matches('&'), None, None);
    assert!(ok.is_ok(), "{ok:?}");
    q.push_str("subject=Patient/1");
    assert_eq!(
        classify_str("GET", &q, None, None)
            .map_err(|e| e.http_status())
            .err(),
        Some(400)
    );
    let form: String = (0..=MAX_PARAMS).map(|i| format!("a{i}=1&")).collect();
    let e = classify_str(
        "POST",
        "/Observation/_search",
        Some(("application/x-www-form-urlencoded", &form)),
        None,
    );
    assert_eq!(e.map_err(|e| e.http_status()).err(), Some(400));
}

#[test]
fn if_none_exist_cannot_carry_a_token_or_an_override() {
    for criteria in [
        "identifier=a|b&access_token=x",
        "access%5Ftoken=x",
        "_method=DELETE",
    ] {
        let e = classify_str("POST", "/Observation", None, Some(criteria));
        assert_eq!(
            e.map_err(|e| e.http_status()).err(),
            Some(400),
            "{criteria}"
        );
    }
}

#[test]
fn query_tokens_are_found_in_every_spelling() {
    // (query, plain spelling?)
    for (q, plain) in [
        ("access_token=t", true),
        ("access%5Ftoken=t", false),
        ("access%5ftoken=t", false),
        ("%61ccess_token=t", false),
        ("Access_Token=t", false),
        ("ACCESS_TOKEN=t", false),
        ("access_token:x=t", false),
    ] {
        let r = classify_str("GET", &format!("/Observation?code=1&{q}"), None, None).unwrap();
        assert_eq!(r.access_tokens.len(), 1, "{q}");
        assert_eq!(r.access_tokens[0].plain, plain, "{q}");
        assert_eq!(r.access_tokens[0].value, "t", "{q}");
        assert!(
            r.params
                .iter()
                .all(|(k, _)| !k.to_ascii_lowercase().starts_with("access")),
            "{q}: the token is never a search parameter"
        );
    }
}

#[test]
fn posted_operation_parameters_are_read() {
    let j = "application/fhir+json";
    let r = classify_str(
        "POST",
        "/Patient/1/$everything",
        Some((j, r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Condition,MedicationRequest"},{"name":"start","valueDate":"2020-01-01"},{"name":"patient","valueReference":{"reference":"Patient/9"}}]}"#)),
        None,
    )
    .unwrap();
    assert!(r.params_complete);
    assert_eq!(
        r.params,
        vec![
            ("_type".into(), "Condition,MedicationRequest".into()),
            ("start".into(), "2020-01-01".into()),
            ("patient".into(), "Patient/9".into()),
        ]
    );
    let r = classify_str("POST", "/Patient/1/$everything", None, None).unwrap();
    assert!(!r.params_complete, "no body: its parameters are unknown");
    let r = classify_str(
        "POST",
        "/Patient/1/$everything",
        Some(("application/fhir+xml", "<Parameters/>")),
        None,
    )
    .unwrap();
    assert!(!r.params_complete, "XML parameters are not read");
    let r = classify_str(
        "POST",
        "/$export",
        Some(("application/x-www-form-urlencoded", "_type=Observation")),
        None,
    )
    .unwrap();
    assert_eq!(r.params, vec![("_type".into(), "Observation".into())]);
}

#[test]
fn patch_bodies_name_the_elements_they_change() {
    let r = classify_str(
        "PATCH",
        "/Patient/1",
        Some(("application/json-patch+json", r#"[{"op":"add","path":"/link/-","value":{}},{"op":"move","from":"/id","path":"/name/0"},{"op":"replace","path":"/a~1b","value":1}]"#)),
        None,
    )
    .unwrap();
    let Some(PatchBody::Ops(ops)) = r.patch else {
        panic!("{:?}", r.patch)
    };
    let got: Vec<_> = ops
        .iter()
        .map(|o| (o.element.clone(), o.from_element.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("link".into()), None),
            (Some("name".into()), Some("id".into())),
            (Some("a/b".into()), None)
        ]
    );
    let r = classify_str(
        "PATCH",
        "/Patient/1",
        Some(("application/xml-patch+xml", "<x/>")),
        None,
    )
    .unwrap();
    assert_eq!(r.patch, Some(PatchBody::Uninspected));
}

#[test]
fn a_bundle_without_a_visible_body_counts_as_writing() {
    let r = classify_str("POST", "/", None, None).unwrap();
    assert_eq!(r.interaction, BundleUninspected);
    assert!(r.writes);
}

#[test]
fn describe_never_shows_parameter_values() {
    let r = classify_str("GET", "/Observation?subject=Patient/secret-id", None, None).unwrap();
    assert_eq!(r.describe(), "search-type Observation");
}
