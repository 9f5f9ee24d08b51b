//! The local gateway answers its own errors with the same bodies template.yaml gives API
//! Gateway (GatewayResponses), so a client sees one error shape locally and on AWS.

use http_body_util::BodyExt;
use local_stack::api_gateway;
use local_stack::template::{lookup, Template};
use local_stack::StackOptions;

async fn body_of(response: hyper::Response<http_body_util::Full<hyper::body::Bytes>>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn local_gateway_errors_match_the_template() {
    let template = Template::load(&StackOptions::repo_root().join("template.yaml")).unwrap();
    let api = template
        .resources()
        .iter()
        .find(|r| r.kind == "AWS::Serverless::Api")
        .expect("the REST API");
    let responses = api.property("GatewayResponses").expect("GatewayResponses");
    let template_body = |kind: &str| -> (String, String) {
        let response = lookup(responses, &[kind]).unwrap_or_else(|| panic!("{kind}"));
        let status = lookup(response, &["StatusCode"])
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        let body = lookup(response, &["ResponseTemplates", "application/json"])
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        (status, body)
    };
    for (kind, local) in [
        ("INTEGRATION_TIMEOUT", api_gateway::integration_timeout()),
        ("INTEGRATION_FAILURE", api_gateway::integration_failure()),
        (
            "REQUEST_TOO_LARGE",
            api_gateway::gateway_error(413, "payload_too_large", "request body is too large"),
        ),
        (
            "UNAUTHORIZED",
            api_gateway::gateway_error(401, "unauthorized", "missing or invalid bearer token"),
        ),
    ] {
        let (status, body) = template_body(kind);
        assert_eq!(local.status().as_str(), status, "{kind}");
        let local: serde_json::Value = serde_json::from_str(&body_of(local).await).unwrap();
        let expected: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(local, expected, "{kind}");
    }
}

#[tokio::test]
async fn proxy_responses_become_http_responses_within_lambdas_limits() {
    let ok = api_gateway::from_proxy_response(
        br#"{"statusCode":201,"headers":{"content-type":"application/json"},"multiValueHeaders":{"set-cookie":["a=1","b=2"]},"body":"{\"id\":1}","isBase64Encoded":false}"#,
    );
    assert_eq!(ok.status(), 201);
    assert_eq!(ok.headers()["content-type"], "application/json");
    assert_eq!(ok.headers().get_all("set-cookie").iter().count(), 2);
    assert_eq!(body_of(ok).await, r#"{"id":1}"#);
    let binary = api_gateway::from_proxy_response(
        br#"{"statusCode":200,"body":"aGVsbG8=","isBase64Encoded":true}"#,
    );
    assert_eq!(body_of(binary).await, "hello");
    // Over Lambda's 6 MB response limit: API Gateway answers 502.
    let huge = format!(
        r#"{{"statusCode":200,"body":"{}"}}"#,
        "x".repeat(api_gateway::MAX_RESPONSE_BYTES)
    );
    assert_eq!(
        api_gateway::from_proxy_response(huge.as_bytes()).status(),
        502
    );
    assert_eq!(api_gateway::from_proxy_response(b"not json").status(), 502);
    assert_eq!(
        api_gateway::from_proxy_response(br#"{"body":"x"}"#).status(),
        502
    );
}
