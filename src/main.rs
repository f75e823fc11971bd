//! Thin entry point: parse the command line, then hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use sluicegate::{
    cli::{Cli, Command, one_line_error},
    startup::Application,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    sluicegate::telemetry::init();
    // The fault-injection tests' crash points, armed by FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let result = match cli.command {
        Command::Openapi => print_openapi(),
        Command::Requeue {
            database_url,
            sqs_queue_url,
            aws_endpoint_url,
            older_than_secs,
        } => requeue(database_url, sqs_queue_url, aws_endpoint_url, older_than_secs).await,
        Command::Migrate { database_url } => migrate(database_url).await,
        Command::Healthcheck { url } => sluicegate::healthcheck::run(url).await,
        Command::DemoDownstream(args) => sluicegate::demo_downstream::run(args).await,
        Command::Serve { config, no_migrate } => serve(*config, no_migrate).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the document; a reader that stops early (`| head`) is not an error.
fn print_openapi() -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout()
        .lock()
        .write_all(sluicegate::http::openapi_json().as_bytes())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn requeue(
    database_url: sluicegate::config::Secret,
    queue_url: String,
    endpoint: Option<String>,
    older_than_secs: u64,
) -> anyhow::Result<()> {
    let db = connect(&database_url).await?;
    let sqs = sluicegate::queue::sqs_client(endpoint.as_deref(), &queue_url).await;
    let queue = sluicegate::queue::Queue::new(sqs, queue_url);
    let sent = sluicegate::requeue::resend_stale(&db, &queue, std::time::Duration::from_secs(older_than_secs)).await?;
    println!("re-sent the messages of {sent} queued jobs");
    Ok(())
}

/// A small pool for one-off commands; the error never shows the URL.
async fn connect(database_url: &sluicegate::config::Secret) -> anyhow::Result<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(database_url.expose())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "DATABASE_URL: cannot connect to Postgres ({})",
                sluicegate::startup::describe_db_error(&e)
            )
        })
}

async fn migrate(database_url: sluicegate::config::Secret) -> anyhow::Result<()> {
    let db = connect(&database_url).await?;
    sluicegate::startup::migrate(&db).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(config: sluicegate::config::Config, no_migrate: bool) -> anyhow::Result<()> {
    let warnings = config
        .validate()
        .map_err(|e| anyhow::anyhow!("configuration error: {e}"))?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let app = Application::build(config, !no_migrate).await?;
    app.run_until(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
