//! The web console's files: served without a token, with the right content types, a strict
//! Content-Security-Policy, caching headers, redirects to /console/, and 404 for the rest.

use crate::support::{Api, Event};
use api::console::ConsoleSettings;
use api::App;
use lambda_http::{Body, Response};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// A GET of `path` as API Gateway sends it for the console's public routes: no claims.
fn get(path: &str) -> Event {
    let mut event = Event::load("api-no-identity").to("GET", path);
    event.0["resource"] = json!(if path.starts_with("/console/") {
        "/console/{proxy+}"
    } else {
        path
    });
    event.0["pathParameters"] = match path.strip_prefix("/console/") {
        Some(rest) if !rest.is_empty() => json!({ "proxy": rest }),
        _ => Value::Null,
    };
    event
}

struct Page {
    status: u16,
    response: Response<Body>,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
            .unwrap_or("")
    }

    fn text(&self) -> &str {
        match self.response.body() {
            Body::Text(text) => text,
            Body::Empty => "",
            Body::Binary(_) => panic!("the console's files are text"),
            _ => panic!("unexpected body"),
        }
    }
}

async fn send(app: &App, event: &Event) -> Page {
    let response = api::handle(app, event.request()).await;
    Page {
        status: response.status().as_u16(),
        response,
    }
}

fn app() -> App {
    Api::new().app
}

#[tokio::test]
async fn the_console_page_is_html_under_a_strict_policy_without_a_token() {
    let app = app();
    let page = send(&app, &get("/console/")).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("cache-control"), "no-cache");
    assert!(page
        .text()
        .contains(r#"<script type="module" src="app.js">"#));
    let csp = page.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(!csp.contains('*'), "{csp}");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    // The sign-in callback is the same page.
    let callback = send(&app, &get("/console/callback")).await;
    assert_eq!(callback.status, 200);
    assert_eq!(callback.text(), page.text());
}

#[tokio::test]
async fn the_root_and_console_redirect_to_the_console_relative_to_any_stage() {
    let app = app();
    for path in ["/", "/console"] {
        let page = send(&app, &get(path)).await;
        assert_eq!(page.status, 302, "{path}");
        assert_eq!(page.header("location"), "console/", "{path}");
    }
    // https://…/prod without a slash also reaches `/`: relative to it, name the stage.
    let mut bare_stage = get("/");
    bare_stage.0["requestContext"]["path"] = json!("/prod");
    let page = send(&app, &bare_stage).await;
    assert_eq!(page.header("location"), "prod/console/");
}

#[tokio::test]
async fn unknown_files_are_404_and_other_methods_405() {
    let app = app();
    for path in [
        "/console/nope.js",
        "/console/views/../app.js",
        "/console/views/",
        "/console/index.html/x",
    ] {
        let page = send(&app, &get(path)).await;
        assert_eq!(page.status, 404, "{path}: {}", page.text());
        assert_eq!(page.header("content-type"), "application/json");
        let body: Value = serde_json::from_str(page.text()).unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let post = send(&app, &get("/console/").to("POST", "/console/")).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), "GET, HEAD");
}

/// Every file the page and its modules name is served, with its content type: a module
/// that is imported but missing from the binary would break the console at run time.
#[tokio::test]
async fn every_referenced_file_is_served_with_its_content_type() {
    let app = app();
    let mut pending = vec!["index.html".to_owned()];
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let page = send(&app, &get(&format!("/console/{name}"))).await;
        assert_eq!(page.status, 200, "{name}");
        let expected = match name.rsplit('.').next() {
            Some("html") => "text/html; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            Some("json") => "application/json",
            other => panic!("{name}: unexpected extension {other:?}"),
        };
        assert_eq!(page.header("content-type"), expected, "{name}");
        assert!(!page.header("content-security-policy").is_empty(), "{name}");
        let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        for reference in references(page.text()) {
            pending.push(resolve(dir, &reference));
        }
    }
    for expected in [
        "app.js",
        "style.css",
        "favicon.svg",
        "views/chain.js",
        "dom.js",
    ] {
        assert!(seen.contains(expected), "{expected} not reached: {seen:?}");
    }
}

/// Relative `src`/`href` attributes and `from '…'` imports, and `config.json`.
fn references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for marker in ["src=\"", "href=\"", "from '", "'config.json'"] {
        let mut rest = text;
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            if marker == "'config.json'" {
                found.push("config.json".to_owned());
                continue;
            }
            let end = rest.find(['"', '\'']).unwrap_or(0);
            let target = &rest[..end];
            // An import names a module by `./` or `../`; other text may say "from '…".
            let import_like = marker != "from '" || target.starts_with('.');
            let relative = import_like
                && !target.is_empty()
                && !target.starts_with('#')
                && !target.contains(':')
                && !target.contains('$');
            if relative {
                found.push(target.to_owned());
            }
        }
    }
    found
}

fn resolve(dir: &str, reference: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for segment in reference.split('/') {
        match segment {
            "." | "" => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

#[tokio::test]
async fn the_page_holds_no_inline_script_or_style() {
    let app = app();
    let page = send(&app, &get("/console/")).await;
    let html = page.text();
    // Every <script> loads a file; no inline handlers or style attributes, which the
    // policy would block anyway.
    for (at, _) in html.match_indices("<script") {
        let tag = &html[at..at + html[at..].find('>').unwrap()];
        assert!(tag.contains("src="), "inline script: {tag}");
    }
    for forbidden in [" onclick=", " onload=", " style=", "javascript:"] {
        assert!(!html.contains(forbidden), "{forbidden} in index.html");
    }
}

#[tokio::test]
async fn config_says_token_sign_in_locally_and_the_hosted_ui_on_aws() {
    let app = app();
    let local = send(&app, &get("/console/config.json")).await;
    assert_eq!(local.status, 200);
    assert_eq!(local.header("cache-control"), "no-cache");
    assert_eq!(
        serde_json::from_str::<Value>(local.text()).unwrap(),
        json!({"auth": "token"})
    );

    let mut on_aws = get("/console/config.json");
    on_aws.0["stageVariables"] = json!({
        "consoleAuthDomain": "taskflow-1234.auth.us-east-1.amazoncognito.com",
        "consoleClientId": "abc123client",
    });
    let hosted = send(&app, &on_aws).await;
    assert_eq!(
        serde_json::from_str::<Value>(hosted.text()).unwrap(),
        json!({"auth": "cognito", "domain": "taskflow-1234.auth.us-east-1.amazoncognito.com", "clientId": "abc123client"})
    );
    // The token exchange is a fetch to Cognito: the policy allows exactly that origin.
    assert!(hosted
        .header("content-security-policy")
        .contains("connect-src 'self' https://taskflow-1234.auth.us-east-1.amazoncognito.com;"));

    // A stage variable that could smuggle a directive is ignored.
    on_aws.0["stageVariables"]["consoleAuthDomain"] = json!("x.example.com; script-src *");
    let refused = send(&app, &on_aws).await;
    assert_eq!(
        serde_json::from_str::<Value>(refused.text()).unwrap(),
        json!({"auth": "token"})
    );
}

#[tokio::test]
async fn uploads_may_go_to_the_storage_origin() {
    let settings = ConsoleSettings {
        upload_origins: vec!["http://127.0.0.1:5050".into()],
    };
    let app = app().with_console(settings);
    let page = send(&app, &get("/console/")).await;
    assert!(page
        .header("content-security-policy")
        .contains("connect-src 'self' http://127.0.0.1:5050;"));
}

#[tokio::test]
async fn files_are_cached_briefly_and_revalidated_by_etag() {
    let app = app();
    let first = send(&app, &get("/console/app.js")).await;
    assert_eq!(first.header("cache-control"), "public, max-age=300");
    let etag = first.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    let again = send(&app, &get("/console/app.js").header("If-None-Match", &etag)).await;
    assert_eq!(again.status, 304);
    assert_eq!(again.text(), "");
    let changed = send(
        &app,
        &get("/console/app.js").header("If-None-Match", "\"other\""),
    )
    .await;
    assert_eq!(changed.status, 200);
}

#[tokio::test]
async fn the_api_still_needs_a_token() {
    let app = app();
    let page = send(&app, &get("/api/tasks")).await;
    assert_eq!(page.status, 401);
}
