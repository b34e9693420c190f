//! The committed CRDs in `crds/` (and the Helm chart's copy, once it exists) must be exactly
//! what `fhirguard-operator crds` generates. Regenerate with `scripts/gen-crds.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use fhirguard_operator::crd;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_match_the_generated_ones() {
    let docs = crd::crd_documents().expect("generate CRDs");
    assert_eq!(docs.len(), 2);
    let mut stale = Vec::new();
    for (file, yaml) in &docs {
        let path = repo().join("crds").join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != *yaml {
            stale.push(path.display().to_string());
        }
    }
    let mut expected: Vec<&str> = docs.iter().map(|(f, _)| f.as_str()).collect();
    expected.sort();
    let mut present: Vec<String> = std::fs::read_dir(repo().join("crds"))
        .expect("crds/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(present, expected, "crds/ holds exactly the generated files");
    assert!(
        stale.is_empty(),
        "{stale:?} differ from `fhirguard-operator crds`; run scripts/gen-crds.sh and commit"
    );
}

#[test]
fn crds_carry_the_user_facing_contract() {
    let all = crd::crds_yaml().expect("generate");
    for needle in [
        "group: fhirguard.dev",
        "name: v1alpha1",
        "kind: FhirSecurityPolicy",
        "kind: FhirConnection",
        "scope: Namespaced",
        "status: {}",
        "- fsp",
        "- fconn",
        "jsonPath: .status.conditions[?(@.type==\"Ready\")].status",
        "rule: has(self.uri) != has(self.secretRef)",
        "x-kubernetes-validations",
        "- SkipVerification",
        "- CustomBundle",
        "default: htpasswd",
        "default: ca.crt",
    ] {
        assert!(all.contains(needle), "CRDs lack {needle:?}");
    }
}
