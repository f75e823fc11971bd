"""compose.yaml, checked without a Docker engine: structure, dependencies,
health checks, the variables sluicegate needs, and that the commands it
runs are ones the binary has."""

import re
from urllib.parse import urlsplit

import yaml

from check_image import accepts, binary_commands
from harness import COMPOSE, ROOT, check, container, load_template

# CONTRACT.md: the variables without a default.
REQUIRED = {"DATABASE_URL", "SQS_QUEUE_URL", "DOWNSTREAM_URL", "API_TOKENS", "DRAIN_TOKEN", "CALLBACK_SECRET"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def compose():
    return yaml.safe_load(COMPOSE.read_text())


def environment(service):
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def depends_on(service):
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {d: {"condition": "service_started"} for d in deps}
    return deps


def sluicegate_services(doc):
    """Services running the sluicegate image, with the argv they run."""
    out = {}
    for name, s in doc["services"].items():
        if "build" in s or str(s.get("image", "")).startswith("sluicegate"):
            cmd = s.get("command", ["serve"])
            out[name] = cmd if isinstance(cmd, list) else cmd.split()
    return out


@check
def services_and_dependencies_are_sound():
    doc = compose()
    services = doc.get("services")
    assert isinstance(services, dict) and services, "no services"
    for name, s in services.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name), f"bad service name {name!r}"
        assert "image" in s or "build" in s, f"{name}: neither image nor build"
        if "build" in s:
            build = s["build"] if isinstance(s["build"], dict) else {"context": s["build"]}
            context = ROOT / build.get("context", ".")
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile at {context}"
        for dep, spec in depends_on(s).items():
            assert dep in services, f"{name} depends on {dep!r}, which is not a service"
            assert dep != name, f"{name} depends on itself"
            condition = spec.get("condition", "service_started")
            assert condition in CONDITIONS, f"{name} -> {dep}: unknown condition {condition!r}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep] or "build" in services[dep], (
                    f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is one-shot but restarts"
    # No dependency cycle.
    seen, done = set(), set()

    def visit(n, path):
        assert n not in seen or n in done, f"dependency cycle: {' -> '.join(path + [n])}"
        if n in done:
            return
        seen.add(n)
        for d in depends_on(services[n]):
            visit(d, path + [n])
        done.add(n)

    for n in services:
        visit(n, [])
    for name, volume in ((n, v) for n, s in services.items() for v in s.get("volumes", [])):
        source = str(volume).split(":")[0]
        if not source.startswith((".", "/")):
            assert source in (doc.get("volumes") or {}), f"{name}: named volume {source!r} is not declared"


@check
def healthchecks_are_well_formed():
    for name, s in compose()["services"].items():
        hc = s.get("healthcheck")
        if hc is None:
            continue
        test = hc.get("test")
        assert isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE"), f"{name}: test {test!r}"
        assert len(test) > 1 or test[0] == "NONE", f"{name}: empty health check command"
        for key in ("interval", "timeout", "start_period"):
            if key in hc:
                assert re.fullmatch(r"\d+(ms|s|m)", str(hc[key])), f"{name}: {key} {hc[key]!r}"


@check
def the_database_and_queue_exist_before_sluicegate_starts():
    doc = compose()
    deps = depends_on(doc["services"]["sluicegate"])
    env = environment(doc["services"]["sluicegate"])
    hosts = {urlsplit(env[v]).hostname for v in ("DATABASE_URL", "AWS_ENDPOINT_URL", "DOWNSTREAM_URL")}
    for host in hosts:
        assert host in doc["services"], f"sluicegate talks to {host!r}, which is not a service"
    db = urlsplit(env["DATABASE_URL"]).hostname
    assert deps.get(db, {}).get("condition") == "service_healthy", f"sluicegate must wait for {db} to be healthy"
    # Some service creates the queue, and sluicegate waits for it to finish.
    queue_name = env["SQS_QUEUE_URL"].rstrip("/").rsplit("/", 1)[-1]
    creators = [n for n, s in doc["services"].items() if queue_name in str(s.get("entrypoint", "")) + str(s.get("command", ""))]
    assert creators, f"no service creates the queue {queue_name}"
    for c in creators:
        assert deps.get(c, {}).get("condition") == "service_completed_successfully", f"sluicegate must wait for {c}"
    assert urlsplit(env["SQS_QUEUE_URL"]).netloc == urlsplit(env["AWS_ENDPOINT_URL"]).netloc, (
        "SQS_QUEUE_URL and AWS_ENDPOINT_URL name different servers"
    )


@check
def sluicegate_has_every_required_variable_and_production_wiring():
    doc = compose()
    env = environment(doc["services"]["sluicegate"])
    missing = sorted(v for v in REQUIRED if not env.get(v))
    assert not missing, f"sluicegate lacks {missing}"
    _, c = container(load_template())
    production = {e["Name"] for e in c.get("Environment", [])} | {s["Name"] for s in c.get("Secrets", [])}
    absent = sorted(production - set(env))
    assert not absent, f"production sets {absent}, the local stack does not"
    # Secrets strong enough for the service's own rules (SECURITY.md), so the
    # stack starts without SLUICEGATE_ALLOW_WEAK_SECRETS.
    assert "SLUICEGATE_ALLOW_WEAK_SECRETS" not in env
    for token in env["API_TOKENS"].split(",") + env["DRAIN_TOKEN"].split(","):
        assert len(token) >= 16, "a token is shorter than 16 characters"
    assert all(len(s) >= 32 for s in env["CALLBACK_SECRET"].split(",")), "CALLBACK_SECRET is shorter than 32"
    assert env["DRAIN_TOKEN"] not in env["API_TOKENS"].split(","), "the drain token must differ from client tokens"
    public = urlsplit(env["PUBLIC_BASE_URL"])
    assert public.hostname == "sluicegate", "the downstream calls back on PUBLIC_BASE_URL: it must name this service"
    downstream = urlsplit(env["DOWNSTREAM_URL"])
    listen = doc["services"][downstream.hostname]["command"]
    assert f"0.0.0.0:{downstream.port}" in listen, f"the downstream does not listen on {downstream.port}: {listen}"


@check
def every_command_run_from_the_image_is_one_the_binary_has():
    doc = compose()
    commands = binary_commands()
    for name, argv in sluicegate_services(doc).items():
        assert argv[0] in commands, f"{name} runs {argv[0]!r}, not a command of {sorted(commands)}"
        if argv[0] != "serve":
            ok, err = accepts(argv)
            assert ok, f"{name}: {argv}: {err}"
        hc = doc["services"][name].get("healthcheck", {}).get("test", [])
        if hc[1:2] == ["/usr/local/bin/sluicegate"]:
            ok, err = accepts(hc[2:])
            assert ok, f"{name} healthcheck {hc}: {err}"


if __name__ == "__main__":
    from harness import main

    main([__name__])
