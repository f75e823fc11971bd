#!/usr/bin/env python3
"""Drives a job's whole life through a client generated from openapi/openapi.json.

Run by the integration test tests/api/generated_client.rs, which generates the
client with openapi-python-client, starts sluicegate with DOWNSTREAM_URL on
--downstream-port and passes where the client is. Only the generated client
talks to sluicegate; the standard library's http.server plays the downstream
(it records each submission and answers 202). Exits 0 if every check passed.
"""

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True, help="sluicegate's base URL")
    p.add_argument("--api-token", required=True)
    p.add_argument("--drain-token", required=True)
    p.add_argument("--downstream-port", required=True, type=int, help="port of 127.0.0.1 to serve the downstream on")
    p.add_argument("--client-path", required=True, help="directory holding the generated sluicegate_client package")
    return p.parse_args()


class Downstream:
    """A downstream on 127.0.0.1:port that records submissions and answers 202."""

    def __init__(self, port):
        self.submissions = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with outer.lock:
                    outer.submissions.append({"headers": dict(self.headers.items()), "body": body})
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, fmt, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, job_id, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for s in self.submissions:
                    if s["body"].get("job_id") == str(job_id):
                        return s
            time.sleep(0.05)
        raise AssertionError(f"the downstream never received job {job_id}")

    def stop(self):
        self.server.shutdown()


def step(msg):
    print(f"- {msg}", flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def main():
    args = parse_args()
    sys.path.insert(0, args.client_path)

    # Only the generated client from here on.
    from sluicegate_client import AuthenticatedClient, Client
    from sluicegate_client.api.downstream import heartbeat_job, report_job_result
    from sluicegate_client.api.drain import drain_queue
    from sluicegate_client.api.jobs import (
        cancel_job,
        get_job,
        get_job_events,
        list_jobs,
        submit_job,
        submit_jobs,
    )
    from sluicegate_client.api.limits import get_limits, get_stats, set_limits
    from sluicegate_client.api.operations import get_health, get_readiness
    from sluicegate_client.models import (
        BatchJob,
        BatchResult,
        CallbackBody,
        DrainReport,
        FinalStatus,
        Job,
        JobEvents,
        JobPage,
        JobStatus,
        Limits,
        LimitsChange,
        Problem,
        Stats,
        StopReason,
        SubmitBatch,
        SubmitJob,
    )

    downstream = Downstream(args.downstream_port)
    base = args.base_url
    api = AuthenticatedClient(base_url=base, token=args.api_token, raise_on_unexpected_status=True)
    drainer = AuthenticatedClient(base_url=base, token=args.drain_token, raise_on_unexpected_status=True)
    anonymous = Client(base_url=base, raise_on_unexpected_status=True)

    def expect(resp, status, model):
        check(
            resp.status_code == status,
            f"expected {status}, got {int(resp.status_code)}: {resp.content[:500]!r}",
        )
        check(isinstance(resp.parsed, model), f"expected a {model.__name__}, got {resp.parsed!r}")
        return resp.parsed

    step("open probes")
    check(get_health.sync(client=anonymous).status == "ok", "healthz")
    check(get_readiness.sync(client=anonymous).status == "ok", "readyz")

    step("submit a job")
    payload = {"video": "s3://bucket/clip.mp4", "frames": [1, 2, 3], "nested": {"ok": True, "none": None}}
    key = f"lifecycle-{uuid.uuid4()}"
    resp = submit_job.sync_detailed(
        client=api,
        body=SubmitJob(payload=payload, timeout_secs=600, max_attempts=3),
        idempotency_key=key,
    )
    job = expect(resp, 202, Job)
    check(resp.headers.get("location") == f"/jobs/{job.id}", f"Location {resp.headers.get('location')}")
    check(job.status == JobStatus.QUEUED, f"status {job.status}")
    check(job.payload == payload, f"payload {job.payload!r}")
    check(job.attempts == 0, f"attempts {job.attempts}")
    check(job.created_at.tzinfo is not None, "created_at has a time zone")
    for field in ("started_at", "finished_at", "result", "error"):
        check(getattr(job, field) is None, f"{field} of a new job: {getattr(job, field)!r}")

    step("repeat it with the same Idempotency-Key")
    again = expect(
        submit_job.sync_detailed(
            client=api,
            body=SubmitJob(payload=payload, timeout_secs=600, max_attempts=3),
            idempotency_key=key,
        ),
        200,
        Job,
    )
    check(again.id == job.id, "an idempotent repeat returns the same job")

    step("get it")
    got = expect(get_job.sync_detailed(job.id, client=api), 200, Job)
    check(got.id == job.id and got.status == JobStatus.QUEUED, f"got {got}")
    missing = expect(get_job.sync_detailed(uuid.uuid4(), client=api), 404, Problem)
    check(missing.status == 404, f"problem {missing}")

    step("cancel a second job")
    other = expect(submit_job.sync_detailed(client=api, body=SubmitJob(payload="second")), 202, Job)
    cancelled = expect(cancel_job.sync_detailed(other.id, client=api), 200, Job)
    check(cancelled.status == JobStatus.CANCELLED, f"status {cancelled.status}")
    check(cancelled.finished_at is not None, "a cancelled job has finished_at")
    conflict = expect(cancel_job.sync_detailed(other.id, client=api), 409, Problem)
    check(conflict.status == 409, f"problem {conflict}")

    step("list jobs, one page at a time")
    first = expect(list_jobs.sync_detailed(client=api, limit=1), 200, JobPage)
    check([j.id for j in first.items] == [other.id], "newest first")
    check(isinstance(first.next_cursor, str), f"next_cursor {first.next_cursor!r}")
    second = expect(list_jobs.sync_detailed(client=api, limit=1, cursor=first.next_cursor), 200, JobPage)
    check([j.id for j in second.items] == [job.id], "the second page holds the older job")
    check(second.next_cursor is None, f"the second page is the last: {second.next_cursor!r}")
    queued = expect(list_jobs.sync_detailed(client=api, status=JobStatus.QUEUED), 200, JobPage)
    check([j.id for j in queued.items] == [job.id], "status filter")
    bad = expect(list_jobs.sync_detailed(client=api, limit=0), 400, Problem)
    check(bad.status == 400, f"problem {bad}")

    step("submit a batch: a bad item and a repeat")
    batch = expect(
        submit_jobs.sync_detailed(
            client=api,
            body=SubmitBatch(
                jobs=[
                    BatchJob(payload={"n": 1}, max_attempts=0),
                    BatchJob(payload=payload, timeout_secs=600, max_attempts=3, idempotency_key=key),
                ]
            ),
        ),
        200,
        BatchResult,
    )
    bad_item, repeat = batch.items
    check(bad_item.status == 422 and bad_item.job is None, f"bad item {bad_item}")
    check(isinstance(bad_item.problem, Problem) and bad_item.problem.status == 422, f"bad item {bad_item}")
    check(repeat.status == 200 and repeat.problem is None, f"repeat {repeat}")
    check(isinstance(repeat.job, Job) and repeat.job.id == job.id, f"repeat {repeat}")

    step("limits")
    check(expect(get_limits.sync_detailed(client=api), 200, Limits).max_concurrency >= 1, "a positive limit")
    changed = expect(set_limits.sync_detailed(client=api, body=LimitsChange(max_concurrency=5)), 200, Limits)
    check(changed.max_concurrency == 5, f"set {changed}")
    check(get_limits.sync(client=api).max_concurrency == 5, "the new limit is in force")
    check(changed.effective_concurrency == 5 and changed.adaptive is False, f"v2 fields {changed}")
    out_of_range = expect(set_limits.sync_detailed(client=api, body=LimitsChange(max_concurrency=-1)), 422, Problem)
    check(out_of_range.status == 422, f"problem {out_of_range}")

    step("stats")
    stats = expect(get_stats.sync_detailed(client=api), 200, Stats)
    check((stats.limit, stats.queued, stats.running, stats.cancelled) == (5, 1, 0, 1), f"stats {stats}")
    check(stats.queue_depth is None or isinstance(stats.queue_depth, int), f"queue_depth {stats.queue_depth!r}")

    step("drain: the API token is not enough")
    denied = expect(drain_queue.sync_detailed(client=api), 401, Problem)
    check(denied.status == 401, f"problem {denied}")

    step("drain with the drain token")
    dispatched = 0
    for _ in range(20):
        report = expect(drain_queue.sync_detailed(client=drainer, body={"source": "aws.events"}), 200, DrainReport)
        check(report.limit == 5 and isinstance(report.stop_reason, StopReason), f"report {report}")
        dispatched += report.dispatched
        if dispatched:
            break
        time.sleep(0.2)
    check(dispatched == 1, f"one job dispatched, got {dispatched} ({report})")
    report = expect(drain_queue.sync_detailed(client=drainer), 200, DrainReport)
    check(report.dispatched == 0, f"nothing left to dispatch: {report}")

    step("the downstream got the job")
    sub = downstream.wait_for(job.id)
    body = sub["body"]
    check(body["attempt"] == 1 and body["payload"] == payload, f"submission {body}")
    check(body["callback_url"].endswith(f"/jobs/{job.id}/callback"), body["callback_url"])
    headers = {k.lower(): v for k, v in sub["headers"].items()}
    check(headers.get("idempotency-key") == f"{job.id}:1", f"headers {headers}")
    token = body["callback_token"]
    deadline = time.monotonic() + 10
    while (running := get_job.sync(job.id, client=api)).status != JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    check(running.status == JobStatus.RUNNING and running.attempts == 1, f"after drain {running}")
    check(running.started_at is not None, f"a running job has started_at: {running}")

    step("call back with the callback token")
    downstream_client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)
    beat = expect(heartbeat_job.sync_detailed(job.id, client=downstream_client), 200, Job)
    check(beat.status == JobStatus.RUNNING, f"heartbeat {beat}")
    refused = expect(
        report_job_result.sync_detailed(job.id, client=api, body=CallbackBody(status=FinalStatus.SUCCEEDED)),
        401,
        Problem,
    )
    check(refused.status == 401, "an API token cannot call back")
    result = {"frames": 1200, "tags": ["a", "b"]}
    done = expect(
        report_job_result.sync_detailed(
            job.id, client=downstream_client, body=CallbackBody(status=FinalStatus.SUCCEEDED, result=result)
        ),
        200,
        Job,
    )
    check(done.status == JobStatus.SUCCEEDED, f"callback {done}")
    conflict = expect(
        report_job_result.sync_detailed(
            job.id, client=downstream_client, body=CallbackBody(status=FinalStatus.FAILED, error="late")
        ),
        409,
        Problem,
    )
    check(conflict.status == 409, f"problem {conflict}")

    step("read the job as succeeded, and its history")
    final = expect(get_job.sync_detailed(job.id, client=api), 200, Job)
    check(final.status == JobStatus.SUCCEEDED, f"final {final}")
    check(final.result == result and final.error is None, f"final {final}")
    check(final.started_at is not None and final.finished_at is not None, f"final {final}")
    check(final.started_at <= final.finished_at, f"final {final}")
    events = expect(get_job_events.sync_detailed(job.id, client=api), 200, JobEvents).items
    check(events[0].from_ is None and events[0].to == JobStatus.QUEUED, f"first event {events[0]}")
    check(events[0].reason == "submitted", f"first event {events[0]}")
    check(events[-1].to == JobStatus.SUCCEEDED and events[-1].reason == "callback", f"last event {events[-1]}")
    check([e.to for e in events].count(JobStatus.RUNNING) == 1, f"events {events}")
    check(all(a.at <= b.at for a, b in zip(events, events[1:])), "oldest first")

    stats = get_stats.sync(client=api)
    check((stats.succeeded, stats.running, stats.queued) == (1, 0, 0), f"final stats {stats}")

    downstream.stop()
    print("lifecycle: all checks passed", flush=True)


if __name__ == "__main__":
    main()
