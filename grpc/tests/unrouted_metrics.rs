//! A caller cannot make a server grow metric series at will: calls to 10,000 made-up paths leave
//! the number of `brindle_grpc_requests_total` series as it was after the first few, while every
//! routed method still gets its own.

use brindle_metrics::{GrpcMetricsLayer, Metrics};
use tonic::service::RoutesBuilder;

/// The number of series of the request counter.
fn request_series(metrics: &Metrics) -> usize {
    metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with("brindle_grpc_requests_total{"))
        .count()
}

#[tokio::test]
async fn ten_thousand_bogus_paths_add_no_series() {
    let metrics = Metrics::new();
    let mut routes = RoutesBuilder::default();
    brindle_grpc::add_health_and_reflection(&mut routes, &[]).expect("health");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(GrpcMetricsLayer::new(&metrics))
            .add_routes(routes.routes())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel.clone());
    let mut call = async |path: String| {
        client.ready().await.expect("ready");
        let path: http::uri::PathAndQuery = path.parse().expect("path");
        client
            .unary::<(), (), _>(tonic::Request::new(()), path, tonic_prost::ProstCodec::default())
            .await
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("a routed call");
    for i in 0..10 {
        let refused = call(format!("/bogus.Service{i}/Method{i}"))
            .await
            .expect_err("unrouted");
        assert_eq!(refused.code(), tonic::Code::Unimplemented);
    }
    let before = request_series(&metrics);
    assert_eq!(
        before,
        2,
        "the health check and one series for every unrouted path:\n{}",
        metrics.encode()
    );
    for i in 10..10_000 {
        let _ = call(format!("/bogus.Service{i}/Method{i}")).await;
        let _ = call(format!("/grpc.health.v1.Health/Nope{i}")).await;
    }
    assert_eq!(request_series(&metrics), before, "{}", metrics.encode());
    assert!(
        metrics
            .encode()
            .contains(r#"service="unrouted",method="unrouted",code="Unimplemented""#)
    );
}
