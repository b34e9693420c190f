//! fhirguard-operator: turns `FhirSecurityPolicy` and `FhirConnection` resources and the Secrets
//! they name into the compiled configuration that `fhirguard-authz` serves.
//!
//! The layers, and who may import whom (a module imports only those above it):
//!
//! ```text
//! crd        resource types; reading a resource (shape check)      imports: nothing here
//! compile    pure: resources + Secrets → CompiledConfig + verdicts  imports: crd, config format
//! publish    pure: a compile → config files, the Secret, ConfigMaps imports: compile
//! status     pure: a verdict + publish outcome → conditions, Events imports: compile, crd
//! render     offline front end: YAML files → compile               imports: crd, compile
//! metrics    the operator's metrics and its HTTP port               imports: nothing here
//! reconcile  the controller: the ONLY module with a kube Client     imports: all of the above
//! ```
//!
//! Everything above `reconcile` is pure and tested without an API server; `render` and the
//! controller run the same compile and publish code, so they produce the same bytes.

pub mod compile;
pub mod crd;
pub mod metrics;
pub mod publish;
pub mod reconcile;
pub mod render;
pub mod status;
