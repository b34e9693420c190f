//! A do-nothing Envoy ext_authz server: the yardstick `bench/envoy-load.sh` measures fhirguard
//! against. Same tonic, envoy-types and tokio versions and the same server setup as
//! `fhirguard-authz serve` (multi-thread runtime, TCP_NODELAY), so the difference between the
//! two is fhirguard's own work: decoding is the same, the decision is not made at all.
//!
//! `cargo run --release --example null_authz -- 127.0.0.1:19002`

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

struct Null;

#[tonic::async_trait]
impl Authorization for Null {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19002".into())
        .parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let incoming = tonic::transport::server::TcpIncoming::bind(addr)?.with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Null))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}
