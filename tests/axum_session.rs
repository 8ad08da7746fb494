//! `Session` as an axum extractor, and a service calling another on
//! behalf of the request it serves (the client side taking each request's
//! session from its extensions), over real HTTP on loopback.

#[path = "../examples/services.rs"]
#[allow(dead_code)]
mod services;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use quorate::propagation::{PropagateSessionLayer, SessionLayer, SESSION_HEADER};
use quorate::sim::Sim;
use quorate::{Client, ClientConfig, Precondition, ReadPolicy, Session, WriteOptions};
use tower::{Layer, Service, ServiceExt};

type Db = Client<Sim>;

/// The inventory service writes in the session of the request.
async fn reserve(State(db): State<Db>, session: Session) -> Result<String, StatusCode> {
    let c = db
        .write(
            &session,
            "stock/book",
            "reserved".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(c.version.0.to_string())
}

/// The order service calls inventory on behalf of the request it serves,
/// then reads what inventory wrote in the same session.
async fn place(
    State((db, inventory)): State<(Db, String)>,
    session: Session,
) -> Result<String, (StatusCode, String)> {
    let outbound =
        PropagateSessionLayer::per_request(db.clone()).layer(tower::service_fn(services::fetch));
    let mut call = Request::builder()
        .method("POST")
        .uri(format!("{inventory}/reserve"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    call.extensions_mut().insert(session.clone());
    let reply = outbound
        .oneshot(call)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    // The reply's token advanced this request's session: the read sees
    // inventory's write, wherever it is served.
    let read = db
        .read(&session, "stock/book", ReadPolicy::Session)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(format!(
        "{} {:?}",
        reply.into_body(),
        read.version().map(|v| v.0)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractor_and_per_request_propagation_carry_the_session() {
    let sim = services::database().unwrap();
    let inventory_db = Client::new(sim.at("us-east").unwrap(), ClientConfig::default()).unwrap();
    let orders_db = Client::new(sim.at("ap-south").unwrap(), ClientConfig::default()).unwrap();
    let inventory = services::serve(
        Router::new()
            .route("/reserve", post(reserve))
            .route("/bare", get(|_s: Session| async { "unreachable" }))
            .layer(SessionLayer::new(inventory_db.clone()))
            .with_state(inventory_db),
    )
    .await
    .unwrap();
    let orders = services::serve(
        Router::new()
            .route("/place", post(place))
            .layer(SessionLayer::new(orders_db.clone()))
            .with_state((orders_db.clone(), format!("http://{inventory}"))),
    )
    .await
    .unwrap();

    // A user's request, its session carried by the user's client.
    let user = orders_db.session();
    let mut agent = PropagateSessionLayer::new(orders_db.clone(), user.clone())
        .layer(tower::service_fn(services::fetch));
    let response = agent
        .ready()
        .await
        .unwrap()
        .call(
            Request::builder()
                .method("POST")
                .uri(format!("http://{orders}/place"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", response.body());
    let body = response.into_body();
    let (written, read) = body.split_once(' ').unwrap();
    assert_eq!(
        read,
        format!("Some({written})"),
        "the order service read inventory's write"
    );
    // And the user's own session came back advanced past it.
    let version: u64 = written.parse().unwrap();
    assert!(user
        .token()
        .version_of("stock/book")
        .is_some_and(|v| v.0 >= version));

    // Without the layer, the extractor says what is missing.
    let bare = Router::new().route("/bare", get(|_s: Session| async { "unreachable" }));
    let response = bare
        .oneshot(
            Request::builder()
                .uri("/bare")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // A bad token is refused before any handler runs.
    let (status, _) = services::send(
        Request::builder()
            .uri(format!("http://{inventory}/bare"))
            .header(SESSION_HEADER, "%%%")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
