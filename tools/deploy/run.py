"""Runs the deployment checks (all, or the named modules) and closes with
`deploy checks: N passed, M failed`. Run by scripts/check-deploy.

    python tools/deploy/run.py [least_privilege] [image] [compose] [ready]
"""

import sys

import check_compose
import check_image
import check_least_privilege
import check_ready
from harness import run

MODULES = {
    "least_privilege": check_least_privilege.__name__,
    "image": check_image.__name__,
    "compose": check_compose.__name__,
    "ready": check_ready.__name__,
}

if __name__ == "__main__":
    wanted = sys.argv[1:]
    unknown = [w for w in wanted if w not in MODULES]
    if unknown:
        sys.exit(f"unknown check group(s) {unknown}; choose from {sorted(MODULES)}")
    sys.exit(run({MODULES[w] for w in wanted} or set(MODULES.values())))
