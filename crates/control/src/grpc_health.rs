//! gRPC health checks for pools with `protocol = "grpc"`: a unary call of
//! `grpc.health.v1.Health/Check` (gRPC's standard health checking
//! protocol) for the whole server (service `""`), passing when the answer
//! is `SERVING`. One lazily connected channel per replica, reused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `ServingStatus.SERVING`.
const SERVING: i32 = 1;

/// The channels to gRPC replicas, by address.
#[derive(Debug, Default)]
pub struct Checker {
    channels: HashMap<SocketAddr, Channel>,
}

impl Checker {
    /// A channel to `addr` (new ones connect on first use).
    pub fn channel(&mut self, addr: SocketAddr, timeout: Duration) -> Option<Channel> {
        if let Some(channel) = self.channels.get(&addr) {
            return Some(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint.connect_lazy();
        self.channels.insert(addr, channel.clone());
        Some(channel)
    }

    /// Forgets the channels of replicas not in `live`.
    pub fn retain(&mut self, live: impl Fn(SocketAddr) -> bool) {
        self.channels.retain(|&addr, _| live(addr));
    }
}

/// One check: `Health/Check` for the whole server answered `SERVING`
/// within `timeout`.
pub async fn check(channel: Channel, timeout: Duration) -> bool {
    let call = async {
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.ok()?;
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        let response = client.unary(request, path, codec).await.ok()?;
        Some(response.into_inner().status == SERVING)
    };
    matches!(tokio::time::timeout(timeout, call).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferlb_testkit::{grpc_replica, GrpcReplicaConfig};

    #[tokio::test]
    async fn serving_passes_and_anything_else_fails() {
        let replica =
            grpc_replica::start(GrpcReplicaConfig::default(), "127.0.0.1:0".parse().unwrap())
                .unwrap();
        let timeout = Duration::from_secs(2);
        let mut checker = Checker::default();
        let channel = checker.channel(replica.addr(), timeout).unwrap();
        assert!(check(channel.clone(), timeout).await);
        replica.stats().set_serving(false);
        assert!(!check(channel.clone(), timeout).await);
        replica.stats().set_serving(true);
        assert!(check(channel, timeout).await);
        // Gone: the check fails within its timeout.
        let addr = replica.addr();
        drop(replica);
        let channel = Checker::default().channel(addr, timeout).unwrap();
        assert!(!check(channel, timeout).await);
    }
}
