//! IHE Basic Audit Log Patterns (BALP 1.1.3) AuditEvents for fhirguard's decisions (pure).
//!
//! One decision, one FHIR R4 `AuditEvent` shaped after BALP's RESTful profiles: the
//! interaction as `subtype` with the matching `action`, `outcome` 0 (allowed), 4 (refused:
//! a minor failure, with the refusing rule in `outcomeDesc`) or 8 (no decision could be made,
//! so the request was refused with 503: a serious failure), the client as the DICOM
//! "Source Role ID" agent, the protected server as the "Destination Role ID" agent, the user
//! (token `sub`/`fhirUser`, or the Basic user) as the requesting agent, fhirguard and the
//! policy as `source`, and entities for the resource, the patient, the query (searches only,
//! base64 as BALP asks) and the decision id (BALP's X-Request-Id entity). Successful
//! events claim the BALP profile they follow in `meta.profile`; refusals follow the same
//! pattern without claiming a success profile.
//!
//! An allowed batch or transaction also gets one event per entry (the entry's own
//! interaction, resource and patient, under the same decision id): the bundle's event alone
//! would not say whose records were read or written. A refused bundle is one event; none of
//! its entries ran.
//!
//! The host ships these; patient ids appear here and nowhere in the ordinary logs.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::config::{AuditRecord, PolicyConfig};
use crate::core::compartment;
use crate::core::definitions;
use crate::core::driver::Outcome;
use crate::core::fhir::{FhirRequest, Interaction};
use crate::core::policy::{AllowReason, Decision, Identity};
use crate::core::smart::{Lookups, Stored};

pub const PROFILE_BASE: &str =
    "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";
const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ROLE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";

/// Everything an AuditEvent is made of.
#[derive(Debug, Clone, Copy)]
pub struct AuditFacts<'a> {
    pub policy: &'a PolicyConfig,
    pub method: &'a str,
    /// `:authority`.
    pub host: &'a str,
    /// `:path` with its query, as received.
    pub path: &'a str,
    /// The client's address as Envoy saw it.
    pub source_address: Option<&'a str>,
    /// The classified request (absent when it was refused before classification).
    pub request: Option<&'a FhirRequest>,
    pub identity: &'a Identity,
    /// What compartment lookups fetched for the decision (empty when none were needed).
    pub lookups: &'a Lookups,
    pub outcome: &'a Outcome,
    pub decision_id: &'a str,
    /// When the decision was made, in milliseconds since the Unix epoch.
    pub recorded_unix_ms: u64,
    /// This fhirguard instance (pod name), for `source.observer`.
    pub observer: &'a str,
}

/// How BALP names one interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// `http://hl7.org/fhir/restful-interaction` code.
    pub subtype: &'static str,
    /// AuditEvent.action: C, R, U, D or E.
    pub action: &'static str,
    /// The BALP profile (without and with a patient) when one exists for the interaction.
    pub profile: Option<(&'static str, &'static str)>,
    pub writes: bool,
}

pub fn kind(i: Interaction) -> Kind {
    let k = |subtype, action, profile, writes| Kind {
        subtype,
        action,
        profile,
        writes,
    };
    match i {
        Interaction::Read => k("read", "R", Some(("Read", "PatientRead")), false),
        Interaction::VRead => k("vread", "R", Some(("Read", "PatientRead")), false),
        Interaction::HistoryInstance => k("history-instance", "R", None, false),
        Interaction::HistoryType => k("history-type", "R", None, false),
        Interaction::HistorySystem => k("history-system", "R", None, false),
        Interaction::SearchType | Interaction::SearchSystem | Interaction::SearchCompartment => {
            k("search", "E", Some(("Query", "PatientQuery")), false)
        }
        Interaction::Create | Interaction::ConditionalCreate => {
            k("create", "C", Some(("Create", "PatientCreate")), true)
        }
        Interaction::Update | Interaction::ConditionalUpdate => {
            k("update", "U", Some(("Update", "PatientUpdate")), true)
        }
        Interaction::Patch | Interaction::ConditionalPatch => k("patch", "U", None, true),
        Interaction::Delete | Interaction::ConditionalDelete => {
            k("delete", "D", Some(("Delete", "PatientDelete")), true)
        }
        Interaction::Capabilities => k("capabilities", "R", None, false),
        Interaction::Batch | Interaction::BundleUninspected => k("batch", "E", None, true),
        Interaction::Transaction => k("transaction", "E", None, true),
        Interaction::OperationSystem
        | Interaction::OperationType
        | Interaction::OperationInstance => k("operation", "E", None, true),
    }
}

fn conditional(i: Interaction) -> bool {
    matches!(
        i,
        Interaction::ConditionalCreate
            | Interaction::ConditionalUpdate
            | Interaction::ConditionalPatch
            | Interaction::ConditionalDelete
    )
}

/// Whether the policy's `audit.record` asks for this outcome. A check that could not be
/// decided was refused (503) and counts as a refusal.
pub fn wanted(record: AuditRecord, outcome: &Outcome, request: Option<&FhirRequest>) -> bool {
    let decision = match outcome {
        Outcome::Unavailable(_) => return true,
        Outcome::Decided(d) => d,
    };
    match (record, decision) {
        (_, Decision::Deny(_)) => true,
        (AuditRecord::All, _) => true,
        (AuditRecord::Refusals, _) => false,
        (AuditRecord::PatientDataAndRefusals, Decision::Respond(_)) => false,
        (AuditRecord::PatientDataAndRefusals, Decision::Allow(a)) => {
            if a.reason == AllowReason::PublicPath || a.reason == AllowReason::Outbound {
                return false;
            }
            a.patient.is_some() || request.is_some_and(touches_patient_data)
        }
    }
}

/// Resources of the Patient compartment, or an interaction whose types cannot be known
/// beforehand (system-level searches and history, bundles, operations).
fn touches_patient_data(r: &FhirRequest) -> bool {
    if r.interaction == Interaction::Capabilities {
        return false;
    }
    match &r.resource_type {
        Some(t) => t == "Patient" || definitions::compartment_params(t).is_some(),
        None => true,
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

/// An allowed request naming at most this many patients gets an event per patient; a
/// refusal, or a request naming more, gets one event listing them.
pub const MAX_PATIENT_EVENTS: usize = 32;
/// At most this many patients listed in one event; more are counted in the event.
pub const MAX_LISTED_PATIENTS: usize = 256;
/// At most this many events for one request, its Bundle entries included.
pub const MAX_EVENTS_PER_REQUEST: usize = 64;
/// Bounds on what a client's request can put into an event: the query (plain and base64)
/// and conditional criteria, and any other text taken from the request.
pub const MAX_QUERY_TEXT: usize = 4096;
const MAX_TEXT: usize = 1024;

/// The patients the event is about, as references (`Patient/<id>` on this server, or the
/// absolute URL of a Patient elsewhere): those the request itself names (the compartment, the
/// Patient read or written, patient-linking search parameters in every spelling that means
/// "this patient", the patients a written resource links to, the pin a narrowed search was
/// given). Only when the request names none, and the allow rests on patient-context scopes
/// alone (so the decision proved the access stays in that patient's compartment), the token's
/// context patient. Never the context patient for a refusal or a user-level grant: that would
/// name the wrong person whenever a request reached for someone else.
pub fn patients_of(f: &AuditFacts<'_>) -> Vec<String> {
    let mut names = Names {
        resource_type: f.request.and_then(|r| r.resource_type.as_deref()),
        host: f.host,
        base: f.policy.base_path.trim_end_matches('/'),
        out: Vec::new(),
    };
    let allow = match f.outcome {
        Outcome::Decided(Decision::Allow(a)) => Some(a),
        _ => None,
    };
    if let Some(r) = f.request {
        names.request(r);
        if let Some(a) = allow {
            for (k, v) in &a.set_query {
                names.param(k, v);
            }
        } else {
            // A refused Bundle is one event: it names whom its entries reached for (an
            // allowed one gets an event per entry instead).
            for e in &r.entries {
                names.resource_type = e.resource_type.as_deref();
                names.request(e);
            }
            names.resource_type = r.resource_type.as_deref();
        }
        // A read, write or delete by id decided on the stored resource: its compartments are
        // whose data it is (for a refusal too: the patient reached for), as well as whoever a
        // written body names. Bundles' lookups belong to several entries, so they are not
        // spread over each.
        if r.entries.is_empty() {
            for stored in f.lookups.values() {
                if let Stored::Found(res) = stored {
                    for p in compartment::patients_of(res) {
                        names.id(&p);
                    }
                }
            }
        }
    }
    if names.out.is_empty()
        && let Some(a) = allow
        && let Some(p) = &a.patient
        && let Some(t) = &f.identity.token
        && !t.scopes.scopes.is_empty()
        && t.scopes
            .scopes
            .iter()
            .all(|s| s.context == crate::core::smart::Context::Patient)
        && f.request.is_some_and(touches_patient_data)
    {
        names.id(p);
    }
    names.out
}

/// Collects the patients a request names.
struct Names<'a> {
    resource_type: Option<&'a str>,
    /// `:authority` and the policy's basePath: an absolute reference to this server's own
    /// Patient is that Patient.
    host: &'a str,
    base: &'a str,
    out: Vec<String>,
}

impl Names<'_> {
    fn push(&mut self, reference: String) {
        if !self.out.contains(&reference) {
            self.out.push(reference);
        }
    }

    fn id(&mut self, id: &str) {
        if compartment::is_id(id) {
            self.push(format!("Patient/{id}"));
        }
    }

    fn request(&mut self, r: &FhirRequest) {
        if let Some((t, id)) = &r.compartment
            && t == "Patient"
        {
            self.id(id);
        }
        if r.resource_type.as_deref() == Some("Patient")
            && let Some(id) = &r.id
        {
            self.id(id);
        }
        for (k, v) in &r.params {
            self.param(k, v);
        }
        if let Some(res) = &r.resource {
            for p in compartment::patients_of(res) {
                self.id(&p);
            }
        }
    }

    /// The patients one search parameter names. Only the spellings that mean "resources of
    /// this patient" count: no modifier, or the type modifier `:Patient`, and the `._id` chain
    /// (`subject:Patient._id=x` is `subject:Patient=x`). Every other modifier changes what the
    /// value means (`:not` is everyone else, `:missing` a boolean, `:identifier` and `:text`
    /// no id at all), so it names nobody; the query entity still says what was asked.
    fn param(&mut self, key: &str, value: &str) {
        let (head, chain) = match key.split_once('.') {
            Some((h, c)) => (h, Some(c)),
            None => (key, None),
        };
        let (code, modifier) = match head.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (head, None),
        };
        if !matches!(modifier, None | Some("Patient")) || !matches!(chain, None | Some("_id")) {
            return;
        }
        let by_id = self.resource_type == Some("Patient") && code == "_id" && chain.is_none();
        if code.starts_with('_') && !by_id {
            return;
        }
        let only_patient = modifier == Some("Patient")
            || match self.resource_type {
                Some(t) => compartment::bare_id_means_patient(t, code),
                None => code == "patient",
            };
        for part in value.split(',') {
            if chain.is_some() {
                // `<param>._id=x`: an id of whatever the parameter targets.
                if only_patient {
                    self.id(part);
                }
            } else if let Some(id) = compartment::patient_id_of_reference(part) {
                self.id(id);
            } else if let Some(reference) = self.absolute(part) {
                self.push(reference);
            } else if by_id || only_patient {
                self.id(part);
            }
        }
    }

    /// An absolute reference to a Patient: this server's (under its basePath) as
    /// `Patient/<id>`, another server's as its URL (without a version).
    fn absolute(&self, value: &str) -> Option<String> {
        let (scheme, rest) = value.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
            return None;
        }
        // What a server resolving the reference would read: no query or fragment, dot
        // segments resolved. Naming a patient the request may reach is the safe side.
        let rest = rest.split(['?', '#']).next().unwrap_or(rest);
        let (authority, path) = rest.split_once('/')?;
        // Userinfo names no server: `https://x@ehr.test/...` is ehr.test.
        let host = authority.rsplit('@').next().unwrap_or(authority);
        let mut segments: Vec<&str> = Vec::new();
        for seg in path.split('/') {
            match seg {
                "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        let path = format!("/{}", segments.join("/"));
        if crate::config::host_name(host).eq_ignore_ascii_case(crate::config::host_name(self.host))
            && let Some(relative) = path
                .strip_prefix(self.base)
                .and_then(|p| p.strip_prefix('/'))
        {
            return compartment::patient_id_of_reference(relative)
                .map(|id| format!("Patient/{id}"));
        }
        // Another server's Patient: the path must end in `Patient/<id>` (or its
        // `/_history/<v>`), not merely pass through a Patient.
        let (server_path, tail) = path.rsplit_once("/Patient/")?;
        let mut parts = tail.split('/');
        let id = parts.next()?;
        let rest: Vec<&str> = parts.collect();
        let versioned = matches!(rest.as_slice(), [] | ["_history", _]);
        let server = format!("{}://{}{server_path}", scheme.to_ascii_lowercase(), host);
        (versioned && compartment::is_id(id))
            .then(|| format!("{}/Patient/{id}", clip(&server, 256)))
    }
}

/// `s`, at most `max` bytes of it (cut at a character boundary), saying how long it was.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[truncated: {} bytes]", &s[..end], s.len())
}

/// The request line with every `access_token` parameter removed (a token must never be
/// recorded), plus the parameters of a POSTed search, which travel in the body.
fn raw_query_text(f: &AuditFacts<'_>) -> String {
    let (path, query) = match f.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (f.path, None),
    };
    let mut out = format!("{} {path}", f.method);
    if let Some(q) = query {
        let kept: Vec<&str> = q
            .split('&')
            .filter(|piece| {
                let name = piece.split('=').next().unwrap_or("");
                let decoded: String = form_urlencoded::parse(name.as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .collect();
                !decoded.eq_ignore_ascii_case("access_token")
            })
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    if f.method == "POST"
        && let Some(r) = f.request
        && !r.params.is_empty()
    {
        out.push('\n');
        out.push_str(&params_text(&r.params));
    }
    out
}

fn user_agent(f: &AuditFacts<'_>, writes: bool) -> Option<Value> {
    let role = if writes {
        coding(PARTICIPATION, "AUT", "author (originator)")
    } else {
        coding(PARTICIPATION, "IRCP", "information recipient")
    };
    if let Some(t) = &f.identity.token {
        let mut codings = vec![role];
        let mut who = json!({"identifier": {"value": clip(&t.subject, MAX_TEXT)}});
        if let Some(u) = &t.fhir_user {
            // fhirUser may be absolute; a relative `Type/id` is a reference as it stands.
            who["reference"] = json!(clip(u, MAX_TEXT));
            if u.starts_with("Patient/") || u.contains("/Patient/") {
                codings.push(coding(ROLE_CLASS, "PAT", "patient"));
            }
        }
        return Some(json!({
            "type": {"coding": codings},
            "who": who,
            "requestor": true,
        }));
    }
    f.identity.basic_user.as_ref().map(|u| {
        json!({
            "type": {"coding": [role]},
            "who": {"identifier": {"value": clip(u, MAX_TEXT)}},
            "requestor": true,
        })
    })
}

/// The AuditEvent for one decision about one patient (or none).
pub fn audit_event(f: &AuditFacts<'_>, patients: &[String]) -> Value {
    let k = f.request.map(|r| kind(r.interaction)).unwrap_or(Kind {
        // Refused before it could be classified (malformed, no credentials on an unknown
        // path): recorded by method.
        subtype: match f.method {
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "read",
        },
        action: match f.method {
            "POST" => "C",
            "PUT" | "PATCH" => "U",
            "DELETE" => "D",
            _ => "R",
        },
        profile: None,
        writes: !matches!(f.method, "GET" | "HEAD"),
    });
    let (outcome, outcome_desc) = match f.outcome {
        Outcome::Decided(Decision::Deny(d)) => (
            "4",
            Some(format!(
                "HTTP {}: {}",
                d.status,
                clip(&d.diagnostics, MAX_TEXT)
            )),
        ),
        Outcome::Decided(_) => ("0", None),
        Outcome::Unavailable(why) => (
            "8",
            Some(format!(
                "HTTP 503: no decision could be made: {}",
                clip(why, MAX_TEXT)
            )),
        ),
    };
    let policy_id = format!("{}/{}", f.policy.namespace, f.policy.name);
    let base = f.policy.base_path.trim_end_matches('/');

    let mut client = json!({
        "type": {"coding": [coding(DICOM, "110153", "Source Role ID")]},
        "requestor": false,
    });
    let client_id = f.identity.token.as_ref().and_then(|t| t.client_id.clone());
    client["who"] = match (&client_id, f.source_address) {
        (Some(id), _) => json!({"identifier": {"value": clip(id, MAX_TEXT)}}),
        (None, Some(a)) => json!({"display": a}),
        (None, None) => json!({"display": "unknown client"}),
    };
    if let Some(a) = f.source_address {
        client["network"] = json!({"address": a, "type": "2"});
    }
    let host = clip(f.host, MAX_TEXT);
    let server = json!({
        "type": {"coding": [coding(DICOM, "110152", "Destination Role ID")]},
        "who": {"display": host},
        "requestor": false,
        "network": {"address": format!("{host}{base}"), "type": "5"},
    });
    let mut agents = vec![client, server];
    if let Some(u) = user_agent(f, k.writes) {
        agents.push(u);
    }

    let mut entities = Vec::new();
    if let Some(r) = f.request {
        let what = match (&r.resource_type, &r.id, &r.version_id) {
            (Some(t), Some(id), Some(v)) => {
                Some(json!({"reference": clip(&format!("{t}/{id}/_history/{v}"), MAX_TEXT)}))
            }
            (Some(t), Some(id), None) => {
                Some(json!({"reference": clip(&format!("{t}/{id}"), MAX_TEXT)}))
            }
            (Some(t), None, None) if k.subtype != "search" => Some(json!({"type": t})),
            _ => None,
        };
        if let Some(what) = what {
            let mut e = json!({
                "what": what,
                "type": coding(ENTITY_TYPE, "2", "System Object"),
                "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
            });
            if let Some(op) = &r.operation {
                e["description"] = json!(clip(&format!("${op}"), MAX_TEXT));
            } else if conditional(r.interaction) {
                // Which resources the server picks is unknown here; the criteria say how.
                e["description"] = json!(format!(
                    "conditional: {}",
                    clip(&params_text(&r.params), MAX_QUERY_TEXT)
                ));
            }
            entities.push(e);
        }
        if k.subtype == "search" {
            // Bounded: a client (even one whose token is refused) must not be able to make
            // events as large as its query or search body.
            let text = clip(&raw_query_text(f), MAX_QUERY_TEXT);
            entities.push(json!({
                "type": coding(ENTITY_TYPE, "2", "System Object"),
                "role": coding(OBJECT_ROLE, "24", "Query"),
                "description": text,
                "query": base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
            }));
        }
    }
    for p in patients {
        entities.push(json!({
            "what": {"reference": p},
            "type": coding(ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient"),
        }));
    }
    entities.push(json!({
        "what": {"identifier": {"value": f.decision_id}},
        "type": coding(BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id"),
    }));

    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": [coding(RESTFUL_INTERACTION, k.subtype, k.subtype)],
        "action": k.action,
        "recorded": crate::core::time::rfc3339_millis(f.recorded_unix_ms),
        "outcome": outcome,
        "agent": agents,
        "source": {
            "site": policy_id,
            "observer": {"display": format!("fhirguard {}", f.observer)},
            "type": [coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": entities,
    });
    if let Some(d) = outcome_desc {
        event["outcomeDesc"] = json!(d);
    }
    // BALP's Read, Update and Delete profiles require the resource's reference: a
    // conditional interaction (no id known here) follows the pattern without claiming them.
    let names_resource = f.request.is_some_and(|r| r.id.is_some());
    if outcome == "0"
        && let Some((plain, with_patient)) = k.profile
        && (names_resource || !matches!(plain, "Read" | "Update" | "Delete"))
    {
        let name = if patients.len() == 1 {
            with_patient
        } else {
            plain
        };
        event["meta"] = json!({"profile": [format!("{PROFILE_BASE}{name}")]});
    }
    event
}

/// The events for one decision: [`audit_event`], then for an allowed batch or transaction
/// one event per entry that `record` asks for (every entry under `All`, entries that touch
/// patient data otherwise).
pub fn audit_events(f: &AuditFacts<'_>, record: AuditRecord) -> Vec<Value> {
    let mut out = per_patient(f, MAX_EVENTS_PER_REQUEST);
    let Some(r) = f.request else {
        return out;
    };
    let allowed = matches!(f.outcome, Outcome::Decided(Decision::Allow(_)));
    if !allowed
        || !matches!(
            r.interaction,
            Interaction::Batch | Interaction::Transaction | Interaction::BundleUninspected
        )
    {
        return out;
    }
    let mut unrecorded = 0usize;
    for entry in &r.entries {
        let wanted = match record {
            AuditRecord::All => true,
            AuditRecord::PatientDataAndRefusals => touches_patient_data(entry),
            AuditRecord::Refusals => false,
        };
        if !wanted {
            continue;
        }
        let room = MAX_EVENTS_PER_REQUEST.saturating_sub(out.len());
        if room == 0 {
            unrecorded += 1;
            continue;
        }
        // As the server sees it: the entry's URL under the policy's base.
        let path = format!(
            "{}/{}",
            f.policy.base_path.trim_end_matches('/'),
            entry_path(entry)
        );
        // An entry's patients come from its own stored resource, not its neighbours'.
        let own: Lookups = f
            .lookups
            .iter()
            .filter(|(k, _)| {
                entry.resource_type.as_deref() == Some(k.resource_type.as_str())
                    && entry.id.as_deref() == Some(k.id.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.extend(per_patient(
            &AuditFacts {
                method: entry_method(entry),
                path: &path,
                request: Some(entry),
                lookups: &own,
                ..*f
            },
            room,
        ));
    }
    // What one request may cost the audit trail is bounded; the Bundle's event says what was
    // left out, so the gap is visible.
    if unrecorded > 0
        && let Some(Value::Array(entities)) = out.first_mut().and_then(|e| e.get_mut("entity"))
    {
        entities.push(json!({
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
            "description": format!(
                "{unrecorded} further entries were not recorded one by one \
                 (at most {MAX_EVENTS_PER_REQUEST} events per request)"
            ),
        }));
    }
    out
}

/// The events for one request about its patients: an allowed one gets an event per patient
/// (BALP's Patient* profiles hold exactly one), at most `room`; a refusal (or a request naming
/// more patients than fit) gets one event listing them, so that a client whose credentials
/// were refused cannot multiply what its request costs the audit trail.
fn per_patient(f: &AuditFacts<'_>, room: usize) -> Vec<Value> {
    let mut patients = patients_of(f);
    let allowed = matches!(f.outcome, Outcome::Decided(Decision::Allow(_)));
    if !allowed || patients.len() <= 1 || patients.len() > room.min(MAX_PATIENT_EVENTS) {
        // One event listing them; a request naming more than fit says how many it named, so
        // that padding a request with made-up ids cannot hide a real one without a trace.
        let named = patients.len();
        patients.truncate(MAX_LISTED_PATIENTS);
        let mut event = audit_event(f, &patients);
        if named > patients.len()
            && let Some(Value::Array(entities)) = event.get_mut("entity")
        {
            entities.push(json!({
                "type": coding(ENTITY_TYPE, "1", "Person"),
                "role": coding(OBJECT_ROLE, "1", "Patient"),
                "description": format!(
                    "{} further patients named by the request are not listed \
                     (at most {MAX_LISTED_PATIENTS} per event)",
                    named - patients.len()
                ),
            }));
        }
        return vec![event];
    }
    patients.chunks(1).map(|one| audit_event(f, one)).collect()
}

/// The HTTP method an entry's `request.method` carried, from its classification.
fn entry_method(e: &FhirRequest) -> &'static str {
    match e.interaction {
        Interaction::Create | Interaction::ConditionalCreate => "POST",
        Interaction::Update | Interaction::ConditionalUpdate => "PUT",
        Interaction::Patch | Interaction::ConditionalPatch => "PATCH",
        Interaction::Delete | Interaction::ConditionalDelete => "DELETE",
        Interaction::OperationSystem
        | Interaction::OperationType
        | Interaction::OperationInstance
        | Interaction::Batch
        | Interaction::Transaction
        | Interaction::BundleUninspected
            if e.writes =>
        {
            "POST"
        }
        _ => "GET",
    }
}

/// An entry's `request.url` rebuilt from its classification (relative to the base, as
/// entries carry it), with its parameters; `access_token` never appears.
fn entry_path(e: &FhirRequest) -> String {
    let mut path = String::new();
    if let Some((t, id)) = &e.compartment {
        path = format!("{t}/{id}/");
    }
    if let Some(t) = &e.resource_type {
        path.push_str(t);
    }
    if let Some(id) = &e.id {
        path.push('/');
        path.push_str(id);
    }
    if let Some(v) = &e.version_id {
        path.push_str("/_history/");
        path.push_str(v);
    }
    if let Some(op) = &e.operation {
        if !path.is_empty() {
            path.push('/');
        }
        path.push('$');
        path.push_str(op);
    }
    let query = params_text(&e.params);
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query);
    }
    path
}

/// Parameters form-encoded as they would travel, every `access_token` left out (a token is
/// never recorded, whatever the case of its name).
fn params_text(params: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            params
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("access_token")),
        )
        .finish()
}

/// A FHIR `batch` Bundle that creates each event (serialized AuditEvents, as queued), for
/// POSTing to a FHIR server's base.
pub fn bundle_text(events: &[String]) -> String {
    let mut out = String::from(r#"{"resourceType":"Bundle","type":"batch","entry":["#);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"resource":"#);
        out.push_str(e);
        out.push_str(r#","request":{"method":"POST","url":"AuditEvent"}}"#);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_valid_json_holding_each_event() {
        let events = vec![
            json!({"resourceType": "AuditEvent", "id": "a"}).to_string(),
            json!({"resourceType": "AuditEvent", "id": "b"}).to_string(),
        ];
        let b: Value = serde_json::from_str(&bundle_text(&events)).unwrap();
        assert_eq!(b["type"], "batch");
        assert_eq!(b["entry"][1]["resource"]["id"], "b");
        assert_eq!(b["entry"][0]["request"]["url"], "AuditEvent");
        let empty: Value = serde_json::from_str(&bundle_text(&[])).unwrap();
        assert_eq!(empty["entry"], json!([]));
    }
}
