"""schemathesis hooks for scripts/fuzz-api: the credentials, per security scheme.

Each operation gets the credential of the scheme the document gives it:
`api_token` (client endpoints) and `drain_token` (/drain) the tokens the
script gave the service; `callback_token` (callbacks and heartbeats) the
token of a job's current attempt, `HMAC-SHA256(CALLBACK_SECRET,
"sluicegate-callback:<id>:<attempt>")` in base64url (src/callback_token.rs),
which only the downstream is sent. The fuzzer knows the secret, so for these
two operations it picks a job the downstream holds (dispatching or running),
points the request at it and signs it: the fuzzed bodies then reach the code
behind the authentication, not only the 401 in front of it. The script's
downstream holds each job for a few seconds; when no job is live, one is
submitted and drained.

This is done here rather than with `[auth.openapi.*]` in schemathesis.toml:
a per-request credential needs code, and schemathesis drops code-defined auth
(this provider) whenever the configuration file defines any auth.
"""

import base64
import hashlib
import hmac
import json
import os
import time
import urllib.request
import uuid

import schemathesis

BASE_URL = os.environ["SLUICEGATE_FUZZ_BASE_URL"]
API_TOKEN = os.environ["SLUICEGATE_FUZZ_API_TOKEN"]
DRAIN_TOKEN = os.environ["SLUICEGATE_FUZZ_DRAIN_TOKEN"]
CALLBACK_SECRET = os.environ["SLUICEGATE_FUZZ_CALLBACK_SECRET"]


def callback_token(job_id: str, attempt: int) -> str:
    message = f"sluicegate-callback:{job_id}:{attempt}".encode()
    tag = hmac.new(CALLBACK_SECRET.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(tag).rstrip(b"=").decode()


def call(method: str, path: str, token: str = API_TOKEN, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE_URL + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def live_job():
    """A job in `dispatching` or `running`, or None if none could be had."""
    for _ in range(20):
        for status in ("running", "dispatching"):
            items = call("GET", f"/jobs?status={status}&limit=1")["items"]
            if items:
                return items[0]
        # The fuzzer may have set the limit to 0 (PUT /limits): reopen it,
        # queue a job and hand queued jobs to the downstream.
        call("PUT", "/limits", body={"max_concurrency": 8})
        call("POST", "/jobs", body={"payload": {"fuzz": "callback target"}})
        call("POST", "/drain", token=DRAIN_TOKEN)
        time.sleep(0.05)
    return None


def is_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@schemathesis.auth(refresh_interval=None)
class PerSchemeAuth:
    """The credential of the operation's security scheme; none for open ones."""

    def get(self, case, ctx):
        schemes = {name for req in case.operation.definition.raw.get("security") or [] for name in req}
        if "api_token" in schemes:
            return {"token": API_TOKEN}
        if "drain_token" in schemes:
            return {"token": DRAIN_TOKEN}
        if "callback_token" in schemes:
            job = live_job()
            if job is not None:
                return {"token": callback_token(job["id"], job["attempts"]), "job_id": job["id"]}
        return None

    def set(self, case, auth, ctx):
        if case.headers is None:
            case.headers = {}
        case.headers["Authorization"] = f"Bearer {auth['token']}"
        # A malformed job id is a negative test of the path parameter: keep it
        # (the answer must be 401). A well-formed one becomes the live job.
        job_id = auth.get("job_id")
        if job_id is not None and case.path_parameters is not None and is_uuid(case.path_parameters.get("id")):
            case.path_parameters["id"] = job_id
