//! A Postgres database per test (or benchmark run).

use std::path::Path;

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// The maintenance database new ones are created from: `TEST_DATABASE_URL`,
/// by default the machine's Postgres.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Where the test Postgres listens (the host and port of TEST_DATABASE_URL:
/// scripts/test may have started one of its own on another port), for the
/// proxies that cut it off.
pub fn postgres_addr() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let url = reqwest::Url::parse(&admin_url()).expect("TEST_DATABASE_URL is a URL");
    let host = url.host_str().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
    (host, url.port().unwrap_or(5432))
        .to_socket_addrs()
        .expect("the host of TEST_DATABASE_URL resolves")
        .next()
        .expect("the host of TEST_DATABASE_URL has an address")
}

/// The run a database belongs to: `SLUICEGATE_TEST_RUN` (set by
/// `scripts/test` to its pid), else this process.
fn run_id() -> String {
    std::env::var("SLUICEGATE_TEST_RUN").unwrap_or_else(|_| std::process::id().to_string())
}

async fn admin() -> PgConnection {
    PgConnection::connect(&admin_url())
        .await
        .expect("Postgres is reachable (see TEST_DATABASE_URL)")
}

/// A database of its own, dropped with the test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        // The run's pid in the name lets scripts/test clean up after runs
        // that are gone without touching those still running.
        let name = format!("sg_test_r{}_{}", run_id(), Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin().await)
            .await
            .unwrap();
        let mut url = reqwest::Url::parse(&admin_url()).unwrap();
        url.set_path(&name);
        Self {
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), admin_url());
        // Drop runs outside async context: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Drops the databases of runs whose process is gone (`sg_test_r<pid>_…`,
/// and the benchmark's former `sg_bench_<pid>_…`), as `scripts/test` does;
/// those of runs still alive stay.
pub async fn drop_stale_databases() {
    let mut conn = admin().await;
    let names: Vec<String> = sqlx::query_scalar(
        r"SELECT datname::text FROM pg_database WHERE datname LIKE 'sg\_test\_r%' OR datname LIKE 'sg\_bench\_%'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("list databases");
    for name in names {
        let owner = name
            .strip_prefix("sg_test_r")
            .or_else(|| name.strip_prefix("sg_bench_"))
            .and_then(|rest| rest.split('_').next())
            .unwrap_or_default();
        if owner.is_empty() || !owner.bytes().all(|b| b.is_ascii_digit()) || Path::new("/proc").join(owner).exists() {
            continue;
        }
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}
