"""The binary, started with exactly the environment the image and the
template give it, becomes ready, serves, and exits 0 on SIGTERM.

The environment is built from the Dockerfile's runtime-stage ENV and the
template container's Environment and Secrets names, nothing else, except:
- LISTEN_ADDR moves from 0.0.0.0:8080 to a free loopback port;
- PUBLIC_BASE_URL (the PublicUrl parameter) is that address;
- parameters without a default get test values, the secrets test values,
  DATABASE_URL a fresh database on the machine's Postgres;
- SQS_QUEUE_URL (!Ref of the queue) is a queue on a moto server, reached
  through AWS_ENDPOINT_URL with dummy credentials, standing in for the task
  role's credentials.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import dockerfile
from harness import BINARY, DOCKERFILE, ROOT, check, container, load_template

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
TEST_SECRETS = {
    "API_TOKENS": "ready-api-" + secrets.token_hex(16),
    "DRAIN_TOKEN": "ready-drain-" + secrets.token_hex(16),
    "CALLBACK_SECRET": secrets.token_hex(32),
}
TEST_PARAMETERS = {"DownstreamUrl": "http://127.0.0.1:9/"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, token=None, body=None, timeout=5):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def resolve(value, template, context):
    """A container Environment value: a literal, or a !Ref to a parameter
    (its default, or a test value), to AWS::Region, or to the queue."""
    if isinstance(value, (str, int)):
        return str(value)
    assert isinstance(value, dict) and list(value) == ["Ref"], f"cannot resolve {value!r} for the test"
    name = value["Ref"]
    if name == "AWS::Region":
        return context["region"]
    if name in context["overrides"]:
        return context["overrides"][name]
    if name in template.get("Parameters", {}):
        param = template["Parameters"][name]
        if "Default" in param:
            return str(param["Default"])
        assert name in TEST_PARAMETERS, f"parameter {name} has no default and no test value"
        return TEST_PARAMETERS[name]
    if template["Resources"].get(name, {}).get("Type") == "AWS::SQS::Queue":
        return context["queue_url"]
    raise AssertionError(f"cannot resolve !Ref {name} for the test")


class Stack:
    """A moto server with a queue and a fresh database, torn down on exit."""

    def __enter__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="sg-deploy-"))
        env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
        self.endpoint = subprocess.run(
            [str(ROOT / "scripts" / "sqs-emulator"), "moto", str(self.dir)],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()
        import boto3

        sqs = boto3.client("sqs", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test")
        # The template's attributes that the service reads (retention).
        self.queue_url = sqs.create_queue(
            QueueName="sluicegate-ready", Attributes={"MessageRetentionPeriod": "1209600", "VisibilityTimeout": "70"}
        )["QueueUrl"]
        self.db = "sg_deploy_" + uuid.uuid4().hex
        subprocess.run(["psql", ADMIN_URL, "-q", "-c", f'CREATE DATABASE "{self.db}"'], check=True, capture_output=True)
        self.db_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + self.db
        return self

    def __exit__(self, *exc):
        pid_file = self.dir / "moto.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except ProcessLookupError:
                pass
        if getattr(self, "db", None):
            subprocess.run(["psql", ADMIN_URL, "-q", "-c", f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)'],
                           capture_output=True)


def production_environment(stack, port):
    template = load_template()
    _, c = container(template)
    stages = dockerfile.stages(DOCKERFILE.read_text())
    env = dict(dockerfile.env(stages[-1]))
    assert env.get("LISTEN_ADDR") == "0.0.0.0:8080", env
    env["LISTEN_ADDR"] = f"127.0.0.1:{port}"
    context = {
        "region": "us-east-1",
        "queue_url": stack.queue_url,
        "overrides": {"PublicUrl": f"http://127.0.0.1:{port}"},
    }
    for e in c.get("Environment", []):
        env[e["Name"]] = resolve(e["Value"], template, context)
    for s in c.get("Secrets", []):
        name = s["Name"]
        if name == "DATABASE_URL":
            env[name] = stack.db_url
        else:
            assert name in TEST_SECRETS, f"the template injects {name}, which has no test value here"
            env[name] = TEST_SECRETS[name]
    assert env.get("PUBLIC_BASE_URL") == f"http://127.0.0.1:{port}", "PUBLIC_BASE_URL must come from PublicUrl"
    # The task role's credentials, for the emulator.
    env.update(AWS_ENDPOINT_URL=stack.endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    return env, stages[-1]


def local_argv(stage, instruction):
    """An exec-form argv of the image, run with the local debug binary."""
    argv = dockerfile.exec_form(dockerfile.last(stage, instruction))
    return [str(BINARY) if a.endswith("/sluicegate") else a for a in argv]


@check
def ready_with_the_production_environment_then_clean_exit_on_sigterm():
    port = free_port()
    with Stack() as stack, tempfile.TemporaryFile("w+") as log:
        env, stage = production_environment(stack, port)
        argv = local_argv(stage, "ENTRYPOINT") + dockerfile.exec_form(dockerfile.last(stage, "CMD"))
        _, healthcheck = dockerfile.healthcheck(stage)
        healthcheck = [str(BINARY) if a.endswith("/sluicegate") else a for a in healthcheck]
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd="/")
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            status = None
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    status, _ = http("GET", f"{base}/readyz", timeout=2)
                except OSError:
                    status = None
                if status == 200:
                    break
                time.sleep(0.3)

            def output():
                log.seek(0)
                return log.read()[-3000:]

            assert status == 200, f"/readyz never answered 200 (last {status}, exit {proc.poll()}):\n{output()}"
            hc = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=10)
            assert hc.returncode == 0, f"the image's HEALTHCHECK failed on a ready server: {hc.stderr}"
            status, body = http("POST", f"{base}/jobs", TEST_SECRETS["API_TOKENS"], {"payload": {"ready": True}})
            assert status == 202, f"POST /jobs with the API token: {status} {body[:300]!r}"
            status, body = http("POST", f"{base}/drain", TEST_SECRETS["DRAIN_TOKEN"], {})
            assert status == 200 and "stop_reason" in json.loads(body), f"POST /drain: {status} {body[:300]!r}"
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            assert code == 0, f"exit status {code} after SIGTERM:\n{output()}"
            assert "shutting down" in output(), "no graceful-shutdown line in the log"
            hc = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=10)
            assert hc.returncode == 1, f"HEALTHCHECK after exit: {hc.returncode} (expected 1)"
            for value in TEST_SECRETS.values():
                assert value not in output(), "a secret appears in the log"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    from harness import main

    main([__name__])
