"""A tiny plain-assert check runner shared by the deployment checks.

Each check is a function registered with @check; it passes unless it raises
(an AssertionError with a message saying what is wrong). `run()` prints one
line per check and closes with `deploy checks: N passed, M failed`.
"""

import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "sluicegate.yaml"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
BINARY = ROOT / "target" / "debug" / "sluicegate"

_CHECKS = []


def check(fn):
    """Registers a check under its module and function name."""
    _CHECKS.append((fn.__module__, fn.__name__, fn))
    return fn


def run(selected=None):
    """Runs the registered checks (those of the named modules only, if
    given); returns the process exit status."""
    passed = failed = 0
    for module, name, fn in _CHECKS:
        if selected and module not in selected:
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failed += 1
            detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
            print(f"FAIL {module}.{name}: {detail}", flush=True)
        else:
            passed += 1
            print(f"ok   {module}.{name}", flush=True)
    print(f"deploy checks: {passed} passed, {failed} failed", flush=True)
    return 1 if failed or not passed else 0


def load_template(path=TEMPLATE):
    """The template as plain dicts, intrinsic functions in their long form
    ({"Ref": ...}, {"Fn::GetAtt": [...]}), through cfn-lint's own loader."""
    from cfnlint.decode.cfn_yaml import load

    return load(str(path))


def container(template):
    """The one container definition of the template's task definition."""
    tasks = [r for r in template["Resources"].values() if r["Type"] == "AWS::ECS::TaskDefinition"]
    assert len(tasks) == 1, f"expected one task definition, found {len(tasks)}"
    containers = tasks[0]["Properties"]["ContainerDefinitions"]
    assert len(containers) == 1, f"expected one container, found {len(containers)}"
    return tasks[0], containers[0]


def main(module_names):
    sys.exit(run(set(module_names)))
