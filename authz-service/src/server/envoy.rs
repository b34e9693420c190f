//! The Envoy ext_authz v3 adapter: CheckRequest → [`Request`], [`Answer`] → CheckResponse.
//! The only module that names envoy-types.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
    QueryParameter,
};
use envoy_types::pb::google::rpc;
use tonic::{Request as GrpcRequest, Response, Status};

use crate::core::answer::{
    self, DECISION_ID_HEADER, PATIENT_HEADER, SCOPES_HEADER, SUBJECT_HEADER,
};
use crate::core::fhir::Body;
use crate::core::policy::{Decision, OutboundAuth, Request};
use crate::server::service::{Outcome, Service};

/// Route context extension that names the policy.
pub const POLICY_EXTENSION: &str = "fhirguard.dev/policy";
/// Route context extension that names an outbound connection.
pub const CONNECTION_EXTENSION: &str = "fhirguard.dev/connection";

const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

pub struct EnvoyAuthz {
    service: Arc<Service>,
}

impl EnvoyAuthz {
    pub fn new(service: Arc<Service>) -> Self {
        EnvoyAuthz { service }
    }

    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }
}

/// Lower-cased request headers, from `headers` or, when Envoy runs with
/// `encode_raw_headers: true`, from `header_map` (which then holds the values as bytes).
fn collect_headers(
    http: &envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = http
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(map) = &http.header_map {
        for h in &map.headers {
            let value = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            let key = h.key.to_ascii_lowercase();
            // Repeated headers arrive as separate entries; join them the way HTTP does.
            out.entry(key)
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(&value);
                })
                .or_insert(value);
        }
    }
    out
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

fn status(code: i32, message: &str) -> Option<rpc::Status> {
    Some(rpc::Status {
        code,
        message: message.to_string(),
        details: vec![],
    })
}

/// Turns a decision into Envoy's answer.
pub fn to_check_response(
    decision_id: &str,
    decision: &Decision,
    incoming: &HashMap<String, String>,
) -> CheckResponse {
    match decision {
        Decision::Allow(a) => {
            let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd;
            let mut headers = vec![header(DECISION_ID_HEADER, decision_id, overwrite)];
            if let Some(s) = &a.subject {
                headers.push(header(SUBJECT_HEADER, s, overwrite));
            }
            if let Some(p) = &a.patient {
                headers.push(header(PATIENT_HEADER, p, overwrite));
            }
            if let Some(s) = &a.scopes {
                headers.push(header(SCOPES_HEADER, s, overwrite));
            }
            if a.strict_search {
                let prefer = answer::strict_prefer(incoming.get("prefer").map(String::as_str));
                headers.push(header("prefer", &prefer, overwrite));
            }
            let mut remove_authorization = false;
            match &a.outbound {
                Some(OutboundAuth::Set(v)) => headers.push(header("authorization", v, overwrite)),
                Some(OutboundAuth::Remove) => remove_authorization = true,
                None => {}
            }
            // A client must not be able to assert an identity: drop every x-fhirguard-*
            // header it sent, except those we set just now (Envoy applies removals after sets,
            // so ours would be removed too).
            let ours: Vec<&str> = headers
                .iter()
                .filter_map(|h| h.header.as_ref().map(|h| h.key.as_str()))
                .collect();
            // Forged identity headers are removed in every spelling a CGI/WSGI/Rack stack
            // reads as ours, and even when the check request did not show them: a mesh may
            // send fhirguard only some headers (Envoy Gateway's headersToExtAuth, Envoy's
            // allowed_headers), and a forged x-fhirguard-patient must not survive that.
            let mut headers_to_remove: Vec<String> =
                answer::forged_headers(incoming.keys().map(String::as_str))
                    .into_iter()
                    .chain(answer::identity_header_spellings())
                    .filter(|k| !ours.contains(&k.as_str()))
                    .collect();
            headers_to_remove.sort();
            headers_to_remove.dedup();
            if remove_authorization {
                headers_to_remove.push("authorization".into());
            }
            CheckResponse {
                status: status(GRPC_OK, ""),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers,
                    headers_to_remove,
                    response_headers_to_add: vec![header(
                        DECISION_ID_HEADER,
                        decision_id,
                        overwrite,
                    )],
                    query_parameters_to_remove: a.remove_query.clone(),
                    query_parameters_to_set: a
                        .set_query
                        .iter()
                        .map(|(k, v)| QueryParameter {
                            key: k.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                    ..Default::default()
                })),
                dynamic_metadata: None,
            }
        }
        Decision::Deny(d) => {
            let ans = answer::denied(d, decision_id);
            let headers = ans
                .headers
                .iter()
                .map(|(k, v)| {
                    let action = if k == "www-authenticate" {
                        HeaderAppendAction::AppendIfExistsOrAdd
                    } else {
                        HeaderAppendAction::OverwriteIfExistsOrAdd
                    };
                    header(k, v, action)
                })
                .collect();
            let code = if d.status == 401 {
                GRPC_UNAUTHENTICATED
            } else {
                GRPC_PERMISSION_DENIED
            };
            CheckResponse {
                status: status(code, d.reason.as_str()),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(d.status),
                    }),
                    headers,
                    body: ans.body,
                })),
                dynamic_metadata: None,
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyAuthz {
    async fn check(
        &self,
        request: GrpcRequest<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let req = request.into_inner();
        let attrs = req.attributes.unwrap_or_default();
        let Some(http) = attrs.request.and_then(|r| r.http) else {
            return Err(Status::invalid_argument(
                "CheckRequest without an HTTP request",
            ));
        };
        let headers = collect_headers(&http);
        let ext = &attrs.context_extensions;
        if let Some(connection) = ext.get(CONNECTION_EXTENSION) {
            let answer = self.service.outbound(connection, &http.method).await;
            return match answer.outcome {
                Outcome::Decided(d) => Ok(Response::new(to_check_response(
                    &answer.decision_id,
                    &d,
                    &headers,
                ))),
                Outcome::Unavailable(why) => Err(Status::unavailable(format!(
                    "fhirguard cannot decide (decision {}): {why}",
                    answer.decision_id
                ))),
            };
        }
        let body_bytes: &[u8] = if !http.raw_body.is_empty() {
            &http.raw_body
        } else {
            http.body.as_bytes()
        };
        let content_length = headers
            .get("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        // A body cut at max_request_bytes must not be judged as whole. Envoy marks it with
        // x-envoy-auth-partial-body, but decides by comparing lengths: a buffer that happens to
        // fill exactly to the limit is sent marked "false" although more follows (seen with a
        // 1 MiB limit on about half of the larger uploads). So a body shorter than the
        // request's Content-Length counts as cut too. (Without Content-Length only the marker
        // is left, hence allow_partial_message: false in the shipped configs.)
        let partial = headers
            .get("x-envoy-auth-partial-body")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || content_length.is_some_and(|n| n != body_bytes.len());
        let body_sent = !body_bytes.is_empty() || content_length == Some(0);
        let body = (body_sent && !partial).then(|| Body {
            bytes: body_bytes,
            content_type: headers.get("content-type").map(String::as_str),
        });
        let host = if http.host.is_empty() {
            headers.get(":authority").map(String::as_str).unwrap_or("")
        } else {
            &http.host
        };
        let header_list: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let r = Request {
            method: &http.method,
            headers: &header_list,
            host,
            path: &http.path,
            authorization: headers.get("authorization").map(String::as_str),
            if_none_exist: headers.get("if-none-exist").map(String::as_str),
            body,
            policy_ref: ext.get(POLICY_EXTENSION).map(String::as_str),
        };
        let answer = self.service.check(&r).await;
        match answer.outcome {
            Outcome::Decided(d) => Ok(Response::new(to_check_response(
                &answer.decision_id,
                &d,
                &headers,
            ))),
            Outcome::Unavailable(why) => Err(Status::unavailable(format!(
                "fhirguard cannot decide (decision {}): {why}",
                answer.decision_id
            ))),
        }
    }
}
