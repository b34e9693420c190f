//! What the compile tests of one CRD feature share: YAML as a user applies it → inputs →
//! compiled config, and the check that a problem is reported on the field the user wrote.
#![allow(dead_code)]

use std::collections::BTreeMap;

use fhirguard_operator::compile::{self, Compiled, Reason};
use fhirguard_operator::render::{self, Inputs};

pub const CA: &str = include_str!("../fixtures/ca.crt");

/// The objects of a multi-document YAML text, which must load without problems.
pub fn inputs(yaml: &str) -> Inputs {
    let mut inputs = Inputs::default();
    render::load_text("test.yaml", yaml, &mut inputs, &mut BTreeMap::new());
    assert!(inputs.problems.is_empty(), "{:?}", inputs.problems);
    inputs
}

pub fn compile_yaml(yaml: &str) -> Compiled {
    let i = inputs(yaml);
    compile::compile(&i.policies, &i.connections, &i.secrets)
}

/// The test CA as a YAML block scalar's lines (indented for a `stringData` key).
pub fn ca_block() -> String {
    CA.lines().map(|l| format!("    {l}\n")).collect()
}

/// The one object of `c` was rejected, left out of the config, and has a problem on `field`
/// with `reason` whose message contains `message`.
pub fn assert_rejected_on(c: &Compiled, name: &str, field: &str, reason: Reason, message: &str) {
    let o = c.objects.values().next().unwrap();
    assert!(!o.accepted(), "{name}: accepted");
    assert!(
        c.config.policies.is_empty(),
        "{name}: a rejected policy is not published"
    );
    assert!(
        o.issues
            .iter()
            .any(|i| i.field == field && i.reason == reason && i.message.contains(message)),
        "{name}: expected {field} {reason:?} {message:?}, got {:#?}",
        o.issues
    );
}
