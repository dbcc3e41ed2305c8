//! `riskgate serve` (feature `server`): the engine behind an HTTP server that speaks the Authsignal server API,
//! so Authsignal's official server SDKs can call riskgate unchanged by pointing their API URL at it.
//!
//! The binary's `serve` subcommand is the usual way in; the pieces are public so that an application can also
//! mount the API in its own tokio program:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use riskgate::server::{App, Secret};
//!
//! let engine = riskgate::Engine::builder().rules_dir("rules")?.build()?;
//! let settings = engine.ruleset().server_settings().clone();
//! let app = App::new(engine, Secret::new("sk_test_change_me")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! riskgate::server::run(listener, app, &settings, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! Endpoints: `POST /v1/users/{userId}/actions/{action}` (track), `GET` and `PATCH
//! /v1/users/{userId}/actions/{action}/{idempotencyKey}` (get and update an action), `POST /v1/validate`
//! (validate a challenge token), all behind HTTP Basic with the API secret as the username; `GET /health` and
//! `GET /metrics` without authentication.

mod api;
mod app;
mod auth;
mod metrics;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceBuilder;

pub use crate::server_settings::{LogFormat, ServerSettings};
pub use app::App;
pub use auth::{Secret, SECRET_ENV};

use api::{ApiError, Decided, ErrorCode};

impl App {
    /// The HTTP API as an axum router, with every limit of `settings` but the connection-level ones (header
    /// size and time, connection count), which [`run`] applies.
    pub fn router(&self, settings: &ServerSettings) -> Router {
        let api = Router::new()
            .route("/v1/users/{user_id}/actions/{action}", post(api::track))
            .route(
                "/v1/users/{user_id}/actions/{action}/{key}",
                get(api::get_action).patch(api::update_action),
            )
            .route("/v1/validate", post(api::validate))
            .route_layer(middleware::from_fn_with_state(self.clone(), require_secret));
        let app = self.clone();
        Router::new()
            .merge(api)
            .route("/health", get(api::health))
            .route("/metrics", get(api::metrics))
            .fallback(api::not_found)
            .layer(DefaultBodyLimit::max(settings.max_body_bytes))
            .with_state(self.clone())
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                settings.max_body_bytes,
            ))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                settings.request_timeout,
            ))
            .layer(
                ServiceBuilder::new()
                    .layer(axum::error_handling::HandleErrorLayer::new(
                        |_: tower::BoxError| async {
                            ApiError::for_status(StatusCode::SERVICE_UNAVAILABLE).into_response()
                        },
                    ))
                    .load_shed()
                    // One budget for the whole server (a plain concurrency limit would be one per route).
                    .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                        settings.max_concurrent_requests,
                    )),
            )
            .layer(middleware::from_fn_with_state(app, observe))
    }
}

/// Refuses a request without the right secret with 401, before anything reads its body.
async fn require_secret(State(app): State<App>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| auth::basic_username(v.as_bytes()))
        .is_some_and(|user| app.inner.secret.matches(&user));
    if ok {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response_with_challenge()
    }
}

/// The route a path belongs to, for metrics and logs (never the path itself: it holds user ids).
fn route_of(method: &Method, path: &str) -> &'static str {
    let mut seg = path.trim_start_matches('/').split('/');
    let parts: [Option<&str>; 7] = std::array::from_fn(|_| seg.next());
    match parts {
        [Some("v1"), Some("users"), Some(_), Some("actions"), Some(_), None, _] => "track",
        [Some("v1"), Some("users"), Some(_), Some("actions"), Some(_), Some(_), None] => {
            if method == Method::PATCH {
                "update_action"
            } else {
                "get_action"
            }
        }
        [Some("v1"), Some("validate"), None, ..] => "validate",
        [Some("health"), None, ..] => "health",
        [Some("metrics"), None, ..] => "metrics",
        _ => "other",
    }
}

/// Times, counts and logs every request, and gives the SDKs' JSON error body to a bare error a layer made
/// (a timeout, a body limit, a refused method, an overload).
async fn observe(State(app): State<App>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_of(req.method(), req.uri().path());
    let method = req.method().clone();
    let m = &app.inner.metrics;
    m.in_flight.fetch_add(1, Ordering::Relaxed);
    let mut resp = next.run(req).await;
    m.in_flight.fetch_sub(1, Ordering::Relaxed);
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        resp = ApiError::for_status(status).into_response();
    }
    let took = started.elapsed();
    m.response(route, status.as_u16(), took);
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let error = resp.extensions().get::<ErrorCode>().map(|c| c.0);
    match resp.extensions().get::<Decided>() {
        Some(d) => tracing::info!(
            method = %method,
            route,
            status = status.as_u16(),
            micros,
            user_id = %d.user_id,
            action = %d.action,
            state = d.state,
            "request"
        ),
        None => tracing::info!(
            method = %method,
            route,
            status = status.as_u16(),
            micros,
            error,
            "request"
        ),
    }
    resp
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits up to
/// `[server] shutdown_timeout` for the requests in flight to finish.
///
/// Connections are HTTP/1.1 with keep-alive; a client that takes longer than `header_timeout` to send its
/// headers (or leaves a connection idle that long) is disconnected, headers larger than `max_header_bytes`
/// get 431, and connections beyond `max_connections` are closed as they are accepted.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: App,
    settings: &ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = app.router(settings);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!("connection refused: `[server] max_connections` reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("every connection closed"),
        () = tokio::time::sleep(settings.shutdown_timeout) => {
            tracing::warn!("`[server] shutdown_timeout` passed with requests still in flight");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_without_their_values() {
        let m = Method::POST;
        assert_eq!(route_of(&m, "/v1/users/u/actions/signIn"), "track");
        assert_eq!(
            route_of(&Method::GET, "/v1/users/u/actions/signIn/k"),
            "get_action"
        );
        assert_eq!(
            route_of(&Method::PATCH, "/v1/users/u/actions/signIn/k"),
            "update_action"
        );
        assert_eq!(route_of(&m, "/v1/validate"), "validate");
        assert_eq!(route_of(&m, "/v1/users/u/actions/a/k/x"), "other");
        assert_eq!(route_of(&m, "/"), "other");
    }
}
