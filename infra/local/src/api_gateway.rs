//! A local stand-in for API Gateway (REST API, proxy integration): matches the
//! function's `Api` events from template.yaml, runs the authorizer (HS256 JWT
//! instead of Cognito), and hands the function an API Gateway proxy event.

use crate::jwt;
use crate::provision::FunctionEvent;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// API Gateway's own payload limit.
const MAX_PAYLOAD_BYTES: usize = 10 * 1024 * 1024;
pub const STAGE: &str = "prod";

/// One `Type: Api` event of a function.
#[derive(Debug, Clone)]
pub struct ApiRoute {
    pub path: String,
    pub method: String,
    pub requires_auth: bool,
}

impl ApiRoute {
    pub fn from_events(events: &[FunctionEvent]) -> Vec<ApiRoute> {
        events
            .iter()
            .filter_map(|e| match e {
                FunctionEvent::Api {
                    path,
                    method,
                    requires_auth,
                    ..
                } => Some(ApiRoute {
                    path: path.clone(),
                    method: method.to_ascii_uppercase(),
                    requires_auth: *requires_auth,
                }),
                _ => None,
            })
            .collect()
    }

    /// Path parameters when `path` matches this route's template (`{name}`, `{proxy+}`).
    fn matches(&self, method: &str, path: &str) -> Option<BTreeMap<String, String>> {
        if self.method != "ANY" && self.method != method {
            return None;
        }
        let mut params = BTreeMap::new();
        let template: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        let actual: Vec<&str> = path.trim_matches('/').split('/').collect();
        for (i, part) in template.iter().enumerate() {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix("+}")) {
                let rest = actual
                    .get(i..)
                    .filter(|r| !r.is_empty() && !r[0].is_empty())?;
                params.insert(name.to_owned(), rest.join("/"));
                return Some(params);
            }
            let value = actual.get(i)?;
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                params.insert(name.to_owned(), (*value).to_owned());
            } else if part != value {
                return None;
            }
        }
        (template.len() == actual.len()).then_some(params)
    }

    /// Literal routes win over templated ones, as in API Gateway.
    fn specificity(&self) -> usize {
        self.path.split('/').filter(|p| !p.starts_with('{')).count()
    }
}

/// The function behind the API: takes the proxy event, returns the HTTP response the
/// gateway sends back (the function's own, or the gateway's error when the integration failed).
pub type Invoke = Arc<
    dyn Fn(Value) -> Pin<Box<dyn Future<Output = hyper::Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

pub struct ApiGateway {
    routes: Vec<ApiRoute>,
    invoke: Invoke,
    jwt_secret: Vec<u8>,
}

impl ApiGateway {
    pub fn new(mut routes: Vec<ApiRoute>, invoke: Invoke, jwt_secret: Vec<u8>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        Self {
            routes,
            invoke,
            jwt_secret,
        }
    }

    /// Serves until `shutdown` flips to true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.changed() => break,
            };
            let Ok((stream, peer)) = accepted else {
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, peer).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    }

    async fn handle(
        &self,
        request: hyper::Request<Incoming>,
        peer: SocketAddr,
    ) -> hyper::Response<Full<Bytes>> {
        let request_id = ulid::Ulid::new().to_string();
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_PAYLOAD_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return gateway_error(413, "payload_too_large", "request body is too large"),
        };
        let method = parts.method.as_str().to_owned();
        let path = parts.uri.path().to_owned();
        let Some((route, path_params)) = self
            .routes
            .iter()
            .find_map(|r| r.matches(&method, &path).map(|p| (r, p)))
        else {
            return gateway_error(404, "no_route", &format!("no route for {method} {path}"));
        };
        let mut authorizer = Map::new();
        if route.requires_auth {
            match self.authorize(&parts.headers) {
                Ok(claims) => {
                    authorizer.insert("claims".into(), Value::Object(claims));
                }
                Err(reason) => {
                    tracing::debug!(%reason, "request refused by the local authorizer");
                    return gateway_error(401, "unauthorized", "missing or invalid bearer token");
                }
            }
        }
        let event = proxy_event(
            &parts,
            &body,
            route,
            path_params,
            authorizer,
            &request_id,
            peer,
        );
        let started = std::time::Instant::now();
        let response = (self.invoke)(event).await;
        tracing::info!(
            %method, %path, status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64, "api request"
        );
        response
    }

    fn authorize(&self, headers: &http::HeaderMap) -> Result<Map<String, Value>, &'static str> {
        let header = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("no Authorization header")?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or("not a bearer token")?;
        let claims = jwt::verify(
            &self.jwt_secret,
            token.trim(),
            chrono::Utc::now().timestamp(),
        )?;
        // Cognito hands claims to the integration as strings.
        Ok(claims
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, Value::String(text))
            })
            .collect())
    }
}

fn proxy_event(
    parts: &http::request::Parts,
    body: &Bytes,
    route: &ApiRoute,
    path_params: BTreeMap<String, String>,
    authorizer: Map<String, Value>,
    request_id: &str,
    peer: SocketAddr,
) -> Value {
    let mut headers = Map::new();
    let mut multi_headers: Map<String, Value> = Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.insert(name.as_str().to_owned(), json!(value));
        match multi_headers.get_mut(name.as_str()) {
            Some(Value::Array(values)) => values.push(json!(value)),
            _ => {
                multi_headers.insert(name.as_str().to_owned(), json!([value]));
            }
        }
    }
    let mut query = Map::new();
    let mut multi_query: Map<String, Value> = Map::new();
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        query.insert(k.to_string(), json!(v));
        match multi_query.get_mut(k.as_ref()) {
            Some(Value::Array(values)) => values.push(json!(v)),
            _ => {
                multi_query.insert(k.to_string(), json!([v]));
            }
        }
    }
    let (body, is_base64) = match std::str::from_utf8(body) {
        _ if body.is_empty() => (Value::Null, false),
        Ok(text) => (json!(text), false),
        Err(_) => {
            use base64::Engine;
            (
                json!(base64::engine::general_purpose::STANDARD.encode(body)),
                true,
            )
        }
    };
    let or_null = |m: Map<String, Value>| {
        if m.is_empty() {
            Value::Null
        } else {
            Value::Object(m)
        }
    };
    let path = parts.uri.path();
    json!({
        "resource": route.path,
        "path": path,
        "httpMethod": parts.method.as_str(),
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": or_null(query),
        "multiValueQueryStringParameters": or_null(multi_query),
        "pathParameters": if path_params.is_empty() { Value::Null } else { json!(path_params) },
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "resourcePath": route.path,
            "httpMethod": parts.method.as_str(),
            "path": format!("/{STAGE}{path}"),
            "stage": STAGE,
            "requestId": request_id,
            "requestTimeEpoch": chrono::Utc::now().timestamp_millis(),
            "protocol": "HTTP/1.1",
            "identity": {"sourceIp": peer.ip().to_string()},
            "authorizer": authorizer,
        },
        "body": body,
        "isBase64Encoded": is_base64,
    })
}

/// A response of the in-process API handler as the gateway sends it.
pub fn to_hyper(
    response: lambda_http::Response<lambda_http::Body>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = response.into_parts();
    let bytes = match body {
        lambda_http::Body::Empty => Bytes::new(),
        lambda_http::Body::Text(text) => Bytes::from(text),
        lambda_http::Body::Binary(data) => Bytes::from(data),
        _ => Bytes::new(),
    };
    hyper::Response::from_parts(parts, Full::new(bytes))
}

/// API Gateway's integration timeout for REST APIs.
pub const INTEGRATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(29);
/// Lambda's limit on a synchronous response.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// The HTTP response for a Lambda proxy integration's answer (`statusCode`, `headers`,
/// `multiValueHeaders`, `body`, `isBase64Encoded`); a 502 when it is not one, or too large.
pub fn from_proxy_response(body: &[u8]) -> hyper::Response<Full<Bytes>> {
    if body.len() > MAX_RESPONSE_BYTES {
        tracing::warn!(
            bytes = body.len(),
            "the function's response is over Lambda's 6 MB limit"
        );
        return integration_failure();
    }
    let Ok(reply) = serde_json::from_slice::<Value>(body) else {
        return integration_failure();
    };
    let Some(status) = reply["statusCode"]
        .as_u64()
        .and_then(|s| hyper::StatusCode::from_u16(s as u16).ok())
    else {
        return integration_failure();
    };
    let text = reply["body"].as_str().unwrap_or_default();
    let bytes = if reply["isBase64Encoded"] == Value::Bool(true) {
        use base64::Engine as _;
        match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(bytes) => Bytes::from(bytes),
            Err(_) => return integration_failure(),
        }
    } else {
        Bytes::from(text.to_owned())
    };
    let mut response = hyper::Response::builder().status(status);
    if let Some(headers) = reply["multiValueHeaders"].as_object() {
        for (name, values) in headers {
            for value in values.as_array().into_iter().flatten() {
                if let Some(value) = value.as_str() {
                    response = response.header(name, value);
                }
            }
        }
    }
    if let Some(headers) = reply["headers"].as_object() {
        for (name, value) in headers {
            let already = reply["multiValueHeaders"].get(name).is_some();
            if let (Some(value), false) = (value.as_str(), already) {
                response = response.header(name, value);
            }
        }
    }
    response
        .body(Full::new(bytes))
        .unwrap_or_else(|_| integration_failure())
}

/// 502: the function failed or answered with something API Gateway cannot send.
pub fn integration_failure() -> hyper::Response<Full<Bytes>> {
    gateway_error(502, "bad_gateway", "the function failed to answer")
}

/// 504: no answer within the integration timeout.
pub fn integration_timeout() -> hyper::Response<Full<Bytes>> {
    gateway_error(
        504,
        "gateway_timeout",
        "the function did not answer in time",
    )
}

/// Responses API Gateway produces itself, in the project's error shape
/// (template.yaml sets the same bodies through GatewayResponses).
pub fn gateway_error(status: u16, code: &str, message: &str) -> hyper::Response<Full<Bytes>> {
    let body = json!({"error": {"code": code, "message": message, "fields": {}}});
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, method: &str) -> ApiRoute {
        ApiRoute {
            path: path.into(),
            method: method.into(),
            requires_auth: true,
        }
    }

    #[test]
    fn proxy_and_literal_paths() {
        let proxy = route("/api/{proxy+}", "ANY");
        assert_eq!(
            proxy.matches("GET", "/api/tasks/1").unwrap()["proxy"],
            "tasks/1"
        );
        assert!(proxy.matches("GET", "/api").is_none());
        assert!(proxy.matches("GET", "/other/x").is_none());
        let literal = route("/api/openapi.json", "GET");
        assert!(literal.matches("GET", "/api/openapi.json").is_some());
        assert!(literal.matches("POST", "/api/openapi.json").is_none());
        assert!(literal.specificity() > proxy.specificity());
        let param = route("/api/tasks/{id}", "GET");
        assert_eq!(param.matches("GET", "/api/tasks/42").unwrap()["id"], "42");
    }
}
