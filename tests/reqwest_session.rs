//! Read-your-writes across two real HTTP services on loopback, called with
//! reqwest through `SessionMiddleware`.

#[path = "../examples/services.rs"]
#[allow(dead_code)]
mod services;

use quorate::propagation::SessionMiddleware;
use quorate::{Client, ClientConfig};
use reqwest::StatusCode;
use reqwest_middleware::ClientBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_carries_the_session_between_services() {
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
    let http = ClientBuilder::new(reqwest::Client::new())
        .with(SessionMiddleware::new(checkout_db.clone(), session.clone()))
        .build();
    let created = http
        .post(format!("http://{checkout}/orders/o-1"))
        .body("book")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    assert!(
        session.token().point().is_some(),
        "the response's token advanced the session"
    );
    let shown = http
        .get(format!("http://{shipping}/orders/o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), StatusCode::OK);
    assert_eq!(shown.text().await.unwrap(), "book v1 eu-west leader");

    // The same call without the middleware reads the lagging replica: the
    // check above can fail.
    let plain = reqwest::Client::new()
        .get(format!("http://{shipping}/orders/o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::NOT_FOUND);
    assert!(plain.text().await.unwrap().contains("ap-south follower"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_carries_its_own_session() {
    let sim = services::database().unwrap();
    let checkout_db = Client::new(sim.at("us-east").unwrap(), ClientConfig::default()).unwrap();
    let shipping_db = Client::new(sim.at("ap-south").unwrap(), ClientConfig::default()).unwrap();
    let checkout = services::serve(services::checkout(checkout_db.clone()))
        .await
        .unwrap();
    let shipping = services::serve(services::shipping(shipping_db))
        .await
        .unwrap();
    // One shared HTTP client, as a service has, serving two users.
    let http = ClientBuilder::new(reqwest::Client::new())
        .with(SessionMiddleware::per_request(checkout_db.clone()))
        .build();
    let (alice, bob) = (checkout_db.session(), checkout_db.session());

    let created = http
        .post(format!("http://{checkout}/orders/a-1"))
        .body("lamp")
        .with_extension(alice.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    assert!(alice.token().point().is_some(), "alice's session advanced");
    assert!(bob.token().point().is_none(), "bob's session did not");

    let as_alice = http
        .get(format!("http://{shipping}/orders/a-1"))
        .with_extension(alice.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(as_alice.status(), StatusCode::OK);
    assert_eq!(as_alice.text().await.unwrap(), "lamp v1 eu-west leader");

    // Bob has written nothing, so his read may be served by the lagging
    // replica; a request without a session is sent without a token.
    for extension in [Some(bob.clone()), None] {
        let mut request = http.get(format!("http://{shipping}/orders/a-1"));
        if let Some(session) = extension {
            request = request.with_extension(session);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.text().await.unwrap().contains("ap-south follower"));
    }
}
