//! The web console: static files from `console/`, compiled into this binary so a deploy
//! stays one step and nothing is fetched at run time.
//!
//! These paths are pages for people, not API operations, so they stay out of `ROUTES` and
//! openapi.json (which describe the customer API). The console itself calls only that API.
//! Everything here is public (template.yaml gives the events `Authorizer: NONE`): the
//! files hold no data; the data comes from `/api/...` with the signed-in user's token.

use lambda_http::http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::json;
use std::sync::OnceLock;

/// One file of the console.
struct Asset {
    /// Under `/console/`.
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! assets {
    ($(($name:literal, $content_type:expr)),+ $(,)?) => {
        &[$(Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("../../../console/", $name)),
        }),+]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = assets!(
    ("index.html", "text/html; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("favicon.svg", "image/svg+xml"),
    ("app.js", JS),
    ("api.js", JS),
    ("auth.js", JS),
    ("dom.js", JS),
    ("views/queues.js", JS),
    ("views/tasks.js", JS),
    ("views/task.js", JS),
    ("views/chain.js", JS),
    ("views/batches.js", JS),
    ("views/agents.js", JS),
    ("views/schedules.js", JS),
);

/// Paths of the single-page app: each answers `index.html`, whose script reads the rest.
const PAGES: &[&str] = &["", "callback"];

/// What the console needs to know about its deployment, fixed at cold start.
#[derive(Debug, Clone, Default)]
pub struct ConsoleSettings {
    /// Origins besides our own that the page may `fetch`: where presigned S3 uploads go
    /// (a batch file from the upload form).
    pub upload_origins: Vec<String>,
}

impl ConsoleSettings {
    /// The S3 origin presigned URLs point at: the emulator's endpoint when one is set
    /// (path-style URLs), else the batch bucket's virtual-hosted endpoint on AWS.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let origin = match var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")) {
            Some(endpoint) => origin_of(&endpoint),
            None => match (var("BATCH_BUCKET"), var("AWS_REGION")) {
                (Some(bucket), Some(region)) => {
                    Some(format!("https://{bucket}.s3.{region}.amazonaws.com"))
                }
                _ => None,
            },
        };
        Self {
            upload_origins: origin.into_iter().collect(),
        }
    }
}

/// `scheme://host[:port]` of a URL; `None` for anything that is not one.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    };
    (matches!(scheme, "http" | "https") && safe(host)).then(|| format!("{scheme}://{host}"))
}

/// Cognito hosted UI settings, from the stage variables template.yaml sets on AWS. They
/// cannot be the function's environment: the app client's callback URL names the API, whose
/// definition names this function, so an environment naming the client would be a cycle.
/// Locally there are none, and the console asks for a pasted token instead.
struct HostedUi {
    /// `<prefix>.auth.<region>.amazoncognito.com`
    domain: String,
    client_id: String,
}

fn hosted_ui(request: &Request) -> Option<HostedUi> {
    let variables = request.stage_variables_ref()?;
    let domain = variables.first("consoleAuthDomain")?;
    let client_id = variables.first("consoleClientId")?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
    };
    (plain(domain) && plain(client_id)).then(|| HostedUi {
        domain: domain.to_owned(),
        client_id: client_id.to_owned(),
    })
}

/// Whether the console answers this path: `/`, `/console` and everything under it.
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path == "/console" || path.starts_with("/console/")
}

/// Answers a console path (see [`is_console_path`]). Never fails: unknown files are a 404.
pub fn serve(settings: &ConsoleSettings, request: &Request, path: &str) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = error(405, "method_not_allowed", "the console is read with GET");
        response
            .headers_mut()
            .insert("allow", "GET, HEAD".parse().expect("valid header"));
        return response;
    }
    if path == "/" || path == "/console" {
        return redirect(&redirect_target(request, path));
    }
    let name = path.strip_prefix("/console/").unwrap_or_default();
    let ui = hosted_ui(request);
    if name == "config.json" {
        let config = match &ui {
            Some(ui) => json!({"auth": "cognito", "domain": ui.domain, "clientId": ui.client_id}),
            None => json!({"auth": "token"}),
        };
        return file(
            settings,
            ui.as_ref(),
            "application/json",
            config.to_string(),
            NO_CACHE,
            request,
        );
    }
    let page = PAGES.contains(&name);
    let asset_name = if page { "index.html" } else { name };
    match ASSETS.iter().find(|a| a.name == asset_name) {
        Some(asset) => {
            let cache = if page { NO_CACHE } else { SHORT_CACHE };
            file(
                settings,
                ui.as_ref(),
                asset.content_type,
                asset.body.to_owned(),
                cache,
                request,
            )
        }
        None => error(
            404,
            "not_found",
            &format!("the console has no file '{name}'"),
        ),
    }
}

/// The page revalidates every time (it names the other files); the rest may be reused for
/// five minutes, then revalidated by ETag. File names carry no content hash, so a longer
/// lifetime would mix old and new files after a deploy.
const NO_CACHE: &str = "no-cache";
const SHORT_CACHE: &str = "public, max-age=300";

fn file(
    settings: &ConsoleSettings,
    ui: Option<&HostedUi>,
    content_type: &str,
    body: String,
    cache: &str,
    request: &Request,
) -> Response<Body> {
    let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
    let fresh = request
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let builder = Response::builder()
        .header("content-type", content_type)
        .header("cache-control", cache)
        .header("etag", &etag);
    let builder = security_headers(builder, settings, ui);
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Body::Empty)
    } else if request.method() == Method::HEAD {
        (StatusCode::OK, Body::Empty)
    } else {
        (StatusCode::OK, Body::Text(body))
    };
    builder
        .status(status)
        .body(body)
        .expect("static response parts are valid")
}

/// A strict policy: scripts and styles only from our own files (no inline code, no eval),
/// requests only to the API, the upload origin and Cognito's token endpoint; no framing.
pub fn content_security_policy(settings: &ConsoleSettings, cognito_domain: Option<&str>) -> String {
    let mut connect = vec!["'self'".to_owned()];
    connect.extend(settings.upload_origins.iter().cloned());
    connect.extend(cognito_domain.map(|d| format!("https://{d}")));
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        connect.join(" ")
    )
}

fn security_headers(
    builder: lambda_http::http::response::Builder,
    settings: &ConsoleSettings,
    ui: Option<&HostedUi>,
) -> lambda_http::http::response::Builder {
    let csp = content_security_policy(settings, ui.map(|u| u.domain.as_str()));
    builder
        .header("content-security-policy", csp)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("x-frame-options", "DENY")
}

/// A relative `Location`, so it holds behind any stage prefix or custom domain:
/// `/prod/` and `/prod/console` both lead to `/prod/console/`.
fn redirect_target(request: &Request, path: &str) -> String {
    if path == "/console" {
        return "console/".to_owned();
    }
    // `https://…/prod` (no slash) also reaches `/`; relative to it, `console/` would
    // leave the stage, so name the stage.
    if let Some(RequestContext::ApiGatewayV1(ctx)) = request.request_context_ref() {
        if let (Some(stage), Some(seen)) = (&ctx.stage, &ctx.path) {
            if *seen == format!("/{stage}") {
                return format!("{stage}/console/");
            }
        }
    }
    "console/".to_owned()
}

fn redirect(location: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header("location", location)
        .header("cache-control", NO_CACHE)
        .body(Body::Empty)
        .expect("static response parts are valid")
}

fn error(status: u16, code: &str, message: &str) -> Response<Body> {
    crate::response::json(
        status,
        &json!({"error": {"code": code, "message": message, "fields": {}}}),
    )
}

/// A content hash for ETags (not for security); the files are small enough to hash per request.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The largest file, for the docs' response-size bound (Lambda answers at most 6 MB).
pub fn largest_asset_bytes() -> usize {
    static LARGEST: OnceLock<usize> = OnceLock::new();
    *LARGEST.get_or_init(|| ASSETS.iter().map(|a| a.body.len()).max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_of_endpoints() {
        assert_eq!(
            origin_of("http://127.0.0.1:5050").as_deref(),
            Some("http://127.0.0.1:5050")
        );
        assert_eq!(
            origin_of("https://s3.example.com/path?x").as_deref(),
            Some("https://s3.example.com")
        );
        assert_eq!(origin_of("ftp://x"), None);
        assert_eq!(origin_of("http://a b"), None);
        assert_eq!(origin_of("http://x;script-src *"), None);
    }

    #[test]
    fn console_paths() {
        assert!(is_console_path("/"));
        assert!(is_console_path("/console"));
        assert!(is_console_path("/console/app.js"));
        assert!(!is_console_path("/consoles"));
        assert!(!is_console_path("/api/tasks"));
    }

    #[test]
    fn every_asset_is_well_under_lambdas_response_limit() {
        // API Gateway passes text through as is; 6 MB is Lambda's synchronous response limit.
        assert!(
            largest_asset_bytes() < 1024 * 1024,
            "{}",
            largest_asset_bytes()
        );
    }
}
