"""The image: the Dockerfile's runtime stage runs commands the binary really
has, as a non-root user, on the port the template routes to; the builder
stage copies only what the build context holds; the template's container
health check is the image's."""

import re
import subprocess
import tomllib

import dockerfile
from harness import BINARY, DOCKERFILE, ROOT, check, container, load_template

# Read by the binary outside its command-line parser (AWS SDK chain, logs).
NON_CLAP_ENV = {
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RUST_LOG",
    "LOG_FORMAT",
}


def binary_commands():
    """Subcommands listed by `sluicegate --help`."""
    out = subprocess.run([str(BINARY), "--help"], capture_output=True, text=True, check=True).stdout
    lines = out.split("Commands:", 1)[1].split("Options:", 1)[0].splitlines()
    return {line.split()[0] for line in lines if line.strip()}


def accepts(args):
    """Whether the binary parses `args` (subcommand, flags and their values):
    clap validates everything before it honours a trailing --help."""
    r = subprocess.run([str(BINARY), *args, "--help"], capture_output=True, text=True)
    return r.returncode == 0, r.stderr.strip()


def serve_env_names():
    out = subprocess.run([str(BINARY), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", out))


def runtime():
    stages = dockerfile.stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "expected a multi-stage build"
    return stages, stages[-1]


def binary_path(stage):
    """Where the runtime stage puts the binary (COPY --from=<builder> src dst)."""
    for keyword, rest in stage["instructions"]:
        if keyword == "COPY" and rest.startswith("--from=") and rest.split()[-1].endswith("/sluicegate"):
            return rest.split()[-1]
    raise AssertionError("the runtime stage copies no sluicegate binary from a build stage")


@check
def entrypoint_and_cmd_run_a_real_command():
    _, stage = runtime()
    entrypoint = dockerfile.exec_form(dockerfile.last(stage, "ENTRYPOINT"))
    cmd = dockerfile.exec_form(dockerfile.last(stage, "CMD"))
    assert entrypoint == [binary_path(stage)], f"ENTRYPOINT {entrypoint} is not the copied binary"
    assert cmd and cmd[0] in binary_commands(), f"CMD {cmd} names no command of {sorted(binary_commands())}"
    assert cmd[0] == "serve", f"the default command must be serve, is {cmd}"
    ok, err = accepts(cmd[:1] + ["--database-url", "x", "--sqs-queue-url", "x", "--downstream-url", "http://d/",
                                  "--api-tokens", "x", "--drain-token", "x", "--callback-secret", "x"] + cmd[1:])
    assert ok, f"CMD {cmd}: {err}"


@check
def healthcheck_runs_a_real_command():
    _, stage = runtime()
    hc = dockerfile.healthcheck(stage)
    assert hc, "the runtime stage has no HEALTHCHECK"
    options, argv = hc
    assert argv[0] == binary_path(stage), f"HEALTHCHECK runs {argv[0]}, not the binary (the image has no curl)"
    assert argv[1] in binary_commands(), f"HEALTHCHECK names {argv[1]!r}, not a command of the binary"
    ok, err = accepts(argv[1:])
    assert ok, f"HEALTHCHECK {argv}: {err}"
    timeout = int(options.get("timeout", "30s").rstrip("s"))
    assert timeout > 3, f"HEALTHCHECK --timeout={timeout}s must exceed the probe's own 3 s deadline"


@check
def runtime_stage_is_non_root_and_listens_where_the_template_routes():
    _, stage = runtime()
    user = dockerfile.last(stage, "USER")
    assert user and user.split(":")[0] not in ("0", "root"), f"USER {user!r}: the image must not run as root"
    env = dockerfile.env(stage)
    assert env.get("LISTEN_ADDR") == "0.0.0.0:8080", f"LISTEN_ADDR is {env.get('LISTEN_ADDR')!r}"
    expose = dockerfile.last(stage, "EXPOSE")
    assert expose and expose.split("/")[0] == "8080", f"EXPOSE {expose!r}"
    _, c = container(load_template())
    ports = [p["ContainerPort"] for p in c["PortMappings"]]
    assert ports == [8080], f"the template maps {ports}, the image listens on 8080"
    task_targets = [r for r in load_template()["Resources"].values() if r["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup"]
    assert [t["Properties"]["Port"] for t in task_targets] == [8080]
    assert [t["Properties"]["HealthCheckPath"] for t in task_targets] == ["/readyz"]


@check
def build_stage_is_offline_for_sqlx_and_copies_only_what_the_context_has():
    stages, _ = runtime()
    builder = stages[0]
    assert dockerfile.env(builder).get("SQLX_OFFLINE") == "true", "the build stage must set SQLX_OFFLINE=true"
    ignore = (ROOT / ".dockerignore").read_text()
    assert "build.rs" not in ignore, ".dockerignore names a build.rs that does not exist"
    assert dockerfile.in_context(ROOT, ".sqlx/query-x.json", ignore), ".dockerignore must let .sqlx/ in"
    for keyword, rest in builder["instructions"]:
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        for src in rest.split()[:-1]:
            if src.startswith("--"):
                continue
            if "*" in src:  # an optional source (e.g. .sqlx*): may be absent
                continue
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
            assert dockerfile.in_context(ROOT, src, ignore), f"COPY {src}: excluded by .dockerignore"
    for leaked in ("target/debug/sluicegate", ".git/HEAD", ".venv/bin/python", ".run/dev.env", "tools/requirements/test.txt"):
        assert not dockerfile.in_context(ROOT, leaked, ignore), f"{leaked} would be sent to the builder"


@check
def build_stage_provides_every_target_file_cargo_looks_for():
    """cargo refuses a manifest whose bench/test/example target without a
    `path` has no file (benches/<name>.rs); the context leaves those
    directories out, so the Dockerfile must stub them."""
    stages, _ = runtime()
    builder_text = " ".join(rest for _, rest in stages[0]["instructions"])
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for kind, folder in (("bench", "benches"), ("test", "tests"), ("example", "examples")):
        for target in manifest.get(kind, []):
            if "path" in target:
                continue
            expected = f"{folder}/{target['name']}.rs"
            assert expected in builder_text, f"[[{kind}]] {target['name']}: the build stage must create {expected}"


@check
def template_health_check_is_the_image_health_check():
    _, stage = runtime()
    _, argv = dockerfile.healthcheck(stage)
    _, c = container(load_template())
    assert c["HealthCheck"]["Command"] == ["CMD", *argv], f"{c['HealthCheck']['Command']} != CMD {argv}"


@check
def every_variable_the_image_and_template_set_is_one_the_binary_reads():
    known = serve_env_names() | NON_CLAP_ENV
    _, stage = runtime()
    _, c = container(load_template())
    names = set(dockerfile.env(stage)) | {e["Name"] for e in c.get("Environment", [])} | {
        s["Name"] for s in c.get("Secrets", [])
    }
    unknown = sorted(names - known)
    assert not unknown, f"set but never read (a typo?): {unknown}"


@check
def dockerfile_reader_understands_the_forms_used():
    text = 'FROM a AS b\nENV X=1 \\\n  Y="two words"\nFROM c\n# c\nHEALTHCHECK --interval=5s CMD ["/bin/x", "y"]\nCMD ["serve"]\n'
    s = dockerfile.stages(text)
    assert [x["name"] for x in s] == ["b", None]
    assert dockerfile.env(s[0]) == {"X": "1", "Y": "two words"}
    assert dockerfile.healthcheck(s[1]) == ({"interval": "5s"}, ["/bin/x", "y"])
    ignore = "*\n!src\n**/target\n"
    assert dockerfile.in_context(ROOT, "src/main.rs", ignore)
    assert not dockerfile.in_context(ROOT, "README.md", ignore)
    assert not dockerfile.in_context(ROOT, "src/target/x", ignore)


if __name__ == "__main__":
    from harness import main

    main([__name__])
