//! Builds and runs the application. `Application::build` binds the listener
//! (port 0 works: tests start the real server), `run_until` serves until the
//! shutdown future resolves, then drains gracefully.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::Config, downstream::Downstream, queue::Queue, state::AppState, store};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies pending migrations.
pub async fn migrate(db: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(db).await.context("applying database migrations")
}

/// The service's pool. Every session it opens has JIT compilation off, and
/// ends any transaction left idle for longer than `ENQUEUE_TIMEOUT_SECS`
/// (set once per connection, so it costs no round trip per transaction): an enqueue that stalls
/// between sending its messages and its COMMIT can then never commit late
/// (see `enqueue`). No other transaction of the service waits on anything
/// but Postgres between its statements.
pub fn pool(config: &Config) -> anyhow::Result<PgPool> {
    // JIT off: it only pays off for long analytical queries, and a plan
    // misestimated on fresh tables could spend hundreds of milliseconds
    // compiling a millisecond's reservation under the gate lock.
    let session = format!(
        "SET idle_in_transaction_session_timeout = {}; SET jit = off",
        config.enqueue_timeout().as_millis()
    );
    PgPoolOptions::new()
        .max_connections(config.database_pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            let sql = session.clone();
            Box::pin(async move {
                // No arguments: the simple query protocol, both statements
                // in one round trip.
                sqlx::Executor::execute(conn, sql.as_str()).await?;
                Ok(())
            })
        })
        .connect_lazy(config.database_url.expose())
        // The error may quote the URL: say what is wrong without it.
        .map_err(|_| anyhow::anyhow!("DATABASE_URL: not a valid Postgres connection string"))
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Builds with the SQS client from the standard AWS SDK chain.
    pub async fn build(config: Config, run_migrations: bool) -> anyhow::Result<Self> {
        let sqs = crate::queue::sqs_client(config.aws_endpoint_url.as_deref(), &config.sqs_queue_url).await;
        Self::build_with(config, sqs, run_migrations).await
    }

    /// Builds with a given SQS client (tests point it at an emulator).
    pub async fn build_with(
        mut config: Config,
        sqs: aws_sdk_sqs::Client,
        run_migrations: bool,
    ) -> anyhow::Result<Self> {
        let db = pool(&config)?;
        if run_migrations {
            migrate(&db).await?;
        }
        store::seed_limit(&db, config.max_concurrency)
            .await
            .context("reading the limit from the database")?;
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("LISTEN_ADDR: cannot bind {}", config.listen_addr))?;
        let local = listener.local_addr()?;
        if config.public_base_url.is_none() {
            config.public_base_url = Some(format!("http://{local}").parse().expect("a socket address makes a URL"));
        }
        let config_pool_size = config.database_pool_size;
        let downstream = Downstream::new(config.downstream_url.clone(), config.dispatch_timeout())?;
        let queue = Queue::new(sqs, config.sqs_queue_url.clone());
        let state = AppState {
            config: Arc::new(config),
            db,
            queue,
            downstream,
            tasks: TaskTracker::new(),
            refill: Arc::new(Notify::new()),
            metrics: crate::metrics::recorder(),
            enqueue_slots: Arc::new(tokio::sync::Semaphore::new((config_pool_size / 2).max(1) as usize)),
            groups: Arc::default(),
            intake: Arc::default(),
            keys_with_gauges: Arc::default(),
            issued: Arc::default(),
            postgres: Default::default(),
            shutdown: CancellationToken::new(),
        };
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then stops accepting, finishes the
    /// requests and submissions in flight, and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let state = self.state;
        let background = crate::background::spawn(&state);
        let app = crate::http::router(state.clone());
        tracing::info!(addr = %self.listener.local_addr()?, "sluicegate listening");
        let cancel = state.shutdown.clone();
        let limits = crate::server::Limits {
            header_read_timeout: Duration::from_secs(state.config.header_read_timeout_secs),
            write_timeout: Duration::from_secs(state.config.write_timeout_secs),
            max_connections: state.config.max_connections as usize,
            shutdown_grace: Duration::from_secs(state.config.request_timeout_secs),
        };
        crate::server::serve(self.listener, app, limits, async move {
            shutdown.await;
            tracing::info!("shutting down: finishing requests and submissions in flight");
            cancel.cancel();
        })
        .await;
        state.shutdown.cancel();
        background.close();
        background.wait().await;
        state.tasks.close();
        let grace = state.config.dispatch_timeout() + Duration::from_secs(5);
        if tokio::time::timeout(grace, state.tasks.wait()).await.is_err() {
            tracing::warn!("submissions still in flight at exit; their leases will reclaim the slots");
        }
        state.db.close().await;
        Ok(())
    }
}

/// A database error in words that never include the connection string.
pub fn describe_db_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("{io}"),
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::PoolTimedOut => "timed out".into(),
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        sqlx::Error::Configuration(_) => "invalid connection string".into(),
        _ => "connection failed".into(),
    }
}
