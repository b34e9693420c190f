//! The whole Check, run as a sans-IO state machine.
//!
//! A host (the gRPC service, the Envoy module) creates a [`Check`] from a plain request value
//! and loops: [`Check::next`] says either that the decision is made, or what slow work the
//! decision is waiting for — verify this password, verify this token, fetch these stored
//! resources, get this connection's OAuth token. The host does that work however it likes
//! (hashing slots, a key cache, an HTTP client, another thread) and hands the answer back;
//! the check resumes. The sequence itself — choose the policy, find the credentials, verify
//! them, authorize, look stored resources up, authorize again — exists only here, so that two
//! hosts cannot drift apart on a security sequence.
//!
//! ```text
//! Check::new ──► Password? ──► Token? ──► Introspect? ──► authorize ──► Lookups? ──► authorize ──► Done
//!                  ▲ host         ▲ host      ▲ host                        ▲ host (at most two rounds)
//! ```
//!
//! Which check a bearer token gets is decided here too ([`route_token`]): a JWT whose `iss`
//! names one of the policy's JWT providers is verified by that provider (and, with
//! `introspectJwts`, introspected afterwards for revocation); any other token goes to the
//! policy's introspection endpoint when it has one, and to the JWT verifier (which refuses
//! it) otherwise.

use crate::config::{CompiledConfig, ConnectionConfig};
use std::sync::Arc;

use crate::core::discovery;
use crate::core::policy::{
    self, Allow, AllowReason, Decision, Deny, DenyReason, Identity, OutboundAuth, Pending, Request,
    Step as PolicyStep, TokenIdentity,
};
use crate::core::smart::{LookupKey, Lookups, Stored};

/// At most this many stored resources are fetched for one request (a bundle needing more is
/// refused rather than fanned out).
pub const MAX_LOOKUPS_PER_REQUEST: usize = 50;

/// What the host must do before the check can continue.
#[derive(Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// Verify a Basic credential against the policy's htpasswd (slow: a password hash).
    Password {
        policy: usize,
        user: &'a str,
        password: &'a str,
    },
    /// Verify a bearer token for the policy (signature with the provider's keys, claims).
    Token { policy: usize, token: &'a str },
    /// Ask the policy's RFC 7662 introspection endpoint about a bearer token. `revocation`:
    /// the token is a JWT its provider has already verified, asked about only to learn that
    /// it has not been revoked.
    Introspect {
        policy: usize,
        token: &'a str,
        revocation: bool,
    },
    /// Fetch these stored resources through the policy's `compartmentLookup` connection.
    Lookups {
        policy: usize,
        keys: &'a [LookupKey],
    },
    /// Get the current OAuth token of an outbound connection.
    OAuthToken { connection: &'a str },
    /// The issuer's OpenID metadata for the policy's SMART discovery document (the last good
    /// fetch; `None` when the policy does not use OpenID discovery).
    SmartConfiguration { policy: usize },
}

/// How a check ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Decided(Decision),
    /// No decision can be made (keys unobtainable, a lookup failed, an internal fault): the
    /// host answers 503. Never an allow.
    Unavailable(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    Need(Need<'a>),
    Done(&'a Outcome),
}

/// Why a token was not accepted, as the host's verifier reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFailure {
    /// The token is not valid: 401 `invalid_token` with this reason and message.
    Invalid(DenyReason, String),
    /// The verifier could not decide (no keys could be obtained): UNAVAILABLE.
    Undecidable(String),
}

enum State {
    Password,
    Token,
    Introspect { revocation: bool },
    Authorize,
    Lookups(Vec<LookupKey>),
    OAuth(String),
    Discovery(usize),
    Done(Outcome),
}

/// One Check in progress.
pub struct Check<'c> {
    config: &'c CompiledConfig,
    pending: Option<Pending>,
    identity: Identity,
    lookups: Lookups,
    lookup_rounds: u8,
    state: State,
}

impl<'c> Check<'c> {
    /// Starts a check of an inbound request: policy, classification, credentials.
    pub fn new(config: &'c CompiledConfig, req: &Request<'_>) -> Self {
        let mut check = Check {
            config,
            pending: None,
            identity: Identity::default(),
            lookups: Lookups::new(),
            lookup_rounds: 0,
            state: State::Authorize,
        };
        if let Some(i) = discovery::discovery_request(&config.policies, req) {
            check.state = State::Discovery(i);
            return check;
        }
        match policy::prepare(&config.policies, req) {
            Err(d) => check.state = State::Done(Outcome::Decided(d)),
            Ok(p) => {
                check.state = if p.basic.is_some() {
                    State::Password
                } else if p.bearer.is_some() {
                    State::Token
                } else {
                    State::Authorize
                };
                check.pending = Some(p);
                check.require_scheme();
                check.advance();
            }
        }
        check
    }

    /// Starts a check of an outbound request through connection `namespace/name`: allowed
    /// with the connection's credential in `Authorization`, or refused.
    pub fn outbound(config: &'c CompiledConfig, connection: &str) -> Self {
        let mut check = Check {
            config,
            pending: None,
            identity: Identity::default(),
            lookups: Lookups::new(),
            lookup_rounds: 0,
            state: State::Authorize,
        };
        check.state = match config
            .connections
            .iter()
            .find(|c| format!("{}/{}", c.namespace, c.name) == connection)
        {
            None => State::Done(Outcome::Decided(Decision::Deny(Deny {
                policy: Some(connection.to_string()),
                status: 403,
                reason: DenyReason::UnknownConnection,
                www_authenticate: Vec::new(),
                diagnostics: format!(
                    "no FhirConnection {connection:?} is configured (or it is not Accepted); check its status"
                ),
            }))),
            Some(c) if c.auth.oauth.is_some() => State::OAuth(connection.to_string()),
            Some(c) => State::Done(outbound_allow(connection, fixed_auth(c))),
        };
        check
    }

    /// What the check is waiting for, or how it ended.
    pub fn next(&self) -> Next<'_> {
        let policy = self.pending.as_ref().map_or(0, |p| p.policy_index);
        match &self.state {
            State::Done(o) => Next::Done(o),
            State::Password => match self.pending.as_ref().and_then(|p| p.basic.as_ref()) {
                Some(b) => Next::Need(Need::Password {
                    policy,
                    user: &b.user,
                    password: &b.password,
                }),
                None => Next::Done(&UNREACHABLE),
            },
            State::Token => match self.pending.as_ref().and_then(|p| p.bearer.as_ref()) {
                Some(b) => Next::Need(Need::Token {
                    policy,
                    token: &b.token,
                }),
                None => Next::Done(&UNREACHABLE),
            },
            State::Introspect { revocation } => {
                match self.pending.as_ref().and_then(|p| p.bearer.as_ref()) {
                    Some(b) => Next::Need(Need::Introspect {
                        policy,
                        token: &b.token,
                        revocation: *revocation,
                    }),
                    None => Next::Done(&UNREACHABLE),
                }
            }
            State::Lookups(keys) => Next::Need(Need::Lookups { policy, keys }),
            State::OAuth(c) => Next::Need(Need::OAuthToken { connection: c }),
            State::Discovery(i) => Next::Need(Need::SmartConfiguration { policy: *i }),
            State::Authorize => Next::Done(&UNREACHABLE),
        }
    }

    /// The index of the policy the request is decided under, once one is chosen.
    pub fn policy_index(&self) -> Option<usize> {
        self.pending.as_ref().map(|p| p.policy_index)
    }

    /// The classified request, once the policy is chosen and the request understood.
    pub fn request(&self) -> Option<&crate::core::fhir::FhirRequest> {
        self.pending.as_ref().map(|p| &p.request)
    }

    /// The stored resources compartment lookups fetched for this check (what a decision by id
    /// rested on).
    pub fn lookups(&self) -> &crate::core::smart::Lookups {
        &self.lookups
    }

    /// Who the caller proved to be so far (empty before verification or after a failure).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The verified token, once there is one.
    pub fn token(&self) -> Option<&Arc<TokenIdentity>> {
        self.identity.token.as_ref()
    }

    /// The host could not do what was asked (a shut-down pool, a crashed worker): the check
    /// ends undecided, which the host answers with 503. Never an allow.
    pub fn undecidable(&mut self, why: String) {
        if !matches!(self.state, State::Done(_)) {
            self.state = State::Done(Outcome::Unavailable(why));
        }
    }

    /// The decision, once made.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    /// Ends the check; `None` while it still needs something.
    pub fn into_outcome(self) -> Option<Outcome> {
        match self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    /// The answer to [`Need::Password`].
    pub fn password_checked(&mut self, valid: bool) {
        if !matches!(self.state, State::Password) {
            return self.fault("a password answer arrived out of turn");
        }
        let Some(p) = &self.pending else {
            return self.fault("no pending request");
        };
        if !valid {
            let policy = &self.config.policies[p.policy_index];
            self.state = State::Done(Outcome::Decided(policy::unauthorized(
                policy,
                DenyReason::InvalidBasic,
                None,
                "invalid username or password",
            )));
            return;
        }
        self.identity.basic_user = p.basic.as_ref().map(|b| b.user.clone());
        self.state = if p.bearer.is_some() {
            State::Token
        } else {
            State::Authorize
        };
        self.require_scheme();
        self.advance();
    }

    /// The answer to [`Need::Token`].
    pub fn token_verified(&mut self, result: Result<Arc<TokenIdentity>, TokenFailure>) {
        if !matches!(self.state, State::Token) {
            return self.fault("a token answer arrived out of turn");
        }
        let Some(p) = &self.pending else {
            return self.fault("no pending request");
        };
        let policy = &self.config.policies[p.policy_index];
        match result {
            Ok(identity) => {
                self.identity.token = Some(identity);
                self.state = match &policy.authentication.introspection {
                    Some(i) if i.introspect_jwts => State::Introspect { revocation: true },
                    _ => State::Authorize,
                };
                self.advance();
            }
            Err(TokenFailure::Invalid(reason, message)) => {
                let policy = &self.config.policies[p.policy_index];
                self.state = State::Done(Outcome::Decided(policy::unauthorized(
                    policy,
                    reason,
                    Some("invalid_token"),
                    message,
                )));
            }
            Err(TokenFailure::Undecidable(why)) => {
                self.state = State::Done(Outcome::Unavailable(why));
            }
        }
    }

    /// The answer to [`Need::Introspect`]: the token's identity (the same as a verified JWT
    /// gives), or why it is refused, or that the endpoint could not be asked.
    pub fn token_introspected(&mut self, result: Result<Arc<TokenIdentity>, TokenFailure>) {
        let State::Introspect { revocation } = self.state else {
            return self.fault("an introspection answer arrived out of turn");
        };
        let Some(p) = &self.pending else {
            return self.fault("no pending request");
        };
        match result {
            Ok(identity) => {
                // For a verified JWT the introspection only says "not revoked"; the identity
                // stays the one its signed claims give.
                if !revocation {
                    self.identity.token = Some(identity);
                }
                self.state = State::Authorize;
                self.advance();
            }
            Err(TokenFailure::Invalid(reason, message)) => {
                // A refused token grants nothing, also not a JWT identity found before.
                self.identity.token = None;
                let policy = &self.config.policies[p.policy_index];
                self.state = State::Done(Outcome::Decided(policy::unauthorized(
                    policy,
                    reason,
                    Some("invalid_token"),
                    message,
                )));
            }
            Err(TokenFailure::Undecidable(why)) => {
                self.identity.token = None;
                self.state = State::Done(Outcome::Unavailable(why));
            }
        }
    }

    /// The answers to [`Need::Lookups`]; any failure makes the check undecidable.
    pub fn lookups_done(&mut self, answers: Vec<(LookupKey, Result<Stored, String>)>) {
        if !matches!(self.state, State::Lookups(_)) {
            return self.fault("lookup answers arrived out of turn");
        }
        for (key, answer) in answers {
            match answer {
                // The host's answer must be the resource asked for: a decision on another
                // resource (another type, id or version, from a confused or poisoned server
                // or cache) would be a decision about someone else's data.
                Ok(Stored::Found(res)) if !answers_key(&res, &key) => {
                    self.state = State::Done(Outcome::Unavailable(format!(
                        "compartment lookup of {} answered with another resource",
                        key.resource_type
                    )));
                    return;
                }
                Ok(stored) => {
                    self.lookups.insert(key, stored);
                }
                // Not knowing whose resource it is means not deciding: fail closed.
                Err(e) => {
                    self.state = State::Done(Outcome::Unavailable(format!(
                        "compartment lookup failed: {e}"
                    )));
                    return;
                }
            }
        }
        self.state = State::Authorize;
        self.advance();
    }

    /// The answer to [`Need::OAuthToken`].
    pub fn oauth_token(&mut self, token: Result<String, String>) {
        let State::OAuth(connection) = &self.state else {
            return self.fault("an OAuth token arrived out of turn");
        };
        let connection = connection.clone();
        self.state = State::Done(match token {
            Ok(t) => outbound_allow(&connection, OutboundAuth::Set(format!("Bearer {t}"))),
            // The workload must not mistake an outage for a permission problem: 503 with an
            // OperationOutcome, decided (Envoy would otherwise answer its own 503).
            Err(e) => Outcome::Decided(Decision::Deny(Deny {
                policy: Some(connection.clone()),
                status: 503,
                reason: DenyReason::TokenUnavailable,
                www_authenticate: Vec::new(),
                diagnostics: format!("no valid OAuth token for connection {connection}: {e}"),
            })),
        });
    }

    /// The answer to [`Need::SmartConfiguration`]: the issuer's metadata, or why there is
    /// none. The document is still served from the configured values when they suffice.
    pub fn smart_configuration(&mut self, openid: Result<Option<Arc<serde_json::Value>>, String>) {
        let State::Discovery(i) = self.state else {
            return self.fault("a discovery answer arrived out of turn");
        };
        let Some(p) = self.config.policies.get(i) else {
            return self.fault("no such policy");
        };
        let Some(sc) = &p.smart_configuration else {
            return self.fault("the policy has no smartConfiguration");
        };
        let (metadata, failure) = match &openid {
            Ok(m) => (m.as_deref(), None),
            Err(e) => (None, Some(e.as_str())),
        };
        self.state = State::Done(match discovery::document(sc, metadata) {
            Ok(doc) => Outcome::Decided(discovery::respond(p, &doc)),
            Err(e) => Outcome::Unavailable(match failure {
                Some(f) => format!("{e}: {f}"),
                None => e,
            }),
        });
    }

    /// A credential the policy has no verifier for is refused before anyone is asked to
    /// verify it.
    fn require_scheme(&mut self) {
        let Some(p) = &self.pending else { return };
        let policy = &self.config.policies[p.policy_index];
        let refusal = match self.state {
            State::Password if policy.authentication.basic.is_none() => {
                "this policy does not accept Basic credentials"
            }
            State::Token
                if policy.authentication.jwt.is_none()
                    && policy.authentication.introspection.is_none() =>
            {
                "this policy does not accept bearer tokens"
            }
            State::Token => {
                if let Some(b) = &p.bearer
                    && route_token(policy, &b.token) == TokenRoute::Introspect
                {
                    self.state = State::Introspect { revocation: false };
                }
                return;
            }
            _ => return,
        };
        self.state = State::Done(Outcome::Decided(policy::unauthorized(
            policy,
            DenyReason::UnsupportedScheme,
            None,
            refusal,
        )));
    }

    fn fault(&mut self, why: &str) {
        self.state = State::Done(Outcome::Unavailable(format!("internal fault: {why}")));
    }

    /// Runs the pure steps until the check needs the host or is done.
    fn advance(&mut self) {
        if !matches!(self.state, State::Authorize) {
            return;
        }
        let Some(pending) = &self.pending else {
            return self.fault("no pending request");
        };
        let policy = &self.config.policies[pending.policy_index];
        match policy::authorize(policy, pending, &self.identity, Some(&self.lookups)) {
            PolicyStep::Done(d) => self.state = State::Done(Outcome::Decided(d)),
            PolicyStep::Lookup(keys) => {
                // The first round names every lookup the request needs; a second one can only
                // come from answers that changed the question.
                self.lookup_rounds += 1;
                if self.lookup_rounds > 2 {
                    self.state = State::Done(Outcome::Unavailable(
                        "compartment lookups did not settle the decision".into(),
                    ));
                } else if policy.authorization.smart.compartment_lookup.is_none() {
                    self.state = State::Done(Outcome::Unavailable(
                        "a compartment lookup is needed but none is configured".into(),
                    ));
                } else if keys.len() > MAX_LOOKUPS_PER_REQUEST {
                    self.state = State::Done(Outcome::Decided(Decision::Deny(Deny {
                        policy: Some(format!("{}/{}", policy.namespace, policy.name)),
                        status: 403,
                        reason: DenyReason::InsufficientScope,
                        www_authenticate: vec![],
                        diagnostics: format!(
                            "the request needs {} compartment lookups; at most {MAX_LOOKUPS_PER_REQUEST} are made for one request",
                            keys.len()
                        ),
                    })));
                } else {
                    self.state = State::Lookups(keys);
                }
            }
        }
    }
}

/// Which check a bearer token gets under a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRoute {
    /// Verified by the JWT provider its `iss` names (or refused by the JWT verifier).
    Jwt,
    /// Sent to the policy's introspection endpoint.
    Introspect,
}

/// The routing rule, in one place: a JWT whose unverified `iss` equals the issuer of one of
/// the policy's JWT providers goes to that provider; everything else (an opaque token, a JWT
/// of any other issuer, something that does not parse) goes to introspection when the policy
/// has it. Reading `iss` unverified is safe here: it only chooses who checks the token, and
/// a token routed to a provider must still carry that provider's signature.
/// Whether a stored resource is the one `key` names (type, id, and version when one was asked).
fn answers_key(res: &serde_json::Value, key: &LookupKey) -> bool {
    res.get("resourceType").and_then(serde_json::Value::as_str) == Some(key.resource_type.as_str())
        && res.get("id").and_then(serde_json::Value::as_str) == Some(key.id.as_str())
        && key.version.as_deref().is_none_or(|v| {
            res.pointer("/meta/versionId")
                .and_then(serde_json::Value::as_str)
                == Some(v)
        })
}

pub fn route_token(policy: &crate::config::PolicyConfig, token: &str) -> TokenRoute {
    if policy.authentication.introspection.is_none() {
        return TokenRoute::Jwt;
    }
    let Some(jwt) = &policy.authentication.jwt else {
        return TokenRoute::Introspect;
    };
    match unverified_issuer(token) {
        Some(iss) if jwt.providers.iter().any(|p| p.issuer == iss) => TokenRoute::Jwt,
        _ => TokenRoute::Introspect,
    }
}

/// The `iss` of something shaped like a JWS compact serialization, unverified.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    if parts.next().is_some() || payload.len() > 16 * 1024 {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    // Strict parsing: a payload with two `iss` members means different things to different
    // parsers and is routed nowhere in particular (the JWT verifier refuses it anyway).
    let claims = crate::core::json::parse_strict(&raw).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// A placeholder the state machine never returns in practice (every non-final state has a
/// need); kept as a value so that `next` cannot panic.
static UNREACHABLE: Outcome = Outcome::Unavailable(String::new());

fn fixed_auth(c: &ConnectionConfig) -> OutboundAuth {
    match &c.auth.basic {
        Some(b) => OutboundAuth::Set(basic_header(&b.username, &b.password)),
        None => OutboundAuth::Remove,
    }
}

/// `Basic base64(user:password)`.
pub fn basic_header(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn outbound_allow(connection: &str, auth: OutboundAuth) -> Outcome {
    Outcome::Decided(Decision::Allow(Allow {
        policy: connection.to_string(),
        reason: AllowReason::Outbound,
        subject: None,
        patient: None,
        scopes: None,
        remove_query: Vec::new(),
        set_query: Vec::new(),
        strict_search: false,
        interaction: None,
        outbound: Some(auth),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;
    use crate::core::smart::parse_scopes;

    fn config() -> CompiledConfig {
        let policy = |name: &str, lookup: bool| PolicyConfig {
            audit: None,
            smart_configuration: None,
            namespace: "ns".into(),
            name: name.into(),
            hosts: vec![format!("{name}.example")],
            base_path: "/fhir".into(),
            public_paths: default_public_paths(),
            unauthenticated_access: false,
            authentication: AuthenticationConfig {
                introspection: None,
                combine: Combine::AnyOf,
                basic: Some(BasicConfig {
                    htpasswd: String::new(),
                    access: vec![],
                }),
                jwt: Some(JwtConfig {
                    token_sources: vec![TokenSource::Header],
                    require_subject_matches_basic_user: false,
                    providers: vec![],
                }),
            },
            authorization: AuthorizationConfig {
                smart: SmartConfig {
                    compartment_lookup: lookup.then(|| CompartmentLookup {
                        connection: "ns/ehr".into(),
                    }),
                    ..SmartConfig::default()
                },
            },
        };
        CompiledConfig {
            version: FORMAT_VERSION,
            generation: 1,
            policies: vec![policy("ehr", true), policy("nolookup", false)],
            connections: vec![ConnectionConfig {
                namespace: "ns".into(),
                name: "basic".into(),
                url: "https://partner.example/fhir".into(),
                auth: ConnectionAuth {
                    basic: Some(BasicCredentials {
                        username: "u".into(),
                        password: "p".into(),
                    }),
                    oauth: None,
                },
                tls: TlsConfig::default(),
            }],
        }
    }

    fn request<'a>(host: &'a str, path: &'a str, auth: Option<&'a str>) -> Request<'a> {
        Request {
            method: "GET",
            host,
            path,
            authorization: auth,
            if_none_exist: None,
            headers: &[],
            body: None,
            policy_ref: None,
        }
    }

    fn token(scopes: &str, patient: Option<&str>) -> TokenIdentity {
        TokenIdentity {
            client_id: None,
            provider: "idp".into(),
            subject: "app".into(),
            scopes: parse_scopes(scopes.split(' ')),
            scope_text: scopes.into(),
            patient: patient.map(str::to_string),
            fhir_user: None,
        }
    }

    fn basic(user: &str) -> String {
        basic_header(user, "pw")
    }

    #[test]
    fn a_refusal_before_verification_needs_nothing() {
        let c = config();
        let check = Check::new(&c, &request("ehr.example", "/fhir/Patient/1", None));
        let Some(Outcome::Decided(Decision::Deny(d))) = check.outcome() else {
            panic!()
        };
        assert_eq!(d.status, 401);
    }

    #[test]
    fn basic_is_verified_then_authorized() {
        let c = config();
        let auth = basic("alice");
        let mut check = Check::new(&c, &request("ehr.example", "/fhir/Patient/1", Some(&auth)));
        assert_eq!(
            check.next(),
            Next::Need(Need::Password {
                policy: 0,
                user: "alice",
                password: "pw"
            })
        );
        check.password_checked(true);
        assert!(matches!(
            check.outcome(),
            Some(Outcome::Decided(Decision::Allow(_)))
        ));
        let mut check = Check::new(&c, &request("ehr.example", "/fhir/Patient/1", Some(&auth)));
        check.password_checked(false);
        let Some(Outcome::Decided(Decision::Deny(d))) = check.outcome() else {
            panic!()
        };
        assert_eq!((d.status, d.reason), (401, DenyReason::InvalidBasic));
    }

    #[test]
    fn a_token_check_can_need_lookups_then_decide() {
        let c = config();
        let mut check = Check::new(
            &c,
            &request("ehr.example", "/fhir/Observation/o1", Some("Bearer t")),
        );
        assert_eq!(
            check.next(),
            Next::Need(Need::Token {
                policy: 0,
                token: "t"
            })
        );
        check.token_verified(Ok(Arc::new(token("patient/Observation.rs", Some("p1")))));
        let Next::Need(Need::Lookups { keys, .. }) = check.next() else {
            panic!("{:?}", check.next())
        };
        assert_eq!(keys, &[LookupKey::current("Observation", "o1")]);
        let stored = serde_json::json!({"resourceType": "Observation", "id": "o1",
            "subject": {"reference": "Patient/p1"}});
        check.lookups_done(vec![(
            LookupKey::current("Observation", "o1"),
            Ok(Stored::Found(std::sync::Arc::new(stored))),
        )]);
        assert!(matches!(
            check.outcome(),
            Some(Outcome::Decided(Decision::Allow(_)))
        ));
    }

    #[test]
    fn failures_of_the_host_never_allow() {
        let c = config();
        // Keys unobtainable.
        let mut check = Check::new(
            &c,
            &request("ehr.example", "/fhir/Observation/o1", Some("Bearer t")),
        );
        check.token_verified(Err(TokenFailure::Undecidable("no keys".into())));
        assert_eq!(
            check.outcome(),
            Some(&Outcome::Unavailable("no keys".into()))
        );
        // A failed lookup.
        let mut check = Check::new(
            &c,
            &request("ehr.example", "/fhir/Observation/o1", Some("Bearer t")),
        );
        check.token_verified(Ok(Arc::new(token("patient/Observation.rs", Some("p1")))));
        check.lookups_done(vec![(
            LookupKey::current("Observation", "o1"),
            Err("HTTP 500".into()),
        )]);
        assert!(matches!(check.outcome(), Some(Outcome::Unavailable(_))));
        // Answers out of turn.
        let mut check = Check::new(
            &c,
            &request("ehr.example", "/fhir/Patient/1", Some("Bearer t")),
        );
        check.password_checked(true);
        assert!(matches!(check.outcome(), Some(Outcome::Unavailable(_))));
        // An invalid token.
        let mut check = Check::new(
            &c,
            &request("ehr.example", "/fhir/Patient/1", Some("Bearer t")),
        );
        check.token_verified(Err(TokenFailure::Invalid(
            DenyReason::ExpiredToken,
            "expired".into(),
        )));
        let Some(Outcome::Decided(Decision::Deny(d))) = check.outcome() else {
            panic!()
        };
        assert_eq!((d.status, d.reason), (401, DenyReason::ExpiredToken));
    }

    #[test]
    fn without_a_lookup_connection_patient_reads_are_refused_not_looked_up() {
        let c = config();
        let mut check = Check::new(
            &c,
            &request("nolookup.example", "/fhir/Observation/o1", Some("Bearer t")),
        );
        check.token_verified(Ok(Arc::new(token("patient/Observation.rs", Some("p1")))));
        let Some(Outcome::Decided(Decision::Deny(d))) = check.outcome() else {
            panic!("{:?}", check.outcome())
        };
        assert_eq!(d.status, 403);
    }

    fn with_introspection(introspect_jwts: bool) -> CompiledConfig {
        let mut c = config();
        let auth = &mut c.policies[0].authentication;
        if let Some(j) = auth.jwt.as_mut() {
            j.providers = vec![ProviderConfig {
                name: "idp".into(),
                issuer: "https://idp.example".into(),
                audiences: vec!["aud".into()],
                algorithms: vec![Algorithm::ES256],
                clock_skew_seconds: 60,
                jwks: JwksConfig {
                    uri: None,
                    refresh_interval_seconds: 600,
                    tls: TlsConfig::default(),
                    document: Some("{}".into()),
                },
                claims: ClaimNames::default(),
            }];
        }
        auth.introspection = Some(IntrospectionConfig {
            endpoint: "https://as.example/introspect".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
            client_auth_method: ClientAuthMethod::ClientSecretBasic,
            audiences: vec!["aud".into()],
            max_cache_seconds: 300,
            introspect_jwts,
            clock_skew_seconds: 60,
            tls: TlsConfig::default(),
        });
        c
    }

    fn jwt_of(iss: &str) -> String {
        use base64::Engine as _;
        let enc = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.sig",
            enc(serde_json::json!({"alg": "ES256"})),
            enc(serde_json::json!({"iss": iss}))
        )
    }

    fn first_need(c: &CompiledConfig, token: &str) -> String {
        let auth = format!("Bearer {token}");
        let check = Check::new(c, &request("ehr.example", "/fhir/Patient/1", Some(&auth)));
        match check.next() {
            Next::Need(Need::Token { .. }) => "jwt".into(),
            Next::Need(Need::Introspect { revocation, .. }) => format!("introspect {revocation}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn tokens_are_routed_by_issuer_then_to_introspection() {
        let c = with_introspection(false);
        let dup = {
            use base64::Engine as _;
            let p = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"iss":"https://idp.example","iss":"https://x"}"#);
            format!("e30.{p}.sig")
        };
        for (token, want) in [
            (jwt_of("https://idp.example"), "jwt"),
            (jwt_of("https://other.example"), "introspect false"),
            (jwt_of("https://idp.example/"), "introspect false"),
            ("opaque-abc".to_string(), "introspect false"),
            ("a.b".to_string(), "introspect false"),
            (
                format!("{}.extra", jwt_of("https://idp.example")),
                "introspect false",
            ),
            (dup, "introspect false"),
        ] {
            assert_eq!(first_need(&c, &token), want, "{token}");
        }
        // Without introspection every token goes to the JWT verifier (which refuses it).
        assert_eq!(first_need(&config(), "opaque-abc"), "jwt");
        // With introspection alone, every token is introspected.
        let mut only = with_introspection(false);
        only.policies[0].authentication.jwt = None;
        assert_eq!(
            first_need(&only, &jwt_of("https://idp.example")),
            "introspect false"
        );
    }

    #[test]
    fn introspection_answers_drive_the_check() {
        let c = with_introspection(false);
        let auth = "Bearer opaque";
        let path = "/fhir/Observation?patient=p1";
        let mut check = Check::new(&c, &request("ehr.example", path, Some(auth)));
        check.token_introspected(Ok(Arc::new(token("patient/Observation.rs", Some("p1")))));
        assert!(matches!(
            check.outcome(),
            Some(Outcome::Decided(Decision::Allow(_)))
        ));
        let mut check = Check::new(&c, &request("ehr.example", path, Some(auth)));
        check.token_introspected(Err(TokenFailure::Invalid(
            DenyReason::InactiveToken,
            "not active".into(),
        )));
        let Some(Outcome::Decided(Decision::Deny(d))) = check.outcome() else {
            panic!()
        };
        assert_eq!((d.status, d.reason), (401, DenyReason::InactiveToken));
        let mut check = Check::new(&c, &request("ehr.example", path, Some(auth)));
        check.token_introspected(Err(TokenFailure::Undecidable("down".into())));
        assert_eq!(check.outcome(), Some(&Outcome::Unavailable("down".into())));
        // An answer out of turn is a fault, never an allow.
        let mut check = Check::new(&c, &request("ehr.example", path, Some(auth)));
        check.token_verified(Ok(Arc::new(token("patient/Observation.rs", Some("p1")))));
        assert!(matches!(check.outcome(), Some(Outcome::Unavailable(_))));
    }

    #[test]
    fn with_introspect_jwts_a_verified_jwt_is_also_introspected() {
        let c = with_introspection(true);
        let auth = format!("Bearer {}", jwt_of("https://idp.example"));
        let path = "/fhir/Observation?patient=p1";
        let mut check = Check::new(&c, &request("ehr.example", path, Some(&auth)));
        assert!(matches!(check.next(), Next::Need(Need::Token { .. })));
        check.token_verified(Ok(Arc::new(token("patient/Observation.rs", Some("p1")))));
        assert!(matches!(
            check.next(),
            Next::Need(Need::Introspect {
                revocation: true,
                ..
            })
        ));
        // Revoked: refused, and the JWT's identity is gone.
        check.token_introspected(Err(TokenFailure::Invalid(
            DenyReason::InactiveToken,
            "not active".into(),
        )));
        assert!(check.token().is_none());
        assert!(matches!(
            check.outcome(),
            Some(Outcome::Decided(Decision::Deny(_)))
        ));
        // Active: the identity stays the JWT's, whatever the endpoint says about claims.
        let mut check = Check::new(&c, &request("ehr.example", path, Some(&auth)));
        check.token_verified(Ok(Arc::new(token("patient/Observation.rs", Some("p1")))));
        check.token_introspected(Ok(Arc::new(token("", None))));
        let Some(Outcome::Decided(Decision::Allow(a))) = check.outcome() else {
            panic!("{:?}", check.outcome())
        };
        assert_eq!(a.patient.as_deref(), Some("p1"));
    }

    #[test]
    fn outbound_connections() {
        let c = config();
        let check = Check::outbound(&c, "ns/basic");
        let Some(Outcome::Decided(Decision::Allow(a))) = check.outcome() else {
            panic!()
        };
        assert_eq!(a.outbound, Some(OutboundAuth::Set(basic_header("u", "p"))));
        let check = Check::outbound(&c, "ns/missing");
        let Some(Outcome::Decided(Decision::Deny(d))) = check.outcome() else {
            panic!()
        };
        assert_eq!(d.reason, DenyReason::UnknownConnection);
    }
}
