//! Domain types, parsed at the edge: a value of these types is valid.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::{MAX_ATTEMPTS_CAP, MAX_JOB_TIMEOUT_SECS};

pub use crate::lifecycle::JobStatus;

/// A job, as the API shows it. Every field is always present; the ones that
/// have no value yet are `null`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0192f0c4-5a6e-7d3b-9c1e-2f4a6b8c0d1e",
    "status": "succeeded",
    "payload": {"video": "s3://bucket/clip.mp4"},
    "attempts": 1,
    "created_at": "2026-01-15T10:00:00Z",
    "started_at": "2026-01-15T10:00:02Z",
    "finished_at": "2026-01-15T10:04:40Z",
    "result": {"frames": 1200},
    "error": null,
    "key": "default",
    "priority": 0,
    "waiting_on": null,
    "not_before": null
}))]
pub struct Job {
    /// The job's id (a UUIDv7: ids sort by creation time).
    pub id: Uuid,
    pub status: JobStatus,
    /// The JSON the client submitted, returned verbatim (any JSON value).
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// Attempts used: submissions to the downstream that count against
    /// `max_attempts`. One the downstream refused with 429/503 does not (it
    /// still has its own attempt number in the submission and its events).
    #[schema(minimum = 0)]
    pub attempts: i32,
    /// When the job was submitted.
    pub created_at: DateTime<Utc>,
    /// When the job first started running downstream; null until then.
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
    /// When the job reached a terminal status; null until then.
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    /// What the downstream reported in its callback, verbatim (any JSON
    /// value); null until then or if it reported none.
    #[schema(value_type = Option<serde_json::Value>, required = true)]
    pub result: Option<Box<RawValue>>,
    /// The last error: of a failed attempt, a rejection, a lease that ran
    /// out, or the downstream's own report; null if there was none.
    #[schema(required = true)]
    pub error: Option<String>,
    /// The flow-control key (a tenant, a model, ...): `default` unless given.
    pub key: String,
    /// Seconds the job is ordered ahead of its submission time, within its key.
    #[schema(minimum = -3600, maximum = 3600)]
    pub priority: i32,
    /// While `queued`: why it has not been dispatched yet. Null otherwise.
    #[schema(required = true)]
    pub waiting_on: Option<WaitingOn>,
    /// While `queued`: the earliest time it can go, where known. Null otherwise.
    #[schema(required = true)]
    pub not_before: Option<DateTime<Utc>>,
    /// Earliest next dispatch (back-off, Retry-After); internal.
    #[serde(skip)]
    pub available_at: DateTime<Utc>,
}

/// Why a queued job has not been dispatched yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitingOn {
    /// Nothing stops it: it waits its turn.
    Queue,
    /// The global limit is reached.
    GlobalLimit,
    /// Its key's cap is reached (or the key is paused with cap 0).
    KeyLimit,
    /// A rate limit holds it back.
    RateLimit,
    /// The downstream's `Retry-After` is in force.
    DownstreamBusy,
    /// It waits out the back-off after a failed attempt.
    RetryBackoff,
    /// The limit is 0: dispatching is paused.
    Paused,
}

/// One state change of a job.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
#[schema(example = json!({"at": "2026-01-15T10:00:02Z", "from": "dispatching", "to": "running", "attempt": 1, "reason": "downstream 202"}))]
pub struct JobEvent {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The status before; null for the job's first event (`submitted`).
    #[schema(required = true)]
    pub from: Option<JobStatus>,
    /// The status after.
    pub to: JobStatus,
    /// The number of the submission it concerns, as the downstream saw it
    /// (`attempt`, and the suffix of its `Idempotency-Key`); 0 before the
    /// first. Every submission has its own, a refused one (429/503) included.
    #[schema(minimum = 0)]
    pub attempt: i32,
    /// Why it happened, e.g. `submitted`, `downstream 503`, `lease expired`, `callback`.
    pub reason: String,
}

/// A flow-control key: 1 to 128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobKey(String);

pub const MAX_KEY_LEN: usize = 128;
pub const DEFAULT_KEY: &str = "default";
/// A priority is a time offset of at most this many seconds either way.
pub const MAX_PRIORITY_SECS: i64 = 3600;

impl JobKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_KEY_LEN || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(format!(
                "key: must be 1 to {MAX_KEY_LEN} visible ASCII characters (no spaces)"
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobKey {
    fn default() -> Self {
        Self(DEFAULT_KEY.to_owned())
    }
}

/// A validated job submission.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub payload: Box<RawValue>,
    pub timeout_secs: Option<u32>,
    pub max_attempts: Option<u32>,
    pub key: JobKey,
    pub priority: i32,
}

impl JobSpec {
    /// A submission with the default key and priority 0.
    pub fn new(payload: Box<RawValue>, timeout_secs: Option<i64>, max_attempts: Option<i64>) -> Result<Self, String> {
        Self::with_flow(payload, timeout_secs, max_attempts, None, None)
    }

    pub fn with_flow(
        payload: Box<RawValue>,
        timeout_secs: Option<i64>,
        max_attempts: Option<i64>,
        key: Option<&str>,
        priority: Option<i64>,
    ) -> Result<Self, String> {
        let key = key.map(JobKey::parse).transpose()?.unwrap_or_default();
        let priority = match priority {
            None => 0,
            Some(p) if (-MAX_PRIORITY_SECS..=MAX_PRIORITY_SECS).contains(&p) => p as i32,
            Some(_) => {
                return Err(format!(
                    "priority: must be an integer from -{MAX_PRIORITY_SECS} to {MAX_PRIORITY_SECS}"
                ));
            }
        };
        if nesting_depth(payload.get()) > MAX_NESTING {
            return Err(format!("payload: nested deeper than {MAX_NESTING} levels"));
        }
        let timeout_secs = match timeout_secs {
            None => None,
            Some(t) if (1..=i64::from(MAX_JOB_TIMEOUT_SECS)).contains(&t) => Some(t as u32),
            Some(_) => return Err(format!("timeout_secs: must be between 1 and {MAX_JOB_TIMEOUT_SECS}")),
        };
        let max_attempts = match max_attempts {
            None => None,
            Some(a) if (1..=i64::from(MAX_ATTEMPTS_CAP)).contains(&a) => Some(a as u32),
            Some(_) => return Err(format!("max_attempts: must be between 1 and {MAX_ATTEMPTS_CAP}")),
        };
        Ok(Self {
            payload,
            timeout_secs,
            max_attempts,
            key,
            priority,
        })
    }

    /// Fingerprint of the submission, to tell an idempotent repeat (same
    /// key, same body) from a reuse of the key for another body.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(self.payload.get().as_bytes());
        h.update([0]);
        h.update(format!("{:?}/{:?}", self.timeout_secs, self.max_attempts).as_bytes());
        // Only a submission that names a key or a priority hashes them, so
        // the fingerprints stored before flow control existed still match.
        if self.key.as_str() != DEFAULT_KEY || self.priority != 0 {
            h.update(format!("/{}/{}", self.key.as_str(), self.priority).as_bytes());
        }
        h.finalize().to_vec()
    }
}

/// Deepest nesting of arrays and objects accepted in a payload or result.
pub const MAX_NESTING: usize = 64;

/// How deeply arrays and objects nest in a JSON text (already valid JSON).
pub fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(format!(
                "idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
            ));
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err("idempotency key must be visible ASCII characters without spaces".into());
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn spec_bounds() {
        assert!(JobSpec::new(raw("1"), Some(0), None).is_err());
        assert!(JobSpec::new(raw("1"), Some(i64::from(MAX_JOB_TIMEOUT_SECS) + 1), None).is_err());
        assert!(JobSpec::new(raw("1"), None, Some(0)).is_err());
        assert!(JobSpec::new(raw("1"), None, Some(101)).is_err());
        assert!(JobSpec::new(raw("1"), Some(1), Some(100)).is_ok());
    }

    #[test]
    fn fingerprint_tells_bodies_apart() {
        let a = JobSpec::new(raw(r#"{"a":1}"#), None, None).unwrap();
        let b = JobSpec::new(raw(r#"{"a":2}"#), None, None).unwrap();
        let c = JobSpec::new(raw(r#"{"a":1}"#), Some(5), None).unwrap();
        assert_eq!(
            a.fingerprint(),
            JobSpec::new(raw(r#"{"a":1}"#), None, None).unwrap().fingerprint()
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn nesting_depth_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth("1"), 0);
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting_depth(r#"["[[[[\"]]]"]"#), 1);
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(JobSpec::new(raw(&deep), None, None).is_err());
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(JobSpec::new(raw(&ok), None, None).is_ok());
    }

    #[test]
    fn idempotency_keys() {
        assert!(IdempotencyKey::parse("order-42").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("é").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
    }
}
