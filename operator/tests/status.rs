//! Pure status and publish decisions: what a user sees on `kubectl describe`, and when the
//! controller writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fhirguard_operator::compile::{Issue, Kind, ObjectKey, ObjectResult, Reason};
use fhirguard_operator::publish::{self, Published};
use fhirguard_operator::status::{self, PublishOutcome};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

fn t(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn result(issues: Vec<Issue>, warnings: Vec<String>) -> ObjectResult {
    ObjectResult {
        key: ObjectKey {
            kind: Kind::FhirSecurityPolicy,
            namespace: "clinical".into(),
            name: "ehr".into(),
        },
        generation: Some(3),
        issues,
        warnings,
    }
}

fn published(generation: u64) -> PublishOutcome {
    PublishOutcome::Published {
        generation,
        secret: "fhirguard-system/fhirguard-authz-config".into(),
        trust: None,
    }
}

fn cond(s: &fhirguard_operator::crd::ObjectStatus, t: &str) -> (String, String, String) {
    let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn accepted_and_published() {
    let s = status::desired(&result(vec![], vec![]), &published(5), None, &t(100));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(s.config_generation, Some(5));
    assert_eq!(cond(&s, "Accepted").0, "True");
    let (st, reason, msg) = cond(&s, "Ready");
    assert_eq!((st.as_str(), reason.as_str()), ("True", "ConfigPublished"));
    assert!(
        msg.contains("generation 5") && msg.contains("fhirguard-system/fhirguard-authz-config")
    );
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(3))
    );
}

#[test]
fn a_connection_with_a_bundle_says_which_configmap_holds_it() {
    let outcome = PublishOutcome::Published {
        generation: 5,
        secret: "fhirguard-system/fhirguard-authz-config".into(),
        trust: Some("clinical/fhirguard-trust".into()),
    };
    let s = status::desired(&result(vec![], vec![]), &outcome, None, &t(100));
    assert_eq!(
        cond(&s, "Ready").2,
        "included in configuration generation 5 published to Secret fhirguard-system/fhirguard-authz-config; its CA bundle for egress Envoys is in ConfigMap clinical/fhirguard-trust"
    );
}

#[test]
fn rejected_names_the_first_reason_and_lists_every_problem() {
    let issues = vec![
        Issue {
            field: "a".into(),
            reason: Reason::SecretNotFound,
            message: "Secret \"x\" not found".into(),
        },
        Issue {
            field: "b".into(),
            reason: Reason::InvalidSpec,
            message: "bad".into(),
        },
    ];
    let s = status::desired(&result(issues, vec![]), &published(5), None, &t(100));
    let (st, reason, msg) = cond(&s, "Accepted");
    assert_eq!((st.as_str(), reason.as_str()), ("False", "SecretNotFound"));
    assert!(msg.contains("a: Secret \"x\" not found; b: bad"), "{msg}");
    assert_eq!(cond(&s, "Ready").1, "NotAccepted");
    assert_eq!(s.config_generation, None);
}

#[test]
fn warnings_are_loud_but_accepted() {
    let s = status::desired(
        &result(vec![], vec!["unauthenticatedAccess is true".into()]),
        &published(1),
        None,
        &t(1),
    );
    let (st, reason, msg) = cond(&s, "Accepted");
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("True", "ValidWithWarnings")
    );
    assert!(msg.starts_with("WARNING: "));
    let events = status::transitions(None, &s);
    assert!(
        events
            .iter()
            .any(|e| e.warning && e.reason == "ValidWithWarnings")
    );
}

#[test]
fn publish_failure_is_not_ready_and_keeps_the_last_generation() {
    let first = status::desired(&result(vec![], vec![]), &published(4), None, &t(1));
    let failed = PublishOutcome::Failed {
        message: "forbidden".into(),
    };
    let s = status::desired(&result(vec![], vec![]), &failed, Some(&first), &t(2));
    assert_eq!(cond(&s, "Ready").1, "PublishFailed");
    assert!(cond(&s, "Ready").2.contains("forbidden"));
    assert_eq!(s.config_generation, Some(4));
}

#[test]
fn rerunning_changes_nothing_and_emits_nothing() {
    let first = status::desired(&result(vec![], vec![]), &published(2), None, &t(100));
    let again = status::desired(
        &result(vec![], vec![]),
        &published(2),
        Some(&first),
        &t(200),
    );
    assert!(
        !status::differs(Some(&first), &again),
        "lastTransitionTime is kept"
    );
    assert!(status::transitions(Some(&first), &again).is_empty());
}

#[test]
fn transitions_emit_events_and_keep_times_only_for_unchanged_conditions() {
    let ok = status::desired(&result(vec![], vec![]), &published(2), None, &t(100));
    let first_events = status::transitions(None, &ok);
    let reasons: Vec<(&str, bool)> = first_events
        .iter()
        .map(|e| (e.reason.as_str(), e.warning))
        .collect();
    assert_eq!(reasons, [("Valid", false), ("ConfigPublished", false)]);

    let broken = vec![Issue {
        field: "f".into(),
        reason: Reason::InvalidHtpasswd,
        message: "m".into(),
    }];
    let bad = status::desired(&result(broken, vec![]), &published(3), Some(&ok), &t(200));
    let events = status::transitions(Some(&ok), &bad);
    let reasons: Vec<(&str, bool)> = events
        .iter()
        .map(|e| (e.reason.as_str(), e.warning))
        .collect();
    assert_eq!(
        reasons,
        [("InvalidHtpasswd", true)],
        "NotAccepted on Ready repeats Accepted; not emitted"
    );
    assert_eq!(bad.conditions[0].last_transition_time, t(200));

    // A new config generation alone is not a transition.
    let ok2 = status::desired(&result(vec![], vec![]), &published(2), Some(&ok), &t(300));
    let ok3 = status::desired(&result(vec![], vec![]), &published(3), Some(&ok2), &t(400));
    assert!(status::transitions(Some(&ok2), &ok3).is_empty());
    assert_eq!(ok3.conditions[1].last_transition_time, t(100));
}

#[test]
fn long_messages_are_truncated_on_a_char_boundary() {
    let issues: Vec<Issue> = (0..200)
        .map(|i| Issue {
            field: format!("f{i}"),
            reason: Reason::InvalidSpec,
            message: "é".repeat(10),
        })
        .collect();
    let s = status::desired(&result(issues, vec![]), &published(1), None, &t(1));
    let msg = cond(&s, "Accepted").2;
    assert!(msg.len() <= 1000 && msg.ends_with("..."));
}

#[test]
fn publish_plan_writes_only_on_content_change_and_counts_generations() {
    let compiled = fhirguard_operator::compile::compile(&[], &[], &Default::default());
    let (secret, g1) = publish::plan("ns", "cfg", &compiled, None).expect("first write");
    assert_eq!(g1, 1);
    let state = Published::of(&secret);
    assert_eq!(state.generation, 1);
    assert!(
        publish::plan("ns", "cfg", &compiled, Some(&state)).is_none(),
        "unchanged content: no write"
    );
    // Someone edited the data but not the annotations: it is put back, as a new generation.
    let mut tampered = Published {
        generation: 7,
        ..state.clone()
    };
    tampered.data.insert("config.json".into(), b"{}".to_vec());
    let (_, g) = publish::plan("ns", "cfg", &compiled, Some(&tampered)).unwrap();
    assert_eq!(g, 8);
    let with = |key: &str| {
        let mut data = state.data.clone();
        data.insert(key.into(), vec![]);
        Published {
            data,
            ..state.clone()
        }
    };
    assert!(
        publish::plan("ns", "cfg", &compiled, Some(&with("connection_a_b_ca.pem"))).is_some(),
        "a stale CA file is removed"
    );
    assert!(
        publish::plan("ns", "cfg", &compiled, Some(&with("README"))).is_none(),
        "foreign keys are ignored"
    );
    // What an apply cannot remove (another field manager owns it) is named for deletion;
    // foreign keys and our current files are not.
    let mut data = with("connection_gone_old_ca.pem").data;
    data.insert("README".into(), vec![]);
    assert_eq!(
        publish::stale_files(&data, &compiled),
        ["connection_gone_old_ca.pem"]
    );
    assert!(publish::stale_files(&state.data, &compiled).is_empty());
    let data = secret.data.unwrap();
    let config = String::from_utf8(data["config.json"].0.clone()).unwrap();
    assert!(config.contains("\"generation\": 1"));
}
