//! The Envoy ext_authz v3 adapter: CheckRequest → [`Request`], [`Answer`] → CheckResponse.
//! The only module that names envoy-types. Headers and body are borrowed from the message.

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
    QueryParameter,
};
use envoy_types::pb::google::rpc;
use tonic::{Request as GrpcRequest, Response, Status};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;

use crate::core::answer;
use crate::core::driver::Outcome;
use crate::core::fhir::Body;
use crate::core::policy::{Decision, Request};
use crate::runtime::executor::{Answer, Executor};

/// Route context extension that names the policy.
pub const POLICY_EXTENSION: &str = "fhirguard.dev/policy";
/// Route context extension that names an outbound connection.
pub const CONNECTION_EXTENSION: &str = "fhirguard.dev/connection";

const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

pub struct EnvoyAuthz {
    executor: Arc<Executor>,
}

impl EnvoyAuthz {
    pub fn new(executor: Arc<Executor>) -> Self {
        EnvoyAuthz { executor }
    }

    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }
}

/// The request headers of a CheckRequest, with lower-cased names: from `headers`, or, when
/// Envoy runs with `encode_raw_headers: true`, from `header_map` (which then holds the values
/// as bytes). Borrowed from the message where it already has the right form.
pub struct Headers<'a> {
    list: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Headers<'a> {
    pub fn of(http: &'a HttpRequest) -> Self {
        let lower = |k: &'a str| -> Cow<'a, str> {
            if k.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(k.to_ascii_lowercase())
            } else {
                Cow::Borrowed(k)
            }
        };
        let mut list: Vec<(Cow<'a, str>, Cow<'a, str>)> = http
            .headers
            .iter()
            .map(|(k, v)| (lower(k), Cow::Borrowed(v.as_str())))
            .collect();
        if let Some(map) = &http.header_map {
            for h in &map.headers {
                let value = if h.raw_value.is_empty() {
                    Cow::Borrowed(h.value.as_str())
                } else {
                    String::from_utf8_lossy(&h.raw_value)
                };
                let key = lower(&h.key);
                // Repeated headers arrive as separate entries; join them the way HTTP does.
                match list.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => {
                        let joined = format!("{v},{value}");
                        *v = Cow::Owned(joined);
                    }
                    None => list.push((key, value)),
                }
            }
        }
        Headers { list }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.list
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|(k, _)| k.as_ref())
    }

    pub fn pairs(&self) -> Vec<(&str, &str)> {
        self.list
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect()
    }
}

fn header(key: &str, value: String, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value,
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
    incoming: &Headers<'_>,
) -> CheckResponse {
    match decision {
        Decision::Allow(a) => {
            let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd;
            let ans = answer::allowed(a, decision_id, incoming.names(), incoming.get("prefer"));
            CheckResponse {
                status: status(GRPC_OK, ""),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: ans
                        .set
                        .into_iter()
                        .map(|(k, v)| header(k, v, overwrite))
                        .collect(),
                    headers_to_remove: ans.remove.into_iter().map(str::to_string).collect(),
                    response_headers_to_add: ans
                        .response_set
                        .into_iter()
                        .map(|(k, v)| header(k, v, overwrite))
                        .collect(),
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
                .into_iter()
                .map(|(k, v)| {
                    let action = if k == "www-authenticate" {
                        HeaderAppendAction::AppendIfExistsOrAdd
                    } else {
                        HeaderAppendAction::OverwriteIfExistsOrAdd
                    };
                    header(&k, v, action)
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
        // Envoy sends a denied response to the client with the status it names, 200 included;
        // the gRPC status only has to be something other than OK.
        Decision::Respond(r) => {
            let ans = answer::responded(r, decision_id);
            let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd;
            CheckResponse {
                status: status(GRPC_PERMISSION_DENIED, r.reason.as_str()),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(r.status),
                    }),
                    headers: ans
                        .headers
                        .into_iter()
                        .map(|(k, v)| header(&k, v, overwrite))
                        .collect(),
                    body: ans.body,
                })),
                dynamic_metadata: None,
            }
        }
    }
}

fn respond(answer: Answer, headers: &Headers<'_>) -> Result<Response<CheckResponse>, Status> {
    match answer.outcome {
        Outcome::Decided(d) => Ok(Response::new(to_check_response(
            answer.decision_id.as_str(),
            &d,
            headers,
        ))),
        Outcome::Unavailable(why) => Err(Status::unavailable(format!(
            "fhirguard cannot decide (decision {}): {why}",
            answer.decision_id
        ))),
    }
}

/// The whole adapter: one CheckRequest in, Envoy's answer out (or UNAVAILABLE).
pub async fn check(
    executor: &Executor,
    req: &CheckRequest,
) -> Result<Response<CheckResponse>, Status> {
    let Some(attrs) = req.attributes.as_ref() else {
        return Err(Status::invalid_argument("CheckRequest without attributes"));
    };
    let Some(http) = attrs.request.as_ref().and_then(|r| r.http.as_ref()) else {
        return Err(Status::invalid_argument(
            "CheckRequest without an HTTP request",
        ));
    };
    let headers = Headers::of(http);
    let ext = &attrs.context_extensions;
    if let Some(connection) = ext.get(CONNECTION_EXTENSION) {
        let answer = executor.outbound(connection, &http.method).await;
        return respond(answer, &headers);
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
        content_type: headers.get("content-type"),
    });
    let host = if http.host.is_empty() {
        headers.get(":authority").unwrap_or("")
    } else {
        &http.host
    };
    let pairs = headers.pairs();
    let r = Request {
        method: &http.method,
        headers: &pairs,
        host,
        path: &http.path,
        authorization: headers.get("authorization"),
        if_none_exist: headers.get("if-none-exist"),
        body,
        policy_ref: ext.get(POLICY_EXTENSION).map(String::as_str),
    };
    let source = attrs
        .source
        .as_ref()
        .and_then(|p| p.address.as_ref())
        .and_then(|a| match &a.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                Some(s.address.as_str())
            }
            _ => None,
        });
    let answer = executor.check_from(&r, source).await;
    respond(answer, &headers)
}

#[tonic::async_trait]
impl Authorization for EnvoyAuthz {
    async fn check(
        &self,
        request: GrpcRequest<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        check(&self.executor, request.get_ref()).await
    }
}
