//! Read-your-writes across two HTTP services, with the session carried in
//! the `quorate-session` header.
//!
//! `cargo run --example services --features http`
//!
//! A checkout service (us-east) creates orders; a shipping service
//! (ap-south, whose replica lags by seconds) reads them. Both sit behind
//! `SessionLayer`; the user's HTTP client sits behind
//! `PropagateSessionLayer`. The shipping service's session read sees the
//! order the user just created, because the token says what it must reflect;
//! a caller without the token is served by the lagging replica.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use quorate::propagation::{PropagateSessionLayer, SessionLayer};
use quorate::sim::{Sim, SimConfig};
use quorate::{BoxError, Client, ClientConfig, Critical, Precondition, Session, StrictRead};
use tower::{Layer, Service, ServiceExt};

type Db = Client<Sim>;

/// The simulated database: three regions, ap-south's replica 3 s behind.
pub fn database() -> Result<Sim, quorate::Error> {
    let sim = Sim::new(SimConfig::new(["eu-west", "us-east", "ap-south"])?)?;
    sim.set_replication_lag("ap-south", Duration::from_secs(3))?;
    Ok(sim)
}

async fn create_order(
    State(db): State<Db>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    item: String,
) -> Result<String, (StatusCode, String)> {
    let orders = db
        .collection::<String, Critical>("orders", &session)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    match orders.put(&id, &item, Precondition::IfAbsent).await {
        Ok(c) => Ok(c.version.0.to_string()),
        Err(e @ quorate::Error::Conflict { .. }) => Err((StatusCode::CONFLICT, e.to_string())),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn show_order(
    State(db): State<Db>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Result<String, (StatusCode, String)> {
    let orders = db
        .collection::<String, Critical>("orders", &session)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let read = orders
        .get_with(&id, StrictRead::Session)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let f = &read.freshness;
    match read.value {
        Some(v) => Ok(format!(
            "{} v{} {} {}",
            v.value,
            v.version.0,
            f.region,
            f.role.label()
        )),
        None => Err((
            StatusCode::NOT_FOUND,
            format!("no order {id} (served by {} {})", f.region, f.role.label()),
        )),
    }
}

/// The checkout service: `POST /orders/{id}` with the item as the body.
pub fn checkout(db: Db) -> Router {
    Router::new()
        .route("/orders/{id}", post(create_order))
        .layer(SessionLayer::new(db.clone()))
        .with_state(db)
}

/// The shipping service: `GET /orders/{id}`.
pub fn shipping(db: Db) -> Router {
    Router::new()
        .route("/orders/{id}", get(show_order))
        .layer(SessionLayer::new(db.clone()))
        .with_state(db)
}

/// Serves `router` on a free loopback port until the process ends.
pub async fn serve(router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("server stopped: {e}");
        }
    });
    Ok(addr)
}

/// One HTTP/1.1 request over a fresh loopback connection; the body is
/// read whole.
pub async fn fetch(request: Request<Full<Bytes>>) -> Result<Response<String>, BoxError> {
    let authority = request
        .uri()
        .authority()
        .ok_or("request without host")?
        .to_string();
    let stream = tokio::net::TcpStream::connect(authority).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response: Response<hyper::body::Incoming> = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(
        parts,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// [`fetch`], as status and body.
pub async fn send(request: Request<Full<Bytes>>) -> Result<(StatusCode, String), BoxError> {
    let response = fetch(request).await?;
    Ok((response.status(), response.into_body()))
}

/// A user's HTTP client that carries `session` between services.
pub fn user_agent(
    db: Db,
    session: Session,
) -> impl Service<Request<Full<Bytes>>, Response = Response<String>, Error = BoxError> + Clone {
    let transport = tower::service_fn(fetch);
    PropagateSessionLayer::new(db, session).layer(transport)
}

fn request(method: &str, addr: SocketAddr, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid request")
}

#[allow(dead_code)] // also compiled into the HTTP test, which has its own main
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let sim = database()?;
    let checkout_db = Client::new(sim.at("us-east")?, ClientConfig::default())?;
    let shipping_db = Client::new(sim.at("ap-south")?, ClientConfig::default())?;
    let checkout_addr = serve(checkout(checkout_db.clone())).await?;
    let shipping_addr = serve(shipping(shipping_db)).await?;
    println!("checkout on http://{checkout_addr}, shipping on http://{shipping_addr}");

    let session = checkout_db.session();
    let mut user = user_agent(checkout_db.clone(), session.clone());
    let created = user
        .ready()
        .await?
        .call(request("POST", checkout_addr, "/orders/o-1", "book"))
        .await?;
    println!(
        "POST checkout /orders/o-1 -> {} version {}",
        created.status(),
        created.body()
    );
    println!("quorate-session: {}", session.encode());

    let with_token = user
        .ready()
        .await?
        .call(request("GET", shipping_addr, "/orders/o-1", ""))
        .await?;
    println!(
        "GET shipping /orders/o-1 with the session -> {} {}",
        with_token.status(),
        with_token.body()
    );

    let (status, body) = send(request("GET", shipping_addr, "/orders/o-1", "")).await?;
    println!(
        "GET shipping /orders/o-1 without it     -> {status} {}",
        body.trim()
    );
    Ok(())
}
