//! Typed configuration, read from the environment (each variable is also a
//! CLI flag). Secrets are wrapped so that they cannot be printed by accident.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::Args;
use reqwest::Url;

/// A secret string. `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A comma-separated list of secrets. More than one may be valid at a time so
/// that a secret can be rotated without downtime (see SECURITY.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretList(Vec<Secret>);

impl SecretList {
    pub fn new<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Self {
        Self(values.into_iter().map(Secret::new).collect())
    }
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }
    /// The first secret: the one used to sign new things.
    pub fn primary(&self) -> &Secret {
        &self.0[0]
    }
}

impl FromStr for SecretList {
    type Err = std::convert::Infallible;
    /// Never fails, so that clap never echoes a secret in an error; the
    /// values are checked by [`Config::validate`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.split(',').map(|p| Secret::new(p.trim())).collect()))
    }
}

/// Minimum length of a bearer token and of a callback secret, unless
/// `SLUICEGATE_ALLOW_WEAK_SECRETS` is set (development only).
pub const MIN_TOKEN_LEN: usize = 16;
pub const MIN_CALLBACK_SECRET_LEN: usize = 32;

#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Postgres connection string.
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,

    /// URL of the SQS queue jobs wait in.
    #[arg(long, env = "SQS_QUEUE_URL", value_name = "SQS_QUEUE_URL")]
    pub sqs_queue_url: String,

    /// SQS endpoint override (an SQS-compatible emulator in development and
    /// tests). Unset: the AWS SDK's own resolution.
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,

    /// Where jobs are submitted (HTTP POST).
    #[arg(long, env = "DOWNSTREAM_URL", value_name = "DOWNSTREAM_URL", value_parser = parse_http_url)]
    pub downstream_url: Url,

    /// Base URL the downstream uses to call back. Default: http://<LISTEN_ADDR>.
    #[arg(long, env = "PUBLIC_BASE_URL", value_name = "PUBLIC_BASE_URL", value_parser = parse_http_url)]
    pub public_base_url: Option<Url>,

    /// Socket address to bind.
    #[arg(
        long,
        env = "LISTEN_ADDR",
        value_name = "LISTEN_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen_addr: SocketAddr,

    /// Seeds the concurrency limit the first time the database has none.
    #[arg(long, env = "MAX_CONCURRENCY", value_name = "MAX_CONCURRENCY", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_concurrency: u32,

    /// Lease of a running job without callback or heartbeat, in seconds.
    #[arg(long, env = "JOB_TIMEOUT_SECS", value_name = "JOB_TIMEOUT_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u32).range(1..=MAX_JOB_TIMEOUT_SECS as i64))]
    pub job_timeout_secs: u32,

    /// HTTP timeout of one submission to the downstream, in seconds.
    #[arg(long, env = "DISPATCH_TIMEOUT_SECS", value_name = "DISPATCH_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub dispatch_timeout_secs: u32,

    /// `POST /drain` answers within this many milliseconds.
    #[arg(long, env = "DRAIN_BUDGET_MS", value_name = "DRAIN_BUDGET_MS", default_value_t = 4000,
          value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub drain_budget_ms: u64,

    /// Submissions tried before a job is `failed` (default of a job's `max_attempts`).
    #[arg(long, env = "MAX_ATTEMPTS", value_name = "MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=MAX_ATTEMPTS_CAP as i64))]
    pub max_attempts: u32,

    /// A callback that frees a slot starts a drain at once.
    #[arg(long, env = "REFILL_ON_CALLBACK", value_name = "REFILL_ON_CALLBACK", default_value_t = true,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub refill_on_callback: bool,

    /// Optional internal drain ticker, for deployments without EventBridge.
    #[arg(long, env = "DRAIN_INTERVAL_SECS", value_name = "DRAIN_INTERVAL_SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub drain_interval_secs: Option<u64>,

    /// Comma-separated bearer tokens for clients.
    #[arg(long, env = "API_TOKENS", value_name = "API_TOKENS", hide_env_values = true)]
    pub api_tokens: SecretList,

    /// Bearer token(s) the EventBridge connection sends to /drain.
    #[arg(long, env = "DRAIN_TOKEN", value_name = "DRAIN_TOKEN", hide_env_values = true)]
    pub drain_token: SecretList,

    /// Key(s) from which per-job callback tokens are derived; the first signs.
    #[arg(
        long,
        env = "CALLBACK_SECRET",
        value_name = "CALLBACK_SECRET",
        hide_env_values = true
    )]
    pub callback_secret: SecretList,

    /// Larger request bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", value_name = "MAX_BODY_BYTES", default_value_t = 262_144,
          value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Requests handled at once; beyond it, fast 503s with Retry-After.
    #[arg(long, env = "MAX_IN_FLIGHT_REQUESTS", value_name = "MAX_IN_FLIGHT_REQUESTS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_in_flight_requests: u32,

    /// Whole-request timeout (reading the body included), in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", value_name = "REQUEST_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,

    /// Time a client has to send a request's headers (slow-client protection), in seconds.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", value_name = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_read_timeout_secs: u64,

    /// A response write that makes no progress for this many seconds closes
    /// the connection (a client that stops reading), in seconds.
    #[arg(long, env = "WRITE_TIMEOUT_SECS", value_name = "WRITE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub write_timeout_secs: u64,

    /// Open client connections at most; beyond it new connections are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Postgres connections in the pool.
    #[arg(long, env = "DATABASE_POOL_SIZE", value_name = "DATABASE_POOL_SIZE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub database_pool_size: u32,

    /// How often expired leases are reclaimed in the background, in seconds
    /// (every drain reclaims them too).
    #[arg(long, env = "LEASE_SWEEP_INTERVAL_SECS", value_name = "LEASE_SWEEP_INTERVAL_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_sweep_interval_secs: u64,

    /// The longest an enqueue (insert, SQS send, commit) may take; past it the
    /// transaction is rolled back and the client gets 503.
    #[arg(long, env = "ENQUEUE_TIMEOUT_SECS", value_name = "ENQUEUE_TIMEOUT_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub enqueue_timeout_secs: u64,

    /// An SQS message naming a job that does not exist is kept this many
    /// seconds (its enqueueing transaction may still commit), then deleted.
    /// At least ENQUEUE_TIMEOUT_SECS + 60 (clock skew against SQS).
    #[arg(long, env = "ORPHAN_MESSAGE_GRACE_SECS", value_name = "ORPHAN_MESSAGE_GRACE_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub orphan_message_grace_secs: u64,

    /// A queued job whose SQS message was sent longer ago than this gets a
    /// fresh one (SQS drops messages after the queue's retention period).
    /// Default: half the queue's retention period.
    #[arg(long, env = "REQUEUE_AFTER_SECS", value_name = "REQUEUE_AFTER_SECS",
          value_parser = clap::value_parser!(u64).range(60..=1_209_600))]
    pub requeue_after_secs: Option<u64>,

    /// Finished jobs (and their history) are deleted this many seconds after
    /// they finished; 0 keeps everything.
    #[arg(long, env = "JOB_RETENTION_SECS", value_name = "JOB_RETENTION_SECS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(0..=10 * 366 * 24 * 3600))]
    pub job_retention_secs: u64,

    /// Development only: accept short tokens and secrets (warns at every start).
    #[arg(long, env = "SLUICEGATE_ALLOW_WEAK_SECRETS", value_name = "SLUICEGATE_ALLOW_WEAK_SECRETS",
          default_value_t = false, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_weak_secrets: bool,
}

pub const MAX_JOB_TIMEOUT_SECS: u32 = 7 * 24 * 3600;
/// How far this host's clock may be from SQS's (`SentTimestamp`) without an
/// orphan message being deleted while its job can still commit.
pub const CLOCK_SKEW_ALLOWANCE_SECS: u64 = 60;
pub const MAX_ATTEMPTS_CAP: u32 = 100;

/// A configuration problem: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        _ => Err("must be an http:// or https:// URL with a host".into()),
    }
}

impl Config {
    /// Checks what clap cannot: secrets present and strong enough.
    /// Returns the warnings to log when weak secrets are allowed.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let checks: [(&'static str, &SecretList, usize); 3] = [
            ("API_TOKENS", &self.api_tokens, MIN_TOKEN_LEN),
            ("DRAIN_TOKEN", &self.drain_token, MIN_TOKEN_LEN),
            ("CALLBACK_SECRET", &self.callback_secret, MIN_CALLBACK_SECRET_LEN),
        ];
        for (variable, list, min) in checks {
            for (i, secret) in list.iter().enumerate() {
                let value = secret.expose();
                let which = if list.0.len() > 1 {
                    format!("entry {} ", i + 1)
                } else {
                    String::new()
                };
                if value.is_empty() {
                    return Err(ConfigError {
                        variable,
                        problem: format!("{which}is empty"),
                    });
                }
                if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(ConfigError {
                        variable,
                        problem: format!("{which}contains whitespace or control characters"),
                    });
                }
                if value.len() < min {
                    let problem = format!("{which}is shorter than {min} characters");
                    if self.allow_weak_secrets {
                        warnings.push(format!("{variable} {problem} (accepted: SLUICEGATE_ALLOW_WEAK_SECRETS is set; never do this in production)"));
                    } else {
                        return Err(ConfigError {
                            variable,
                            problem: format!("{problem}; use a long random value (e.g. `openssl rand -hex 32`)"),
                        });
                    }
                }
            }
        }
        // One credential must never open two doors.
        for drain in self.drain_token.iter() {
            if self.api_tokens.iter().any(|t| t == drain) {
                return Err(ConfigError {
                    variable: "DRAIN_TOKEN",
                    problem: "must differ from every API_TOKENS entry".into(),
                });
            }
        }
        if self.sqs_queue_url.trim().is_empty() {
            return Err(ConfigError {
                variable: "SQS_QUEUE_URL",
                problem: "is empty".into(),
            });
        }
        if self.database_url.expose().trim().is_empty() {
            return Err(ConfigError {
                variable: "DATABASE_URL",
                problem: "is empty".into(),
            });
        }
        if !self.database_url.expose().starts_with("postgres://")
            && !self.database_url.expose().starts_with("postgresql://")
        {
            return Err(ConfigError {
                variable: "DATABASE_URL",
                problem: "must start with postgres:// or postgresql://".into(),
            });
        }
        // A message whose job is not in Postgres is deleted once it is older
        // than the grace: its enqueue must have ended (committed or rolled
        // back) by then, or a committed job would lose its message.
        let floor = self.enqueue_timeout_secs + CLOCK_SKEW_ALLOWANCE_SECS;
        if self.orphan_message_grace_secs < floor {
            return Err(ConfigError {
                variable: "ORPHAN_MESSAGE_GRACE_SECS",
                problem: format!(
                    "must be at least ENQUEUE_TIMEOUT_SECS ({}) + {CLOCK_SKEW_ALLOWANCE_SECS} s of clock skew = {floor}, got {}",
                    self.enqueue_timeout_secs, self.orphan_message_grace_secs
                ),
            });
        }
        Ok(warnings)
    }

    pub fn enqueue_timeout(&self) -> Duration {
        Duration::from_secs(self.enqueue_timeout_secs)
    }

    /// The base URL the downstream calls back on, without a trailing slash.
    pub fn public_base_url(&self) -> String {
        match &self.public_base_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen_addr),
        }
    }

    pub fn dispatch_timeout(&self) -> Duration {
        Duration::from_secs(self.dispatch_timeout_secs.into())
    }

    pub fn drain_budget(&self) -> Duration {
        Duration::from_millis(self.drain_budget_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    #[command(args_override_self = true)]
    struct Wrapper {
        #[command(flatten)]
        config: Config,
    }

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let mut args = vec![
            "x",
            "--database-url",
            "postgres://u:p@localhost/db",
            "--sqs-queue-url",
            "http://localhost:9324/000000000000/jobs",
            "--downstream-url",
            "http://localhost:9000/jobs",
            "--api-tokens",
            "client-token-0123456789",
            "--drain-token",
            "drain-token-0123456789",
            "--callback-secret",
            "callback-secret-0123456789abcdef0123456789",
        ];
        args.extend_from_slice(extra);
        Wrapper::try_parse_from(args).map(|w| w.config)
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.max_concurrency, 10);
        assert_eq!(c.job_timeout_secs, 900);
        assert_eq!(c.dispatch_timeout_secs, 10);
        assert_eq!(c.drain_budget_ms, 4000);
        assert_eq!(c.max_attempts, 5);
        assert!(c.refill_on_callback);
        assert_eq!(c.drain_interval_secs, None);
        assert_eq!(c.max_body_bytes, 262_144);
        assert_eq!(c.job_retention_secs, 7 * 24 * 3600);
        assert_eq!(c.write_timeout_secs, 30);
        assert_eq!(c.public_base_url(), "http://127.0.0.1:8080");
        assert!(c.validate().unwrap().is_empty());
    }

    #[test]
    fn secrets_never_print() {
        let c = parse(&[]).unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("client-token-0123456789"));
        assert!(!printed.contains("callback-secret"));
        assert!(!printed.contains("u:p@"));
    }

    #[test]
    fn weak_or_empty_secrets_are_refused_unless_allowed() {
        let c = parse(&["--api-tokens", "tiny-x"]).unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e.variable, "API_TOKENS");
        assert!(!e.to_string().contains("tiny-x"), "the value must not be echoed: {e}");
        let c = parse(&["--api-tokens", "client-token-0123456789,"]).unwrap();
        assert_eq!(c.validate().unwrap_err().to_string(), "API_TOKENS: entry 2 is empty");
        let c = parse(&["--callback-secret", "too-short-for-a-key"]).unwrap();
        assert_eq!(c.validate().unwrap_err().variable, "CALLBACK_SECRET");
        let c = parse(&[
            "--callback-secret",
            "too-short-for-a-key",
            "--allow-weak-secrets",
            "true",
        ])
        .unwrap();
        assert_eq!(c.validate().unwrap().len(), 1);
        let c = parse(&["--drain-token", "client-token-0123456789"]).unwrap();
        assert_eq!(c.validate().unwrap_err().variable, "DRAIN_TOKEN");
    }

    #[test]
    fn malformed_values_are_refused() {
        assert!(parse(&["--max-concurrency", "-1"]).is_err());
        assert!(parse(&["--downstream-url", "ftp://x/"]).is_err());
        assert!(parse(&["--listen-addr", "nope"]).is_err());
        assert!(parse(&["--refill-on-callback", "maybe"]).is_err());
        assert!(parse(&["--write-timeout-secs", "0"]).is_err());
        assert!(!parse(&["--refill-on-callback", "false"]).unwrap().refill_on_callback);
        assert!(parse(&["--database-url", "mysql://x"]).unwrap().validate().is_err());
    }

    #[test]
    fn the_orphan_grace_outlasts_an_enqueue() {
        let c = parse(&["--orphan-message-grace-secs", "0"]).unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e.variable, "ORPHAN_MESSAGE_GRACE_SECS");
        assert!(e.to_string().contains("ENQUEUE_TIMEOUT_SECS (15)"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let c = parse(&["--enqueue-timeout-secs", "100", "--orphan-message-grace-secs", "159"]).unwrap();
        assert_eq!(c.validate().unwrap_err().variable, "ORPHAN_MESSAGE_GRACE_SECS");
        let c = parse(&["--enqueue-timeout-secs", "100", "--orphan-message-grace-secs", "160"]).unwrap();
        assert!(c.validate().is_ok());
    }
}
