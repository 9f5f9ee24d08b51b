//! The caller's identity, read only from the request context that API Gateway's
//! Cognito authorizer fills in (the local host fills in the same shape).

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use shared::domain::Caller;
use shared::AppError;

pub fn caller(request: &Request) -> Result<Caller, AppError> {
    let Some(RequestContext::ApiGatewayV1(context)) = request.request_context_ref() else {
        return Err(AppError::Unauthorized);
    };
    let claims = context
        .authorizer
        .fields
        .get("claims")
        .ok_or(AppError::Unauthorized)?;
    let claim = |name: &str| claims.get(name).and_then(|v| v.as_str());
    Caller::from_claims(claim("sub"), claim("custom:agencyId"), claim("custom:role"))
}
