//! The command line: `serve`, `migrate`, `openapi`, `requeue`, `healthcheck`,
//! `demo-downstream`.

use clap::{Parser, Subcommand};

use crate::config::{Config, Secret};

#[derive(Parser, Debug)]
#[command(
    name = "sluicegate",
    version,
    about = "Back pressure for a downstream that can only run N jobs at once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply pending migrations (unless --no-migrate), then serve HTTP until SIGTERM/SIGINT.
    Serve {
        #[command(flatten)]
        config: Box<Config>,
        /// Do not apply migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending migrations and exit.
    Migrate {
        /// Postgres connection string.
        #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL", hide_env_values = true)]
        database_url: Secret,
    },
    /// Print the OpenAPI document (the bytes of openapi/openapi.json).
    Openapi,
    /// Send a fresh SQS message for every queued job last sent more than
    /// --older-than-secs ago (e.g. after the queue was purged), then exit.
    Requeue {
        #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL", hide_env_values = true)]
        database_url: Secret,
        #[arg(long, env = "SQS_QUEUE_URL", value_name = "SQS_QUEUE_URL")]
        sqs_queue_url: String,
        #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "AWS_ENDPOINT_URL")]
        aws_endpoint_url: Option<String>,
        /// Only jobs whose message was sent at least this many seconds ago.
        #[arg(long, default_value_t = 0)]
        older_than_secs: u64,
    },
    /// Probe GET /healthz of the local server (the port of LISTEN_ADDR): exit 0
    /// on 200 within 3 s, 1 otherwise. For container health checks.
    Healthcheck {
        /// URL to probe instead (default: http://127.0.0.1:<port of LISTEN_ADDR>/healthz).
        #[arg(long)]
        url: Option<String>,
    },
    /// Run a demo downstream that accepts jobs up to its capacity, works on
    /// each for a random time, and calls back (for trying sluicegate out).
    DemoDownstream(crate::demo_downstream::DemoArgs),
}

/// Turns a clap error into one line naming the variable and what is wrong
/// (clap's own text spans several lines).
pub fn one_line_error(err: &clap::Error) -> String {
    let text = err.to_string();
    let body: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = body.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    format!("configuration error: {line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variables_are_named_on_one_line() {
        let err = Cli::try_parse_from(["sluicegate", "serve"]).unwrap_err();
        let line = one_line_error(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("DATABASE_URL") && line.contains("API_TOKENS"), "{line}");
    }

    #[test]
    fn malformed_values_are_named_without_echoing_secrets() {
        let err = Cli::try_parse_from([
            "sluicegate",
            "serve",
            "--database-url",
            "postgres://x",
            "--sqs-queue-url",
            "q",
            "--downstream-url",
            "http://d/",
            "--api-tokens",
            "t",
            "--drain-token",
            "d",
            "--callback-secret",
            "s",
            "--max-concurrency",
            "lots",
        ])
        .unwrap_err();
        let line = one_line_error(&err);
        assert!(line.contains("MAX_CONCURRENCY") && !line.contains('\n'), "{line}");
    }
}
