//! Read-your-writes across two real HTTP services on loopback, with the
//! session carried in the `quorate-session` header.

#[path = "../examples/services.rs"]
#[allow(dead_code)]
mod services;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use quorate::propagation::SESSION_HEADER;
use quorate::{Client, ClientConfig};
use tower::{Service, ServiceExt};

fn get(addr: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_across_services() {
    let sim = services::database().unwrap();
    let checkout_db = Client::new(sim.at("us-east").unwrap(), ClientConfig::default()).unwrap();
    let shipping_db = Client::new(sim.at("ap-south").unwrap(), ClientConfig::default()).unwrap();
    let checkout = services::serve(services::checkout(checkout_db.clone()))
        .await
        .unwrap();
    let shipping = services::serve(services::shipping(shipping_db))
        .await
        .unwrap();

    let session = checkout_db.session();
    let mut user = services::user_agent(checkout_db.clone(), session.clone());
    for n in 0..3 {
        let id = format!("o-{n}");
        let post = Request::builder()
            .method("POST")
            .uri(format!("http://{checkout}/orders/{id}"))
            .body(Full::new(Bytes::from_static(b"book")))
            .unwrap();
        let created = user.ready().await.unwrap().call(post).await.unwrap();
        assert_eq!(created.status(), StatusCode::OK, "{}", created.body());
        assert!(
            session.token().point().is_some(),
            "the response advanced the user's session"
        );

        let shown = user
            .ready()
            .await
            .unwrap()
            .call(get(shipping, &format!("/orders/{id}")))
            .await
            .unwrap();
        assert_eq!(shown.status(), StatusCode::OK, "{}", shown.body());
        assert_eq!(
            shown.body(),
            "book v1 eu-west leader",
            "escalated past the lagging replica"
        );

        // Without the token, shipping reads its lagging replica.
        let (status, body) = services::send(get(shipping, &format!("/orders/{id}")))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains("ap-south follower"), "{body}");
    }
    // The replica catches up eventually.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = services::send(get(shipping, "/orders/o-0")).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_session_header_is_a_400_not_a_500() {
    let sim = services::database().unwrap();
    let db = Client::new(sim.at("ap-south").unwrap(), ClientConfig::default()).unwrap();
    let db_scope = db.scope().clone();
    let shipping = services::serve(services::shipping(db)).await.unwrap();
    let foreign =
        quorate::SessionToken::new(quorate::Scope::new("another-cluster").unwrap()).encode();
    for bad in ["%%%", "AAAA", foreign.as_str(), &"A".repeat(2000)] {
        let request = Request::builder()
            .uri(format!("http://{shipping}/orders/o-1"))
            .header(SESSION_HEADER, bad)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, body) = services::send(request).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:.20}: {body}");
        assert!(
            body.starts_with("invalid quorate-session header: "),
            "{body}"
        );
        assert!(
            !body.contains(db_scope.as_str()),
            "the body names no scope of this server: {body}"
        );
    }
}
