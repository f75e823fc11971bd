//! Per-job, per-attempt callback tokens: `HMAC-SHA256(CALLBACK_SECRET,
//! "<job id>:<attempt>")`, base64url. The attempt number fences off stale
//! callers: the token of an earlier attempt does not match the current one.
//! Several secrets may be valid at once (rotation); the first one signs.

use crate::{config::SecretList, lifecycle::AttemptRef};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

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
