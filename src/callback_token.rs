//! Per-job, per-attempt callback tokens: `HMAC-SHA256(CALLBACK_SECRET,
//! "<job id>:<attempt>")`, base64url. The attempt number fences off stale
//! callers: the token of an earlier attempt does not match the current one.
//! Several secrets may be valid at once (rotation); the first one signs.

use std::{collections::HashMap, sync::Mutex};

use crate::{config::SecretList, lifecycle::AttemptRef};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, attempt: AttemptRef) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("sluicegate-callback:{}:{}", attempt.job, attempt.attempt).as_bytes());
    mac
}

/// The token handed to the downstream for this job's attempt.
pub fn issue(secrets: &SecretList, attempt: AttemptRef) -> String {
    URL_SAFE_NO_PAD.encode(mac(secrets.primary().expose(), attempt).finalize().into_bytes())
}

/// Whether `token` was issued for this job's attempt under any of the secrets
/// (compared in constant time).
pub fn verify(secrets: &SecretList, attempt: AttemptRef, token: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else {
        return false;
    };
    let mut ok = false;
    for secret in secrets.iter() {
        ok |= mac(secret.expose(), attempt).verify_slice(&tag).is_ok();
    }
    ok
}

/// The attempts this replica issued tokens for lately (job → attempt): a
/// hint, not a record. A callback usually comes back to the replica that
/// dispatched its job (always, with one replica); its token is then checked
/// against the attempt found here, without reading the job first, and the
/// change it asks for is fenced by that attempt in the same statement as
/// ever. A missing or stale hint only sends the check to Postgres
/// (`http::callbacks::CallbackCaller`). Bounded: when full it starts over.
#[derive(Debug, Default)]
pub struct Issued {
    attempts: Mutex<HashMap<Uuid, i32>>,
}

impl Issued {
    /// Entries kept at most (a few MiB); far more than the jobs a replica
    /// has live at once.
    pub const MAX: usize = 1 << 16;

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, i32>> {
        self.attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that a token was issued for this attempt.
    pub fn record(&self, attempt: AttemptRef) {
        let mut map = self.lock();
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(attempt.job, attempt.attempt);
    }

    /// The attempt of the last token this replica issued for `job`, if it remembers one.
    pub fn get(&self, job: Uuid) -> Option<AttemptRef> {
        self.lock().get(&job).map(|&a| AttemptRef::new(job, a))
    }

    /// The job ended: no more callbacks are expected.
    pub fn forget(&self, job: Uuid) {
        self.lock().remove(&job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn at(job: Uuid, attempt: i32) -> AttemptRef {
        AttemptRef::new(job, attempt)
    }

    #[test]
    fn a_token_opens_one_job_at_one_attempt() {
        let secrets = SecretList::new(["a-secret-that-is-long-enough-for-tests!"]);
        let (job, other) = (Uuid::now_v7(), Uuid::now_v7());
        let t = issue(&secrets, at(job, 2));
        assert!(verify(&secrets, at(job, 2), &t));
        assert!(!verify(&secrets, at(job, 1), &t));
        assert!(!verify(&secrets, at(job, 3), &t));
        assert!(!verify(&secrets, at(other, 2), &t));
        assert!(!verify(&secrets, at(job, 2), "not base64 !"));
        assert!(!verify(&secrets, at(job, 2), ""));
    }

    #[test]
    fn issued_attempts_are_remembered_until_forgotten_and_bounded() {
        let issued = Issued::default();
        let job = Uuid::now_v7();
        assert_eq!(issued.get(job), None);
        issued.record(at(job, 1));
        issued.record(at(job, 2));
        assert_eq!(issued.get(job), Some(at(job, 2)));
        issued.forget(job);
        assert_eq!(issued.get(job), None);
        for _ in 0..Issued::MAX + 1 {
            issued.record(at(Uuid::now_v7(), 1));
        }
        assert!(issued.lock().len() <= Issued::MAX);
    }

    #[test]
    fn rotation_accepts_old_and_new_secret() {
        let old = SecretList::new(["old-secret-old-secret-old-secret-old"]);
        let both = SecretList::new([
            "new-secret-new-secret-new-secret-new",
            "old-secret-old-secret-old-secret-old",
        ]);
        let job = Uuid::now_v7();
        let issued_before = issue(&old, at(job, 1));
        assert!(verify(&both, at(job, 1), &issued_before));
        assert!(verify(&both, at(job, 1), &issue(&both, at(job, 1))));
        assert!(!verify(&old, at(job, 1), &issue(&both, at(job, 1))));
    }
}
