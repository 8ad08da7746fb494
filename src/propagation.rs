//! Session propagation between HTTP services (feature `http`).
//!
//! A session token travels in the `quorate-session` header. On the server,
//! [`SessionLayer`] decodes it (a bad token is a `400` with a clear message,
//! never a panic), puts the [`Session`] into the request's extensions for the
//! handler, and returns the advanced token in the response header. On the
//! client, [`PropagateSessionLayer`] sends the session's token with every
//! request and merges the token each response returns; for reqwest clients,
//! [`SessionMiddleware`] (feature `reqwest`) does the same. For gRPC,
//! [`GrpcSessionLayer`] is the server side.
//!
//! ```
//! use quorate::propagation::{SessionLayer, SESSION_HEADER};
//! use quorate::sim::{Sim, SimConfig};
//! use quorate::{Client, ClientConfig, Session};
//! use tower_layer::Layer;
//! use tower_service::Service;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new(Sim::new(SimConfig::new(["eu"])?)?, ClientConfig::default())?;
//! let handler = tower::service_fn(|req: http::Request<String>| async move {
//!     let session = req.extensions().get::<Session>().expect("the layer provides it");
//!     Ok::<_, std::convert::Infallible>(http::Response::new(session.encode()))
//! });
//! let mut service = SessionLayer::new(client).layer(handler);
//! let bad = http::Request::builder().header(SESSION_HEADER, "%%%").body(String::new())?;
//! assert_eq!(service.call(bad).await?.status(), 400);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::backend::Backend;
use crate::client::Client;
use crate::error::Error;
use crate::session::{Session, TokenError};

/// The header that carries the session token.
pub const SESSION_HEADER: &str = "quorate-session";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Server side: reads the session from the request, returns its progress.
#[derive(Debug)]
pub struct SessionLayer<B> {
    client: Client<B>,
}

impl<B> Clone for SessionLayer<B> {
    fn clone(&self) -> Self {
        SessionLayer {
            client: self.client.clone(),
        }
    }
}

impl<B: Backend> SessionLayer<B> {
    /// Tokens are decoded (and, with a signing key, verified) by `client`.
    pub fn new(client: Client<B>) -> SessionLayer<B> {
        SessionLayer { client }
    }
}

impl<B: Backend, S> Layer<S> for SessionLayer<B> {
    type Service = SessionService<B, S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            client: self.client.clone(),
            inner,
        }
    }
}

/// The service [`SessionLayer`] produces.
#[derive(Debug)]
pub struct SessionService<B, S> {
    client: Client<B>,
    inner: S,
}

impl<B, S: Clone> Clone for SessionService<B, S> {
    fn clone(&self) -> Self {
        SessionService {
            client: self.client.clone(),
            inner: self.inner.clone(),
        }
    }
}

/// Why a token was refused, in words fit for whoever sent it: never this
/// server's scope name or anything else about its configuration.
fn public_reason(e: &Error) -> String {
    match e {
        Error::Token(TokenError::WrongScope { .. }) => {
            "the session token belongs to another cluster or database".to_owned()
        }
        Error::Token(t) => t.to_string(),
        _ => "the session token cannot be used".to_owned(),
    }
}

/// The session a request's token names (a new one without a token), or
/// why the token cannot be used.
fn request_session<B: Backend>(
    client: &Client<B>,
    headers: &http::HeaderMap,
) -> Result<Session, String> {
    match headers.get(SESSION_HEADER) {
        None => Ok(client.session()),
        Some(value) => value
            .to_str()
            .map_err(|_| "not visible ASCII".to_owned())
            .and_then(|text| client.resume_session(text).map_err(|e| public_reason(&e))),
    }
}

fn bad_request<Body: From<String>>(message: String) -> Response<Body> {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl<B, S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<B, S>
where
    B: Backend,
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        serve_with_session(&self.client, &mut self.inner, request, |why| {
            bad_request(format!("invalid {SESSION_HEADER} header: {why}\n"))
        })
    }
}

/// The server side of both layers: the request's session into its
/// extensions and the advanced token into the response, or `reject`'s
/// answer when the token cannot be used.
fn serve_with_session<B, S, ReqBody, ResBody>(
    client: &Client<B>,
    inner: &mut S,
    mut request: Request<ReqBody>,
    reject: impl FnOnce(String) -> Response<ResBody>,
) -> BoxFuture<Result<Response<ResBody>, S::Error>>
where
    B: Backend,
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    let session = match request_session(client, request.headers()) {
        Ok(session) => session,
        Err(why) => return Box::pin(std::future::ready(Ok(reject(why)))),
    };
    request.extensions_mut().insert(session.clone());
    let response = inner.call(request);
    let client = client.clone();
    Box::pin(async move {
        let mut response = response.await?;
        if let Ok(value) = HeaderValue::from_str(&client.encode_token(&session)) {
            response.headers_mut().insert(SESSION_HEADER, value);
        }
        Ok(response)
    })
}

/// Client side: sends a session's token with each request and merges the
/// token each response carries back into it. The session is the request's
/// own when its extensions carry one (a service calling another on behalf
/// of the request it serves), else the layer's.
#[derive(Debug)]
pub struct PropagateSessionLayer<B> {
    client: Client<B>,
    session: Option<Session>,
}

impl<B> Clone for PropagateSessionLayer<B> {
    fn clone(&self) -> Self {
        PropagateSessionLayer {
            client: self.client.clone(),
            session: self.session.clone(),
        }
    }
}

impl<B: Backend> PropagateSessionLayer<B> {
    /// Propagates `session` (or a request's own), whose tokens `client`
    /// encodes and decodes.
    pub fn new(client: Client<B>, session: Session) -> PropagateSessionLayer<B> {
        PropagateSessionLayer {
            client,
            session: Some(session),
        }
    }

    /// Propagates each request's own session, taken from its extensions
    /// (where [`SessionLayer`] put the session of the request being
    /// served); a request without one is sent without a token.
    pub fn per_request(client: Client<B>) -> PropagateSessionLayer<B> {
        PropagateSessionLayer {
            client,
            session: None,
        }
    }
}

impl<B: Backend, S> Layer<S> for PropagateSessionLayer<B> {
    type Service = PropagateSession<B, S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateSession {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`PropagateSessionLayer`] produces.
#[derive(Debug)]
pub struct PropagateSession<B, S> {
    layer: PropagateSessionLayer<B>,
    inner: S,
}

impl<B, S: Clone> Clone for PropagateSession<B, S> {
    fn clone(&self) -> Self {
        PropagateSession {
            layer: self.layer.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<B, S, ReqBody, ResBody> Service<Request<ReqBody>> for PropagateSession<B, S>
where
    B: Backend,
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let session = request
            .extensions()
            .get::<Session>()
            .cloned()
            .or_else(|| self.layer.session.clone());
        if let Some(session) = &session {
            attach_token(&self.layer.client, session, request.headers_mut());
        }
        let response = self.inner.call(request);
        let layer = self.layer.clone();
        Box::pin(async move {
            let response = response.await?;
            if let Some(session) = &session {
                absorb_token(&layer.client, session, response.headers());
            }
            Ok(response)
        })
    }
}

/// Puts `session`'s token into an outgoing request's headers.
fn attach_token<B: Backend>(client: &Client<B>, session: &Session, headers: &mut HeaderMap) {
    let token = client.encode_token(session);
    if let Ok(value) = HeaderValue::from_str(&token) {
        headers.insert(SESSION_HEADER, value);
    }
}

/// Merges the token a response carries, if any, into `session`. A token
/// that does not decode, or belongs to another scope, is logged and left
/// out: the response itself is the caller's to use.
fn absorb_token<B: Backend>(client: &Client<B>, session: &Session, headers: &HeaderMap) {
    let Some(text) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return;
    };
    match client.decode_token(text) {
        Ok(token) => {
            if let Err(e) = session.merge(&token) {
                tracing::warn!(error = %e, "ignoring a session token of another scope");
            }
        }
        Err(e) => tracing::warn!(error = %e, "ignoring an invalid session token in a response"),
    }
}

/// Client side for [`reqwest`](https://docs.rs/reqwest) (feature `reqwest`):
/// a [`reqwest_middleware`] middleware that sends a session's token with
/// each request and merges the token each response returns, as
/// [`PropagateSessionLayer`] does for tower clients. The session is the
/// request's own when it carries one as an extension
/// ([`RequestBuilder::with_extension`](reqwest_middleware::RequestBuilder::with_extension)),
/// else the middleware's.
///
/// ```no_run
/// use quorate::propagation::SessionMiddleware;
/// use quorate::{Backend, Client};
///
/// # async fn demo<B: Backend>(db: Client<B>) -> Result<(), reqwest_middleware::Error> {
/// let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(SessionMiddleware::per_request(db.clone()))
///     .build();
/// let session = db.session();
/// // The answer's token advances `session`: a later read through it sees
/// // what this call wrote, in whichever region it is served.
/// http.post("http://checkout.internal/orders/o-1")
///     .with_extension(session.clone())
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
#[derive(Debug)]
pub struct SessionMiddleware<B> {
    client: Client<B>,
    session: Option<Session>,
}

#[cfg(feature = "reqwest")]
impl<B: Backend> SessionMiddleware<B> {
    /// Propagates `session` (or a request's own), whose tokens `client`
    /// encodes and decodes.
    pub fn new(client: Client<B>, session: Session) -> SessionMiddleware<B> {
        SessionMiddleware {
            client,
            session: Some(session),
        }
    }

    /// Propagates each request's own session, taken from its extensions; a
    /// request without one is sent without a token.
    pub fn per_request(client: Client<B>) -> SessionMiddleware<B> {
        SessionMiddleware {
            client,
            session: None,
        }
    }
}

#[cfg(feature = "reqwest")]
#[async_trait::async_trait]
impl<B: Backend> reqwest_middleware::Middleware for SessionMiddleware<B> {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let session = extensions
            .get::<Session>()
            .cloned()
            .or_else(|| self.session.clone());
        if let Some(session) = &session {
            attach_token(&self.client, session, request.headers_mut());
        }
        let response = next.run(request, extensions).await?;
        if let Some(session) = &session {
            absorb_token(&self.client, session, response.headers());
        }
        Ok(response)
    }
}

/// `Session` as an axum extractor (feature `axum`): the session of the
/// request, which [`SessionLayer`] decoded from its token (a request
/// without a token gets a new session). Without the layer installed the
/// extractor answers `500` naming it.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use quorate::propagation::SessionLayer;
/// use quorate::{Client, Session};
///
/// # fn demo<B: quorate::Backend + Clone>(client: Client<B>) {
/// async fn whoami(session: Session) -> String {
///     session.encode()
/// }
/// let app: Router = Router::new()
///     .route("/whoami", get(whoami))
///     .layer(SessionLayer::new(client));
/// # }
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for Session {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Session, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "quorate::propagation::SessionLayer is not installed on this route",
        ))
    }
}

/// Server side for gRPC services (tonic's `Server::builder().layer(..)`):
/// as [`SessionLayer`], the token travelling in the `quorate-session`
/// metadata; a token that cannot be used is answered with the gRPC status
/// `INVALID_ARGUMENT` (3) before the service runs.
#[derive(Debug)]
pub struct GrpcSessionLayer<B> {
    client: Client<B>,
}

impl<B> Clone for GrpcSessionLayer<B> {
    fn clone(&self) -> Self {
        GrpcSessionLayer {
            client: self.client.clone(),
        }
    }
}

impl<B: Backend> GrpcSessionLayer<B> {
    /// Decodes tokens with `client` (its scope, and signing key if any).
    pub fn new(client: Client<B>) -> GrpcSessionLayer<B> {
        GrpcSessionLayer { client }
    }
}

impl<B: Backend, S> Layer<S> for GrpcSessionLayer<B> {
    type Service = GrpcSessionService<B, S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcSessionService {
            client: self.client.clone(),
            inner,
        }
    }
}

/// The service [`GrpcSessionLayer`] produces.
#[derive(Debug)]
pub struct GrpcSessionService<B, S> {
    client: Client<B>,
    inner: S,
}

impl<B, S: Clone> Clone for GrpcSessionService<B, S> {
    fn clone(&self) -> Self {
        GrpcSessionService {
            client: self.client.clone(),
            inner: self.inner.clone(),
        }
    }
}

/// `text` as gRPC's `grpc-message` wants it: percent-encoded outside
/// printable ASCII (and `%` itself).
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A trailers-only gRPC answer with status `INVALID_ARGUMENT`.
fn invalid_argument<Body: Default>(message: &str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("3"));
    if let Ok(v) = HeaderValue::from_str(&grpc_message(message)) {
        headers.insert("grpc-message", v);
    }
    response
}

impl<B, S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcSessionService<B, S>
where
    B: Backend,
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        serve_with_session(&self.client, &mut self.inner, request, |why| {
            invalid_argument(&format!("invalid {SESSION_HEADER} metadata: {why}"))
        })
    }
}
