//! fhirguard-operator: turns `FhirSecurityPolicy` and `FhirConnection` resources and the Secrets
//! they name into the compiled configuration that `fhirguard-authz` serves.
//!
//! Layering: [`crd`] holds the resource types; [`object`] reads resources (with [`shape`]
//! naming every malformed field) for [`compile`], which is pure (objects in, config and
//! verdicts out); [`output`] and [`status`] turn a compile into the files, Secret, conditions
//! and Events to publish (also pure); [`render`] is the offline front end; only [`reconcile`]
//! talks to the Kubernetes API.

pub mod compile;
pub mod crd;
pub mod introspection;
pub mod metrics;
pub mod object;
pub mod output;
pub mod reconcile;
pub mod render;
pub mod shape;
pub mod status;
