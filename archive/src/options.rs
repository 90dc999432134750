//! S3 connection options shared by the aggregator (writer) and the restore (reader).
//!
//! Credentials come only from the standard AWS chain (env vars `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY`, shared config and credentials files, SSO, web identity, ECS and
//! EC2 instance roles); these options never carry secrets. `s3_endpoint` and
//! `s3_force_path_style` make S3-compatible stores (Garage, MinIO) work.

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader};
use aws_sdk_s3::config::Region;
use clap::Args;
use serde::{Deserialize, Serialize};

/// The region used when neither `s3_region` nor the AWS chain names one (S3-compatible stores
/// usually accept any region; AWS answers with a redirect error naming the right one).
pub const FALLBACK_REGION: &str = "us-east-1";

/// How long one TCP connect to S3 may take before the attempt fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// S3 options, flattened into each binary's config (flat keys, like `ClickHouseOptions`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct S3Options {
    /// Bucket holding the raw-event archive.
    #[arg(long, env = "TOPK_S3_BUCKET", default_value = "topk-archive")]
    pub s3_bucket: String,
    /// Key prefix of the archive inside the bucket (objects go under PREFIX/TOPIC/date=...).
    #[arg(long, env = "TOPK_S3_PREFIX", default_value = "raw")]
    pub s3_prefix: String,
    /// Endpoint override for S3-compatible stores (e.g. http://127.0.0.1:3900 for Garage);
    /// unset means AWS S3.
    #[arg(long, env = "TOPK_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Region; unset means the AWS chain (AWS_REGION, profile), else us-east-1.
    #[arg(long, env = "TOPK_S3_REGION")]
    pub s3_region: Option<String>,
    /// Address buckets as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT (needed by most
    /// S3-compatible stores).
    #[arg(
        long,
        env = "TOPK_S3_FORCE_PATH_STYLE",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub s3_force_path_style: bool,
    /// Limit, in seconds, on one S3 request including the SDK's own retries: an unreachable
    /// store fails within this time and the caller's backoff takes over.
    #[arg(long, env = "TOPK_S3_TIMEOUT_SECS", default_value_t = 20)]
    pub s3_timeout_secs: u64,
}

impl S3Options {
    /// Options for a bucket and prefix, everything else from the AWS chain.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            s3_bucket: bucket.into(),
            s3_prefix: prefix.into(),
            s3_endpoint: None,
            s3_region: None,
            s3_force_path_style: false,
            s3_timeout_secs: 20,
        }
    }

    /// An S3 client: the standard AWS chain for credentials and region, overridden by these
    /// options, with timeouts so an unreachable store fails in seconds.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        self.client_from(aws_config::defaults(BehaviorVersion::latest()))
            .await
    }

    /// Like [`S3Options::client`], starting from a caller's loader instead of the plain
    /// defaults (e.g. with a credentials provider of its own in tests); these options
    /// override its region, endpoint, timeouts and addressing style.
    pub async fn client_from(&self, loader: ConfigLoader) -> aws_sdk_s3::Client {
        let region = RegionProviderChain::first_try(self.s3_region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new(FALLBACK_REGION));
        let mut loader = loader
            .region(region)
            .timeout_config(self.timeout_config())
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if let Some(endpoint) = self.s3_endpoint.as_deref().filter(|url| !url.is_empty()) {
            loader = loader.endpoint_url(endpoint);
        }
        let shared_config = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared_config)
            .force_path_style(self.s3_force_path_style)
            .build();
        aws_sdk_s3::Client::from_conf(s3_config)
    }

    fn timeout_config(&self) -> TimeoutConfig {
        let operation_timeout = Duration::from_secs(self.s3_timeout_secs.max(1));
        TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(operation_timeout))
            .operation_attempt_timeout(operation_timeout)
            .operation_timeout(operation_timeout)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s3: S3Options,
    }

    #[test]
    fn defaults_and_flags() {
        let cli = Cli::parse_from(["test"]);
        assert_eq!(cli.s3.s3_bucket, "topk-archive");
        assert_eq!(cli.s3.s3_prefix, "raw");
        let cli = Cli::parse_from([
            "test",
            "--s3-endpoint",
            "http://127.0.0.1:3900",
            "--s3-force-path-style",
            "true",
            "--s3-region",
            "garage",
        ]);
        assert_eq!(cli.s3.s3_endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert!(cli.s3.s3_force_path_style);
        assert_eq!(cli.s3.s3_region.as_deref(), Some("garage"));
    }

    #[tokio::test]
    async fn client_uses_the_overrides() {
        let mut options = S3Options::new("bucket", "raw");
        options.s3_region = Some("garage".to_owned());
        options.s3_endpoint = Some("http://127.0.0.1:3900".to_owned());
        let client = options.client().await;
        let config = client.config();
        assert_eq!(config.region().map(Region::as_ref), Some("garage"));
        let timeouts = config.timeout_config().expect("timeouts are set");
        assert_eq!(
            timeouts.operation_timeout(),
            Some(Duration::from_secs(options.s3_timeout_secs))
        );
    }
}
