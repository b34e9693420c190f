//! Layer 3, status: from a compile verdict and the publish outcome to the conditions an object
//! should carry (each with `observedGeneration`), and the Events worth emitting when they
//! change. Pure; [`crate::reconcile`] writes the result. Imports [`crate::compile`] and
//! [`crate::crd`].

use fhirguard_authz::config::Problem;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::compile::ObjectResult;
use crate::crd::ObjectStatus;

pub const ACCEPTED: &str = "Accepted";
pub const READY: &str = "Ready";

/// Condition messages are shown by `kubectl describe`; keep them readable.
const MAX_MESSAGE: usize = 1000;

/// How publishing went, for every object at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The config Secret holds this generation. `trust` names the ConfigMap (`namespace/name`)
    /// holding the object's CA bundle for egress Envoys, for connections that have one.
    Published {
        generation: u64,
        secret: String,
        trust: Option<String>,
    },
    /// Writing the config Secret failed; the authz-service keeps its previous config.
    Failed { message: String },
}

/// The status an object should have. `previous` supplies `lastTransitionTime` for conditions
/// whose status did not change, so a re-run writes identical status.
pub fn desired(
    result: &ObjectResult,
    outcome: &PublishOutcome,
    previous: Option<&ObjectStatus>,
    now: &Time,
) -> ObjectStatus {
    let generation = result.generation;
    let prev = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let accepted = if result.accepted() {
        if result.warnings.is_empty() {
            (
                "True",
                "Valid".to_string(),
                "the spec is valid and every reference resolved".to_string(),
            )
        } else {
            (
                "True",
                "ValidWithWarnings".to_string(),
                format!("WARNING: {}", result.warnings.join("; ")),
            )
        }
    } else {
        let first = &result.issues[0];
        let list: Vec<String> = result
            .issues
            .iter()
            .map(|i| format!("{}: {}", i.field, i.message))
            .collect();
        (
            "False",
            first.reason.as_str().to_string(),
            format!(
                "not used; requests it governs are refused until fixed: {}",
                list.join("; ")
            ),
        )
    };
    let (ready, config_generation) = match (result.accepted(), outcome) {
        (false, _) => (
            (
                "False",
                "NotAccepted".to_string(),
                "left out of the published configuration; see the Accepted condition".to_string(),
            ),
            previous.and_then(|p| p.config_generation),
        ),
        (
            true,
            PublishOutcome::Published {
                generation,
                secret,
                trust,
            },
        ) => (
            (
                "True",
                "ConfigPublished".to_string(),
                match trust {
                    None => format!(
                        "included in configuration generation {generation} published to Secret {secret}"
                    ),
                    Some(cm) => format!(
                        "included in configuration generation {generation} published to Secret {secret}; its CA bundle for egress Envoys is in ConfigMap {cm}"
                    ),
                },
            ),
            Some(i64::try_from(*generation).unwrap_or(i64::MAX)),
        ),
        (true, PublishOutcome::Failed { message }) => (
            (
                "False",
                "PublishFailed".to_string(),
                format!("the configuration could not be published: {message}"),
            ),
            previous.and_then(|p| p.config_generation),
        ),
    };
    ObjectStatus {
        observed_generation: generation,
        conditions: vec![
            condition(ACCEPTED, accepted, generation, prev, now),
            condition(READY, ready, generation, prev, now),
        ],
        config_generation,
    }
}

fn condition(
    type_: &str,
    (status, reason, message): (&str, String, String),
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason,
        message: truncate(message),
        observed_generation: generation,
        last_transition_time,
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// An Event to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Events for condition transitions: a change of status or reason of `Accepted` or `Ready`.
/// Identical re-runs emit nothing.
pub fn transitions(previous: Option<&ObjectStatus>, new: &ObjectStatus) -> Vec<EventSpec> {
    let prev = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut out = Vec::new();
    for c in &new.conditions {
        let old = prev.iter().find(|p| p.type_ == c.type_);
        let changed = old.is_none_or(|o| o.status != c.status || o.reason != c.reason);
        if !changed {
            continue;
        }
        // Ready=True on first publish is the event users look for; Ready=False because of
        // NotAccepted repeats the Accepted event and is skipped.
        if c.type_ == READY && c.reason == "NotAccepted" {
            continue;
        }
        let warning = c.status != "True" || c.reason == "ValidWithWarnings";
        out.push(EventSpec {
            warning,
            reason: c.reason.clone(),
            note: c.message.clone(),
        });
    }
    out
}

/// Whether two statuses differ in anything but ordering-insensitive noise.
pub fn differs(current: Option<&ObjectStatus>, desired: &ObjectStatus) -> bool {
    current != Some(desired)
}

/// Problems as printed by `render` and the `validate` CLI.
pub fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{p}\n"))
        .collect::<String>()
}
