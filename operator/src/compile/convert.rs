//! The one place where resource types meet the compiled-config types.
//!
//! The CRDs keep their own enums (they carry `kubectl explain` text and schemas, which the
//! config format has no business knowing about), so every such enum is paired here with its
//! config twin in *both* directions, each an exhaustive `match` without a wildcard arm: a
//! variant added on either side fails to compile until it is handled on the other. The tests
//! below check that each pair also agrees on the serialised names users write.

use fhirguard_authz::config;

use crate::crd;

/// `From` in both directions for a CRD enum and its config twin with the same variant names.
macro_rules! same_enum {
    ($($name:ident { $($variant:ident),+ $(,)? })+) => {$(
        impl From<crd::$name> for config::$name {
            fn from(v: crd::$name) -> Self {
                match v {
                    $(crd::$name::$variant => config::$name::$variant,)+
                }
            }
        }

        impl From<config::$name> for crd::$name {
            fn from(v: config::$name) -> Self {
                match v {
                    $(config::$name::$variant => crd::$name::$variant,)+
                }
            }
        }
    )+};
}

same_enum! {
    Combine { AnyOf, AllOf }
    Permission { Read, ReadWrite }
    TokenSource { Header, QueryParameter }
    Algorithm { RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA }
    PatientSearch { Reject, Narrow }
    UserScopes { Unrestricted, ConfineToFhirUser }
    ReferenceData { Deny, ReadWithScope }
    TlsMode { SkipVerification, DefaultBundle, CustomBundle }
    ClientAuthMethod { ClientSecretBasic, ClientSecretPost }
    AuditRecord { PatientDataAndRefusals, Refusals, All }
}

// The claim names by destructuring, so that a field added to either struct fails to compile.
impl From<&crd::Claims> for config::ClaimNames {
    fn from(c: &crd::Claims) -> Self {
        let crd::Claims {
            scope,
            patient,
            fhir_user,
            subject,
        } = c;
        config::ClaimNames {
            scope: scope.clone(),
            patient: patient.clone(),
            fhir_user: fhir_user.clone(),
            subject: subject.clone(),
        }
    }
}

impl From<&config::ClaimNames> for crd::Claims {
    fn from(c: &config::ClaimNames) -> Self {
        let config::ClaimNames {
            scope,
            patient,
            fhir_user,
            subject,
        } = c;
        crd::Claims {
            scope: scope.clone(),
            patient: patient.clone(),
            fhir_user: fhir_user.clone(),
            subject: subject.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    /// Every string a schema allows as an enum value (`enum` lists and `const`s, wherever
    /// schemars put them).
    fn schema_names(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(items)) = m.get("enum") {
                    out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_string)));
                }
                if let Some(Value::String(s)) = m.get("const") {
                    out.push(s.clone());
                }
                for (k, child) in m {
                    if k != "enum" && k != "const" {
                        schema_names(child, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| schema_names(c, out)),
            _ => {}
        }
    }

    /// For every value the CRD schema offers: the CRD and the config read the same name, the
    /// conversion maps it to the config variant of that name, and back to where it started.
    fn parity<C, F>() -> usize
    where
        C: schemars::JsonSchema + DeserializeOwned + Serialize + PartialEq + std::fmt::Debug + Copy,
        F: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug + From<C>,
        C: From<F>,
    {
        let schema = schemars::schema_for!(C);
        let mut names = Vec::new();
        schema_names(schema.as_value(), &mut names);
        assert!(!names.is_empty(), "no enum values in {schema:?}");
        for name in &names {
            let crd: C = serde_json::from_value(json!(name)).unwrap();
            let cfg: F = crd.into();
            assert_eq!(serde_json::to_value(&cfg).unwrap(), json!(name));
            assert_eq!(serde_json::from_value::<F>(json!(name)).unwrap(), cfg);
            assert_eq!(C::from(cfg), crd, "{name} does not round-trip");
        }
        names.len()
    }

    #[test]
    fn every_crd_enum_value_converts_to_the_config_value_of_the_same_name_and_back() {
        let counts = [
            parity::<crd::Combine, config::Combine>(),
            parity::<crd::Permission, config::Permission>(),
            parity::<crd::TokenSource, config::TokenSource>(),
            parity::<crd::Algorithm, config::Algorithm>(),
            parity::<crd::PatientSearch, config::PatientSearch>(),
            parity::<crd::UserScopes, config::UserScopes>(),
            parity::<crd::ReferenceData, config::ReferenceData>(),
            parity::<crd::TlsMode, config::TlsMode>(),
            parity::<crd::ClientAuthMethod, config::ClientAuthMethod>(),
            parity::<crd::AuditRecord, config::AuditRecord>(),
        ];
        assert_eq!(counts, [2, 2, 2, 9, 2, 2, 2, 3, 2, 3]);
    }

    #[test]
    fn every_config_algorithm_has_a_crd_twin() {
        for a in config::Algorithm::ALL {
            let crd: crd::Algorithm = a.into();
            assert_eq!(serde_json::to_value(crd).unwrap(), json!(a.as_str()));
            assert_eq!(config::Algorithm::from(crd), a);
        }
    }

    #[test]
    fn claim_names_convert_field_by_field() {
        let crd = crd::Claims {
            scope: "scp".into(),
            patient: "pt".into(),
            fhir_user: "fu".into(),
            subject: "oid".into(),
        };
        let cfg = config::ClaimNames::from(&crd);
        assert_eq!(
            serde_json::to_value(&cfg).unwrap(),
            json!({"scope": "scp", "patient": "pt", "fhirUser": "fu", "subject": "oid"})
        );
        assert_eq!(crd::Claims::from(&cfg), crd);
        assert_eq!(
            config::ClaimNames::from(&crd::Claims::default()),
            config::ClaimNames::default(),
            "the defaults agree"
        );
    }
}
