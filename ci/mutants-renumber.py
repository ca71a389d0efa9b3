#!/usr/bin/env python3
"""Renumbers mutant names ("file:line:col: ...", e.g. ci/mutants-equivalent.txt) from the line
numbers of git revision REV to those of the working tree, using `git diff -U0 REV`.
Usage: python3 ci/mutants-renumber.py REV < names > renumbered. Names on changed lines are
dropped (listed on stderr): their mutants must be judged again."""
import re, subprocess, sys
rev = sys.argv[1]
def hunks(path):
    d = subprocess.run(["git", "diff", "-U0", rev, "--", path], capture_output=True, text=True).stdout
    hs = []
    for m in re.finditer(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", d, re.M):
        a, b, c, e = int(m[1]), int(m[2] or 1), int(m[3]), int(m[4] or 1)
        hs.append((a, b, c, e))
    return hs
cache = {}
for line in sys.stdin:
    line = line.rstrip("\n")
    m = re.match(r"^([^:\t]+):(\d+):(.*)$", line)
    if not m:
        print(line); continue
    f, n = m[1], int(m[2])
    if f not in cache: cache[f] = hunks(f)
    shift, dead = 0, False
    for a, b, c, e in cache[f]:
        if b == 0:  # pure insertion after line a
            if n > a: shift += e
        else:
            if a <= n < a + b: dead = True
            elif n >= a + b: shift += e - b
    if dead:
        print("dropped: " + line, file=sys.stderr); continue
    print(f"{f}:{n+shift}:{m[3]}")
