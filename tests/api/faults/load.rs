//! A load generator for the fault tests: clients submitting jobs, a
//! scheduler calling `/drain`, a monitor reading `/stats` and `/readyz`, and
//! a downstream that accepts and calls back (retrying its callback through
//! outages, as a real one would). Every request is recorded with when it
//! started, how long it took and what it got.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

#[derive(Debug, Clone)]
pub struct Sample {
    pub route: &'static str,
    pub started: Instant,
    pub latency: Duration,
    /// 0: no HTTP answer.
    pub status: u16,
    pub retry_after: bool,
    pub body: String,
}

#[derive(Default)]
pub struct Record {
    pub samples: Vec<Sample>,
    /// Jobs that got a 202.
    pub accepted: Vec<String>,
}

pub struct Load {
    pub record: Arc<Mutex<Record>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// A downstream that accepts every job and calls back `succeeded` after a
/// short while, retrying the callback for up to two minutes.
pub async fn calling_back_downstream(app_base: Arc<Mutex<String>>) -> Downstream {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    let ds = Downstream::start(move |s| {
        let _ = tx.send(s.clone());
        Reply::status(202)
    })
    .await;
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        while let Some(s) = rx.recv().await {
            let (http, base) = (http.clone(), app_base.clone());
            tokio::spawn(async move {
                let work = Duration::from_millis(rand::rng().random_range(50..300));
                tokio::time::sleep(work).await;
                let token = s.body["callback_token"].as_str().unwrap_or_default().to_owned();
                let deadline = Instant::now() + Duration::from_secs(120);
                while Instant::now() < deadline {
                    let url = format!("{}/jobs/{}/callback", base.lock().unwrap(), s.job_id);
                    let r = http
                        .post(url)
                        .bearer_auth(&token)
                        .json(&json!({"status": "succeeded"}))
                        .send()
                        .await;
                    match r.map(|r| r.status().as_u16()) {
                        Ok(200 | 401 | 409) => return,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            });
        }
    });
    ds
}

async fn timed(route: &'static str, req: reqwest::RequestBuilder, record: &Mutex<Record>) -> Option<(u16, String)> {
    let started = Instant::now();
    let r = req.send().await;
    let latency = started.elapsed();
    let (status, retry_after, body) = match r {
        Ok(r) => {
            let status = r.status().as_u16();
            let ra = r.headers().contains_key("retry-after");
            (status, ra, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, false, String::new()),
    };
    record.lock().unwrap().samples.push(Sample {
        route,
        started,
        latency,
        status,
        retry_after,
        body: body.clone(),
    });
    Some((status, body))
}

/// How a submitting client paces itself.
#[derive(Clone, Copy)]
enum Pace {
    /// A pause after each answer.
    After(Duration),
    /// A job every so often.
    Every(Duration),
}

impl Load {
    /// `submitters` clients each submitting a job, pausing 20 ms after each
    /// answer, a drain every 100 ms, `/stats` and `/readyz` every 100 ms.
    pub fn start(base: &str, submitters: usize) -> Self {
        Self::start_with(base, submitters, Pace::After(Duration::from_millis(20)))
    }

    /// The same with each client submitting at a steady rate (a job every
    /// `every`, however fast the answers come): a load that stays below what
    /// the service can drain, so that a long run ends with no backlog.
    pub fn start_every(base: &str, submitters: usize, every: Duration) -> Self {
        Self::start_with(base, submitters, Pace::Every(every))
    }

    fn start_with(base: &str, submitters: usize, pace: Pace) -> Self {
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = CancellationToken::new();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for c in 0..submitters {
            let (http, record, stop, base) = (http.clone(), record.clone(), stop.clone(), base.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                let mut ticks = match pace {
                    Pace::Every(every) => {
                        let mut t = tokio::time::interval(every);
                        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        Some(t)
                    }
                    Pace::After(_) => None,
                };
                while !stop.is_cancelled() {
                    if let Some(t) = ticks.as_mut() {
                        t.tick().await;
                    }
                    n += 1;
                    let req = http
                        .post(format!("{base}/jobs"))
                        .bearer_auth(API_TOKEN)
                        .json(&json!({"payload": {"client": c, "n": n}}));
                    if let Some((202, body)) = timed("POST /jobs", req, &record).await {
                        let v: Value = serde_json::from_str(&body).unwrap();
                        record
                            .lock()
                            .unwrap()
                            .accepted
                            .push(v["id"].as_str().unwrap().to_owned());
                    }
                    if let Pace::After(pause) = pace {
                        tokio::time::sleep(pause).await;
                    }
                }
            }));
        }
        let periodic = |route: &'static str, make: Box<dyn Fn() -> reqwest::RequestBuilder + Send>| {
            let (record, stop) = (record.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    timed(route, make(), &record).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let (h, b) = (http.clone(), base.to_owned());
        tasks.push(periodic(
            "POST /drain",
            Box::new(move || h.post(format!("{b}/drain")).bearer_auth(DRAIN_TOKEN)),
        ));
        let (h, b) = (http.clone(), base.to_owned());
        tasks.push(periodic(
            "GET /stats",
            Box::new(move || h.get(format!("{b}/stats")).bearer_auth(API_TOKEN)),
        ));
        let (h, b) = (http, base.to_owned());
        tasks.push(periodic("GET /readyz", Box::new(move || h.get(format!("{b}/readyz")))));
        Self { record, stop, tasks }
    }

    pub async fn stop(self) -> Record {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.record.lock().unwrap())
    }
}

/// The 99th percentile of some latencies.
pub fn p99(latencies: &mut [Duration]) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort();
    let i = ((latencies.len() as f64) * 0.99).ceil() as usize - 1;
    latencies[i.min(latencies.len() - 1)]
}

/// Waits until every job in `ids` is terminal or queued with an SQS message,
/// draining meanwhile; returns the ones that are neither.
pub async fn settle(app: &TestApp, db: &sqlx::PgPool, ids: &[String], timeout: Duration) -> Vec<(String, String)> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut first = true;
    loop {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id::text, status::text FROM jobs WHERE id = ANY($1::uuid[])
               AND status NOT IN ('succeeded', 'failed', 'timed_out', 'cancelled')",
        )
        .bind(ids)
        .fetch_all(db)
        .await
        .unwrap();
        let missing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::uuid[]) AS i(id) WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = i.id)",
        )
        .bind(ids)
        .fetch_one(db)
        .await
        .unwrap();
        assert_eq!(missing, 0, "a job that got 202 is not in Postgres");
        if first || rows.is_empty() {
            let queued = rows.iter().filter(|(_, s)| s == "queued").count();
            eprintln!(
                "settle: after {:?}, {} of {} jobs not finished ({queued} queued)",
                started.elapsed(),
                rows.len(),
                ids.len()
            );
            first = false;
        }
        if rows.is_empty() {
            return rows;
        }
        if Instant::now() >= deadline {
            // What is left must be queued, with its message.
            let in_queue: HashSet<String> = app.receive_all(30).await.into_iter().collect();
            return rows
                .into_iter()
                .filter(|(id, status)| !(status == "queued" && in_queue.contains(id)))
                .collect();
        }
        let _ = app.http.post(app.url("/drain")).bearer_auth(DRAIN_TOKEN).send().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
