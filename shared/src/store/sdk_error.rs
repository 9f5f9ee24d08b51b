//! Turns SDK failures into `AppError`: transient ones (network, throttling,
//! 5xx) become retryable `Unavailable`, everything else `Internal`.

use crate::error::AppError;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use std::fmt::Debug;

const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "SlowDown",
];

pub(crate) fn from_sdk<E>(operation: &str, err: SdkError<E, HttpResponse>) -> AppError
where
    E: ProvideErrorMetadata + Debug,
{
    let transient = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => true,
        SdkError::ServiceError(service) => {
            service.err().code().is_some_and(|c| TRANSIENT_CODES.contains(&c))
                // A 5xx whose body the SDK could not even parse is still a server-side hiccup.
                || service.raw().status().as_u16() >= 500
        }
        SdkError::ResponseError(_) => true,
        _ => false,
    };
    let detail = match err.code() {
        Some(code) => format!("{operation}: {code}: {}", err.message().unwrap_or_default()),
        None => format!("{operation}: {err:?}"),
    };
    if transient {
        AppError::Unavailable(detail)
    } else {
        AppError::Internal(detail)
    }
}

/// The outcome of a conditional write: `Ok(true)` when it took effect, `Ok(false)` when its
/// condition did not hold (`ConditionalCheckFailedException`), any other failure as
/// [`from_sdk`] maps it.
pub(crate) fn conditional_write<T, E>(
    operation: &str,
    result: Result<T, SdkError<E, HttpResponse>>,
) -> Result<bool, AppError>
where
    E: ProvideErrorMetadata + Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(service))
            if service.err().code() == Some("ConditionalCheckFailedException") =>
        {
            Ok(false)
        }
        Err(err) => Err(from_sdk(operation, err)),
    }
}
