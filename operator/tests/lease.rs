//! Leader-election steps against kube's tower-test mock: the request sequence for each
//! situation is short and exact, which is what a mock shows best. (The same code runs against
//! the real API server in kube_e2e.rs, including a takeover after a leader is killed.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use fhirguard_operator::reconcile::lease::{Elector, LeaseSettings};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::{Api, Client};
use serde_json::json;
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn elector() -> (Elector, Handle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "fhirguard-system");
    let settings = LeaseSettings {
        namespace: "fhirguard-system".into(),
        name: "fhirguard-operator".into(),
        identity: "me".into(),
        duration: Duration::from_millis(300),
        retry: Duration::from_millis(50),
    };
    (
        Elector::new(Api::namespaced(client, "fhirguard-system"), settings),
        handle,
    )
}

fn respond(send: mock::SendResponse<Response<Body>>, status: u16, body: serde_json::Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str) -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

fn lease(holder: &str, rv: &str, transitions: i32) -> serde_json::Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "fhirguard-operator", "namespace": "fhirguard-system", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 1, "leaseTransitions": transitions,
                 "renewTime": "2026-01-01T00:00:00.000000Z"}
    })
}

async fn body_json(req: Request<Body>) -> serde_json::Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/fhirguard-system/leases";

#[tokio::test]
async fn creates_the_lease_when_there_is_none() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(
            (req.method(), req.uri().path()),
            (&Method::GET, &*format!("{PATH}/fhirguard-operator"))
        );
        respond(send, 404, status(404, "NotFound"));
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!((req.method(), req.uri().path()), (&Method::POST, PATH));
        let body = body_json(req).await;
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        respond(send, 201, body);
    });
    assert!(e.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn losing_the_create_race_is_not_leading() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        let (_, send) = h.next_request().await.unwrap();
        respond(send, 404, status(404, "NotFound"));
        let (_, send) = h.next_request().await.unwrap();
        respond(send, 409, status(409, "AlreadyExists"));
    });
    assert!(!e.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn a_live_lease_is_respected_and_a_stale_one_taken_over_with_its_resource_version() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        // First look: someone else holds it; we only start the clock.
        let (_, send) = h.next_request().await.unwrap();
        respond(send, 200, lease("other", "41", 3));
        // Renewed by its holder (new resourceVersion): the clock restarts.
        let (_, send) = h.next_request().await.unwrap();
        respond(send, 200, lease("other", "42", 3));
        // Unchanged for longer than the lease duration: take it over, guarded by rv 42.
        let (_, send) = h.next_request().await.unwrap();
        respond(send, 200, lease("other", "42", 3));
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PUT);
        let body = body_json(req).await;
        assert_eq!(body["metadata"]["resourceVersion"], "42");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 4);
        respond(send, 200, body);
    });
    assert!(!e.try_acquire_or_renew().await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        !e.try_acquire_or_renew().await.unwrap(),
        "a renewed lease is not stale"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(e.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn a_conflicting_write_means_someone_else_won() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        let (_, send) = h.next_request().await.unwrap();
        respond(send, 200, lease("me", "7", 0));
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PUT);
        respond(send, 409, status(409, "Conflict"));
    });
    assert!(!e.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn release_clears_the_holder_only_when_it_is_us() {
    let (mut e, mut h) = elector();
    let server = tokio::spawn(async move {
        let (_, send) = h.next_request().await.unwrap();
        respond(send, 200, lease("me", "9", 1));
        let (req, send) = h.next_request().await.unwrap();
        let body = body_json(req).await;
        assert!(body["spec"].get("holderIdentity").is_none());
        respond(send, 200, body);
        // Someone else's lease is left alone: one GET, no write.
        let (_, send) = h.next_request().await.unwrap();
        respond(send, 200, lease("other", "10", 2));
    });
    e.release().await;
    e.release().await;
    server.await.unwrap();
}
