//! The downstream client: one submission, classified by the contract's table.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url, header};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::lifecycle::AttemptRef;

/// What the downstream's answer means for the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx: the job is running.
    Accepted(u16),
    /// 429 or 503: the downstream is full; no attempt is used.
    Busy {
        status: u16,
        /// The `Retry-After` to honour, at most `MAX_RETRY_AFTER`.
        retry_after: Option<Duration>,
        /// The `Retry-After` the downstream asked for, if it was longer than that.
        capped_from: Option<Duration>,
    },
    /// Any other 4xx: the job is rejected for good.
    Rejected { status: u16, detail: String },
    /// 5xx, or the connection could not be made: the job was not taken;
    /// retried with back-off.
    Transient { reason: String },
    /// A timeout, or the connection lost after the request was sent: the
    /// downstream may be running the job. It keeps its slot until a callback,
    /// a heartbeat or the end of its lease says more.
    Unknown { reason: String },
}

impl Outcome {
    /// The reason written to the job's history.
    pub fn reason(&self) -> String {
        match self {
            Outcome::Busy {
                status,
                capped_from: Some(asked),
                retry_after,
            } => format!(
                "downstream {status} (Retry-After of {} s cut to {} s)",
                asked.as_secs(),
                retry_after.unwrap_or_default().as_secs()
            ),
            Outcome::Accepted(s) | Outcome::Busy { status: s, .. } | Outcome::Rejected { status: s, .. } => {
                format!("downstream {s}")
            }
            Outcome::Transient { reason } | Outcome::Unknown { reason } => reason.clone(),
        }
    }
}

/// One submission of a job: what is POSTed to the downstream.
pub struct Submission<'a> {
    /// Names the job and this submission (the body's `job_id` and
    /// `attempt`, and the `Idempotency-Key`).
    pub attempt: AttemptRef,
    pub payload: &'a RawValue,
    pub callback_url: String,
    pub heartbeat_url: String,
    pub callback_token: String,
}

impl Serialize for Submission<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Body<'b> {
            job_id: Uuid,
            attempt: i32,
            payload: &'b RawValue,
            callback_url: &'b str,
            heartbeat_url: &'b str,
            callback_token: &'b str,
        }
        Body {
            job_id: self.attempt.job,
            attempt: self.attempt.attempt,
            payload: self.payload,
            callback_url: &self.callback_url,
            heartbeat_url: &self.heartbeat_url,
            callback_token: &self.callback_token,
        }
        .serialize(serializer)
    }
}

#[derive(Clone)]
pub struct Downstream {
    http: reqwest::Client,
    url: Url,
}

/// Longest `Retry-After` honoured: a longer one is cut to this, and the cut
/// is written in the job's history and counted in
/// `sluicegate_retry_after_capped_total` (a downstream asking for a day's
/// pause is more likely misconfigured than meaning it).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl Downstream {
    pub fn new(url: Url, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .user_agent(concat!("sluicegate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, url })
    }

    pub async fn submit(&self, s: &Submission<'_>) -> Outcome {
        let started = Instant::now();
        let result = self
            .http
            .post(self.url.clone())
            .header("Idempotency-Key", s.attempt.idempotency_key())
            .json(s)
            .send()
            .await;
        let outcome = match result {
            Ok(resp) => classify(resp).await,
            // Checked first: a connect timeout is also a timeout, but nothing
            // was sent.
            Err(e) if e.is_connect() => Outcome::Transient {
                reason: "downstream connection error".into(),
            },
            Err(e) if e.is_timeout() => Outcome::Unknown {
                reason: "downstream timeout: outcome unknown".into(),
            },
            // The connection broke while the request was (or had been) sent:
            // the downstream may have taken the job.
            Err(_) => Outcome::Unknown {
                reason: "downstream connection lost: outcome unknown".into(),
            },
        };
        let label = match &outcome {
            Outcome::Accepted(_) => "accepted",
            Outcome::Busy { .. } => "busy",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Transient { .. } => "error",
            Outcome::Unknown { .. } => "unknown",
        };
        metrics::histogram!(crate::metrics::DOWNSTREAM_DURATION, "outcome" => label)
            .record(started.elapsed().as_secs_f64());
        outcome
    }
}

async fn classify(resp: reqwest::Response) -> Outcome {
    let status = resp.status();
    if status.is_success() {
        return Outcome::Accepted(status.as_u16());
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        let asked = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        return Outcome::Busy {
            status: status.as_u16(),
            retry_after: asked.map(|d| d.min(MAX_RETRY_AFTER)),
            capped_from: asked.filter(|d| *d > MAX_RETRY_AFTER),
        };
    }
    if status.is_client_error() {
        // Keep a short, printable excerpt of why it was rejected.
        let body = resp.text().await.unwrap_or_default();
        let excerpt: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
        let detail = if excerpt.is_empty() {
            format!("downstream rejected the job with {status}")
        } else {
            format!("downstream rejected the job with {status}: {excerpt}")
        };
        return Outcome::Rejected {
            status: status.as_u16(),
            detail,
        };
    }
    Outcome::Transient {
        reason: format!("downstream {}", status.as_u16()),
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let future = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let d = parse_retry_after(&future).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
    }
}
