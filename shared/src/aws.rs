//! SDK clients, built once per cold start and shared by reference.

use aws_config::{BehaviorVersion, SdkConfig};

#[derive(Debug, Clone)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub scheduler: aws_sdk_scheduler::Client,
}

impl AwsClients {
    /// Standard SDK configuration: honours `AWS_ENDPOINT_URL` and the
    /// per-service `AWS_ENDPOINT_URL_*` variables, so the same binary talks to
    /// AWS, LocalStack or moto.
    pub async fn from_env() -> Self {
        let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
        Self::new(&config)
    }

    pub fn new(config: &SdkConfig) -> Self {
        // Path-style keeps presigned URLs and bucket calls working against local emulators.
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(config.endpoint_url().is_some())
            .build();
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sqs: aws_sdk_sqs::Client::new(config),
            sfn: aws_sdk_sfn::Client::new(config),
            scheduler: aws_sdk_scheduler::Client::new(config),
        }
    }
}
