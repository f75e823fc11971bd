"""A small Dockerfile reader: instructions (continuations joined, comments
dropped) grouped by stage, and the exec/shell forms of ENTRYPOINT, CMD and
HEALTHCHECK."""

import fnmatch
import json
import shlex
from pathlib import Path


def instructions(text):
    """[(KEYWORD, rest)] in order."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def stages(text):
    """[{"from": ..., "name": ..., "instructions": [...]}]"""
    result = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append({"from": parts[0], "name": name, "instructions": []})
        elif result:
            result[-1]["instructions"].append((keyword, rest))
    return result


def exec_form(rest):
    """The argv of an exec-form (JSON array) instruction; shell form is
    returned as ["/bin/sh", "-c", rest]."""
    if rest.startswith("["):
        return json.loads(rest)
    return ["/bin/sh", "-c", rest]


def env(stage):
    """ENV of one stage (KEY=VALUE pairs, or the legacy `ENV KEY VALUE`)."""
    values = {}
    for keyword, rest in stage["instructions"]:
        if keyword != "ENV":
            continue
        if "=" not in rest.split()[0]:
            key, _, value = rest.partition(" ")
            values[key] = value.strip()
            continue
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def last(stage, keyword):
    found = [rest for k, rest in stage["instructions"] if k == keyword]
    return found[-1] if found else None


def healthcheck(stage):
    """(options, argv) of the stage's HEALTHCHECK CMD, or None."""
    rest = last(stage, "HEALTHCHECK")
    if rest is None or rest.upper() == "NONE":
        return None
    options = {}
    words = rest.split(" ")
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        options[key] = value
    rest = " ".join(w for w in words).strip()
    assert rest.upper().startswith("CMD"), f"HEALTHCHECK without CMD: {rest!r}"
    return options, exec_form(rest[3:].strip())


def in_context(root: Path, rel: str, dockerignore: str):
    """Whether `rel` (a path relative to the build context) survives
    .dockerignore (later rules win; `!` re-includes; a rule matching a
    parent directory matches what is inside)."""
    rules = []
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, pattern.strip("/")))
    parts = Path(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, pattern in rules:
        for c in candidates:
            if fnmatch.fnmatchcase(c, pattern) or (
                pattern.startswith("**/") and any(fnmatch.fnmatchcase(s, pattern[3:]) for s in c.split("/"))
            ):
                included = negate
                break
    return included
