//! Session propagation over gRPC, with a real tonic server and client on
//! loopback: the client's channel carries its session in the
//! `quorate-session` metadata and merges the server's answer; the server's
//! layer hands the session to the service; a bad token is
//! `INVALID_ARGUMENT` before the service runs.

use std::sync::{Arc, Mutex};

use quorate::propagation::{GrpcSessionLayer, PropagateSessionLayer, SESSION_HEADER};
use quorate::sim::{Sim, SimConfig};
use quorate::{Client, ClientConfig, Precondition, Session, WriteOptions};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_travels_in_grpc_metadata() {
    let sim = Sim::new(SimConfig::new(["eu", "us"]).unwrap()).unwrap();
    let server_db = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    let client_db = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();

    // The server: the health service behind the session layer, and a
    // probe of what the service receives.
    let (_reporter, health) = tonic_health::server::health_reporter();
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen_by_service = seen.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_session_db = server_db.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(GrpcSessionLayer::new(server_db))
            .layer(tower::util::MapRequestLayer::new(
                move |request: http::Request<tonic::body::Body>| {
                    let token = request
                        .extensions()
                        .get::<Session>()
                        .map(|s| server_session_db.encode_token(s));
                    seen_by_service.lock().unwrap().push(token);
                    request
                },
            ))
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });

    // The client: a session that has written, carried by its channel.
    let session = client_db.session();
    let c = client_db
        .write(
            &session,
            "k",
            "v".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let propagating = tower::ServiceBuilder::new()
        .layer(PropagateSessionLayer::new(
            client_db.clone(),
            session.clone(),
        ))
        .service(channel.clone());
    let mut health = HealthClient::new(propagating);
    let answer = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert!(
        answer.metadata().get(SESSION_HEADER).is_some(),
        "the answer carries the token"
    );
    let received = seen
        .lock()
        .unwrap()
        .last()
        .cloned()
        .flatten()
        .expect("the service got a session");
    let decoded = client_db.decode_token(&received).unwrap();
    assert_eq!(
        decoded.version_of("k"),
        Some(c.version),
        "the service saw the client's session"
    );

    // A bad token: INVALID_ARGUMENT, and the service never ran.
    let before = seen.lock().unwrap().len();
    let mut raw = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert(SESSION_HEADER, "%%%".parse().unwrap());
    let status = raw.check(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(SESSION_HEADER), "{status:?}");
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "the service ran on a bad token"
    );
}
