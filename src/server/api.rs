//! The Authsignal server API subset: request parsing, the four handlers and the wire forms they answer in.
//!
//! Names, bodies and status codes follow what the official server SDKs send and parse (`@authsignal/node`,
//! `authsignal` on PyPI): attributes in camelCase (snake_case is accepted too, as the Python SDK sends what it
//! is given), `REVIEW_REQUIRED` for the review state, and errors as `{"error", "errorCode",
//! "errorDescription"}` (Node reads `error`, Python `errorCode`).

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

use super::metrics::wire_state;
use super::App;
use crate::{
    CustomValue, RuleError, RuleId, State as RiskState, TrackAttributes, TrackError, TrackRequest,
    TrackResponse,
};

/// A refused request, as the SDKs parse it.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    error: &'a str,
    error_code: &'a str,
    error_description: &'a str,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            description: description.into(),
        }
    }

    pub(crate) fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The request is unauthorized. Check that your API key and region base URL are correctly configured.",
        )
    }

    /// The JSON error for a status a layer produced without a body (timeouts, limits, routing).
    pub(crate) fn for_status(status: StatusCode) -> Self {
        let (code, description) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such endpoint"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this endpoint does not take this method",
            ),
            StatusCode::REQUEST_TIMEOUT => (
                "request_timeout",
                "the request took longer than `[server] request_timeout`",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload_too_large",
                "the request body is larger than `[server] max_body_bytes`",
            ),
            StatusCode::SERVICE_UNAVAILABLE => (
                "server_busy",
                "too many requests in flight (`[server] max_concurrent_requests`): retry shortly",
            ),
            StatusCode::UNAUTHORIZED => return ApiError::unauthorized(),
            s if s.is_server_error() => ("internal_error", "the server failed to answer"),
            _ => ("invalid_request", "the request was refused"),
        };
        ApiError::new(status, code, description)
    }

    pub(crate) fn into_response_with_challenge(self) -> Response {
        let mut r = self.into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"riskgate\""),
        );
        r
    }
}

impl From<TrackError> for ApiError {
    fn from(e: TrackError) -> Self {
        let status = match &e {
            TrackError::ActionNotFound { .. } => StatusCode::NOT_FOUND,
            TrackError::IdempotencyConflict { .. } | TrackError::InvalidTransition { .. } => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json(
            self.status,
            &ErrorBody {
                error: self.code,
                error_code: self.code,
                error_description: &self.description,
            },
        );
        r.extensions_mut().insert(ErrorCode(self.code));
        r
    }
}

/// The error code of a refused request, for the request log.
#[derive(Clone, Copy)]
pub(crate) struct ErrorCode(pub &'static str);

/// What a track request decided, for the request log (never the token).
#[derive(Clone)]
pub(crate) struct Decided {
    pub user_id: String,
    pub action: String,
    pub state: &'static str,
}

/// A JSON response with exactly `application/json` as its type (the Python SDK reads a body only then).
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => {
            let mut r = Response::new(Body::from(
                r#"{"error":"internal_error","errorCode":"internal_error","errorDescription":"the response could not be written"}"#,
            ));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}

/// The track body: Authsignal's `TrackAttributes`, in camelCase or snake_case.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireAttributes {
    #[serde(default, alias = "idempotency_key")]
    idempotency_key: Option<String>,
    #[serde(default, alias = "device_id")]
    device_id: Option<String>,
    #[serde(default, alias = "ip_address")]
    ip_address: Option<String>,
    #[serde(default, alias = "user_agent")]
    user_agent: Option<String>,
    #[serde(default, alias = "redirect_url")]
    redirect_url: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default, alias = "phone_number")]
    phone_number: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    custom: Option<BTreeMap<String, CustomValue>>,
    // Authsignal attributes for its hosted challenge pages and authenticators: accepted, not used.
    #[serde(default, alias = "redirect_to_settings")]
    redirect_to_settings: Option<IgnoredAny>,
    #[serde(default)]
    scope: Option<IgnoredAny>,
    #[serde(default, alias = "challenge_id")]
    challenge_id: Option<IgnoredAny>,
    #[serde(default)]
    locale: Option<IgnoredAny>,
    #[serde(default, alias = "custom_domain")]
    custom_domain: Option<IgnoredAny>,
}

impl WireAttributes {
    fn into_attributes(self) -> TrackAttributes {
        let _ignored = (
            self.redirect_to_settings,
            self.scope,
            self.challenge_id,
            self.locale,
            self.custom_domain,
        );
        TrackAttributes {
            idempotency_key: self.idempotency_key,
            device_id: self.device_id,
            ip_address: self.ip_address,
            user_agent: self.user_agent,
            redirect_url: self.redirect_url,
            email: self.email,
            phone_number: self.phone_number,
            username: self.username,
            custom: self.custom.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    state: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ValidateBody {
    token: String,
    #[serde(default, alias = "user_id")]
    user_id: Option<String>,
    #[serde(default, alias = "actionCode", alias = "action_code")]
    action: Option<String>,
}

/// Parses a JSON body; an empty body is `{}`. Syntax errors are `invalid_json`, wrong fields
/// `invalid_request` naming the field under `prefix`.
fn parse_body<T: DeserializeOwned>(body: &[u8], prefix: &str) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!(
                "invalid JSON: the body is not UTF-8 (byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    let de = &mut serde_json::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize::<_, T>(&mut *de);
    if parsed.is_ok() {
        // Anything but whitespace after the document is malformed JSON.
        de.end().map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("invalid JSON: {e}"),
            )
        })?;
    }
    parsed.map_err(|e| {
        use serde_json::error::Category;
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Data => {
                let field = match (prefix, path.as_str()) {
                    ("", "." | "") => "request".to_owned(),
                    (p, "." | "") => p.to_owned(),
                    ("", p) => p.to_owned(),
                    (pre, p) => format!("{pre}.{p}"),
                };
                let msg = inner.to_string();
                let msg = msg.find(" at line ").map_or(&*msg, |i| &msg[..i]);
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("invalid `{field}`: {msg}"),
                )
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("invalid JSON: {inner}"),
            ),
        }
    })
}

fn body_error(e: &BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body could not be read",
        )
    }
}

fn path_error(e: &PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!("invalid path: {}", e.body_text().to_lowercase()),
    )
}

/// Refuses `.` and `..` as a path segment value: proxies and clients may resolve them, so the action would not
/// be the one the caller named.
fn check_segment(field: &str, v: &str) -> Result<(), ApiError> {
    if v == "." || v == ".." {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("invalid `{field}`: `{v}` is not allowed as a path segment"),
        ));
    }
    Ok(())
}

/// Checks the identity in a get or update path without touching the engine.
fn check_identity(user_id: &str, action: &str, key: &str) -> Result<(), ApiError> {
    check_segment("userId", user_id)?;
    check_segment("action", action)?;
    check_segment("idempotencyKey", key)?;
    let mut probe = TrackRequest::new(user_id, action);
    probe.attributes.idempotency_key = Some(key.to_owned());
    probe.validate().map_err(|e| match e {
        TrackError::InvalidRequest { field, reason } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "invalid `{}`: {reason}",
                field.trim_start_matches("attributes.")
            ),
        ),
        other => other.into(),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TrackOut<'a> {
    state: &'static str,
    idempotency_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    /// riskgate keeps no authenticators.
    is_enrolled: bool,
    rule_ids: &'a [RuleId],
    #[serde(skip_serializing_if = "Option::is_none")]
    priority_rule_id: Option<&'a RuleId>,
    #[serde(skip_serializing_if = "<[RuleId]>::is_empty")]
    shadow_rule_ids: &'a [RuleId],
    #[serde(skip_serializing_if = "<[RuleError]>::is_empty")]
    errors: &'a [RuleError],
}

fn track_out(r: &TrackResponse) -> TrackOut<'_> {
    TrackOut {
        state: wire_state(r.state),
        idempotency_key: &r.idempotency_key,
        token: r.token.as_deref(),
        url: r.url.as_deref(),
        is_enrolled: false,
        rule_ids: &r.rule_ids,
        priority_rule_id: r.priority_rule_id.as_ref(),
        shadow_rule_ids: &r.shadow_rule_ids,
        errors: &r.errors,
    }
}

/// Runs a track call. With every rule compiled to native code a decision takes microseconds and runs right here
/// (measured fastest: handing it to another thread costs more than the decision). A ruleset with interpreted
/// rules may take up to its `[limits] time_limit` per rule, so its decisions leave the async workers:
/// `block_in_place` on a multi-threaded runtime, `spawn_blocking` otherwise.
async fn decide(
    app: &App,
    req: TrackRequest,
) -> Result<(TrackRequest, Result<TrackResponse, TrackError>), ApiError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let engine = &app.inner.engine;
    if app
        .inner
        .all_compiled
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        // Inline in memory; on a remote store it awaits Redis instead of blocking this worker.
        let r = engine.track_async(&req).await;
        Ok((req, r))
    } else if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        let r = tokio::task::block_in_place(|| engine.track(&req));
        Ok((req, r))
    } else {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || {
            let r = engine.track(&req);
            (req, r)
        })
        .await
        .map_err(|_| ApiError::for_status(StatusCode::INTERNAL_SERVER_ERROR))
    }
}

/// `POST /v1/users/{userId}/actions/{action}`: the body is the attributes.
pub(crate) async fn track(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let Path((user_id, action)) = path.map_err(|e| path_error(&e))?;
        check_segment("userId", &user_id)?;
        check_segment("action", &action)?;
        let body = body.map_err(|e| body_error(&e))?;
        let attributes = parse_body::<WireAttributes>(&body, "attributes")?.into_attributes();
        let req = TrackRequest {
            user_id,
            action,
            attributes,
        };
        let started = Instant::now();
        let (req, resp) = decide(&app, req).await?;
        let resp = resp?;
        app.inner
            .metrics
            .track(&resp, &req.action, started.elapsed());
        let mut r = json(StatusCode::OK, &track_out(&resp));
        r.extensions_mut().insert(Decided {
            user_id: req.user_id,
            action: req.action,
            state: wire_state(resp.state),
        });
        Ok::<_, ApiError>(r)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A stored action in the SDKs' `GetActionResponse` form, with riskgate's fields beside it.
fn action_out(app: &App, rec: &crate::ActionRecord) -> Response {
    let Ok(mut v) = serde_json::to_value(rec) else {
        return ApiError::for_status(StatusCode::INTERNAL_SERVER_ERROR).into_response();
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("state".into(), wire_state(rec.state).into());
        o.insert("outcome".into(), wire_state(rec.outcome).into());
        let rules = app.inner.engine.ruleset();
        let described: BTreeMap<_, _> = rules
            .rules()
            .filter(|r| rec.rule_ids.contains(&r.id))
            .map(|r| (r.id.clone(), r.description.clone()))
            .collect();
        let list: Vec<serde_json::Value> = rec
            .rule_ids
            .iter()
            .map(|id| {
                let mut rule = serde_json::Map::new();
                rule.insert("ruleId".into(), id.as_str().into());
                rule.insert("name".into(), id.as_str().into());
                if let Some(Some(d)) = described.get(id) {
                    rule.insert("description".into(), d.as_str().into());
                }
                serde_json::Value::Object(rule)
            })
            .collect();
        o.insert("rules".into(), list.into());
    }
    json(StatusCode::OK, &v)
}

/// `GET /v1/users/{userId}/actions/{action}/{idempotencyKey}`.
pub(crate) async fn get_action(
    State(app): State<App>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Response {
    let result = async {
        let Path((user_id, action, key)) = path.map_err(|e| path_error(&e))?;
        check_identity(&user_id, &action, &key)?;
        // In memory this is the sync call; on a remote store it awaits Redis instead of blocking this worker.
        let rec = app
            .inner
            .engine
            .get_action_async(&user_id, &action, &key)
            .await
            .ok_or(TrackError::ActionNotFound {
                user_id,
                action,
                idempotency_key: key,
            })?;
        Ok::<_, ApiError>(action_out(&app, &rec))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `PATCH /v1/users/{userId}/actions/{action}/{idempotencyKey}` with `{"state": …}`.
pub(crate) async fn update_action(
    State(app): State<App>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let Path((user_id, action, key)) = path.map_err(|e| path_error(&e))?;
        check_identity(&user_id, &action, &key)?;
        let body = body.map_err(|e| body_error(&e))?;
        let UpdateBody { state } = parse_body(&body, "")?;
        let to = RiskState::from_wire(&state).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "invalid `state`: `{}` is not a state: expected CHALLENGE_SUCCEEDED, CHALLENGE_FAILED, \
                     REVIEW_SUCCEEDED or REVIEW_FAILED",
                    state.chars().take(64).flat_map(char::escape_default).collect::<String>()
                ),
            )
        })?;
        let rec = app
            .inner
            .engine
            .update_action_async(&user_id, &action, &key, to)
            .await?;
        Ok::<_, ApiError>(action_out(&app, &rec))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/validate` with `{"token", "userId"?, "action"?}`.
pub(crate) async fn validate(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = body.map_err(|e| body_error(&e))?;
        let b: ValidateBody = parse_body(&body, "")?;
        let mut check = app.inner.engine.validate_challenge_async(&b.token).await;
        // A token presented for another user or action is not valid for this one (it is used up all the same
        // if it was otherwise valid: fail closed).
        let mut error = check.reason.map(|r| r.as_str());
        if b.user_id
            .as_ref()
            .is_some_and(|u| check.user_id.as_ref() != Some(u))
            && check.state.is_some()
        {
            check.is_valid = false;
            error = error.or(Some("user_mismatch"));
        }
        if b.action
            .as_ref()
            .is_some_and(|a| check.action.as_ref() != Some(a))
            && check.state.is_some()
        {
            check.is_valid = false;
            error = error.or(Some("action_mismatch"));
        }
        let mut v = serde_json::to_value(&check)
            .map_err(|_| ApiError::for_status(StatusCode::INTERNAL_SERVER_ERROR))?;
        if let Some(o) = v.as_object_mut() {
            if let Some(s) = check.state {
                o.insert("state".into(), wire_state(s).into());
            }
            if let Some(a) = &check.action {
                o.insert("actionCode".into(), a.as_str().into());
            }
            if let Some(e) = error {
                o.insert("error".into(), e.into());
            }
        }
        Ok::<_, ApiError>(json(StatusCode::OK, &v))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /health`: 200 with the number of rules being served.
pub(crate) async fn health(State(app): State<App>) -> Response {
    let rules = app.inner.engine.ruleset().len();
    json(
        StatusCode::OK,
        &serde_json::json!({ "status": "ok", "rules": rules }),
    )
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics(State(app): State<App>) -> Response {
    let mut r = Response::new(Body::from(
        app.inner.metrics.render(Some(&app.inner.engine)),
    ));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    ApiError::for_status(StatusCode::NOT_FOUND).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_in_either_case_and_refuse_unknown_fields() {
        let a: WireAttributes = parse_body(
            br#"{"ipAddress":"203.0.113.1","device_id":"d","redirectToSettings":true}"#,
            "attributes",
        )
        .unwrap();
        let a = a.into_attributes();
        assert_eq!(a.ip_address.as_deref(), Some("203.0.113.1"));
        assert_eq!(a.device_id.as_deref(), Some("d"));
        let e = parse_body::<WireAttributes>(br#"{"colour":"red"}"#, "attributes").unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        assert!(e.description.contains("unknown field `colour`"), "{e:?}");
        let e = parse_body::<WireAttributes>(br#"{"custom":{"k":[1]}}"#, "attributes").unwrap_err();
        assert!(
            e.description.starts_with("invalid `attributes.custom.k`"),
            "{e:?}"
        );
        let e = parse_body::<WireAttributes>(b"{\"email\":", "attributes").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse_body::<WireAttributes>(b"{} x", "attributes").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse_body::<WireAttributes>(b"{\"email\":\"\xff\"}", "attributes").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert!(parse_body::<WireAttributes>(b"  ", "attributes").is_ok());
    }

    #[test]
    fn errors_carry_both_sdks_fields() {
        let r = ApiError::from(TrackError::InvalidJson("x".into()));
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let body = serde_json::to_value(ErrorBody {
            error: r.code,
            error_code: r.code,
            error_description: &r.description,
        })
        .unwrap();
        assert_eq!(body["error"], "invalid_json");
        assert_eq!(body["errorCode"], "invalid_json");
        assert_eq!(body["errorDescription"], "invalid JSON: x");
    }
}
