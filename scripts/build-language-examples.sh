#!/usr/bin/env bash
# Builds the example canisters written in other languages than Rust:
#
#   components/python/kv  ->  target/components/lang/kv-py.wasm  (componentize-py)
#   components/js/kv      ->  target/components/lang/kv-js.wasm  (componentize-js)
#
# The toolchains are installed locally, in the repository's ignored
# target/toolchains/ directory, at pinned versions:
#
#   target/toolchains/py   a Python venv with componentize-py
#   target/toolchains/js   an npm prefix with @bytecodealliance/componentize-js
#
# Needs python3 (with the venv module) and node/npm, and the PyPI and npm
# registries the first time. Idempotent: a toolchain already at its pinned
# version is kept, and a component newer than all of its sources (and of the
# toolchain and of this script) is not rebuilt, so a second run takes well under a second.
#
# Usage: scripts/build-language-examples.sh [--force | --toolchains py|js|all]
#   --force       rebuild both components even when they are up to date
#   --toolchains  only install the toolchain(s) and exit (`cellar build`
#                 uses this for Python and JavaScript projects)
#
# Environment: PYTHON (default python3), NPM (default npm), NODE (default node).
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0

SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(dirname "$(dirname "$SCRIPT")")"
TOOLCHAINS="$ROOT/target/toolchains"
OUT="$ROOT/target/components/lang"
PYTHON="${PYTHON:-python3}"
NPM="${NPM:-npm}"
NODE="${NODE:-node}"

FORCE=0
TOOLCHAINS_ONLY=""
case "${1:-}" in
    --force) FORCE=1 ;;
    --toolchains) TOOLCHAINS_ONLY="${2:-all}" ;;
    "") ;;
    *)
        echo "usage: $0 [--force | --toolchains py|js|all]" >&2
        exit 2
        ;;
esac

log() { echo "build-language-examples: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Fails with an installation hint when a command is missing.
require() {
    local cmd="$1" hint="$2"
    command -v "$cmd" > /dev/null 2>&1 || die "'$cmd' is not installed or not on PATH. $hint"
}

# True when $1 exists and is newer than every file given after it (files
# under directories are included). A missing source counts as newer.
up_to_date() {
    local target="$1"
    shift
    [[ -f "$target" ]] || return 1
    local source
    for source in "$@"; do
        [[ -e "$source" ]] || return 1
    done
    [[ -z "$(find "$@" -newer "$target" -print -quit)" ]]
}

# Python: a venv with componentize-py at the pinned version.
PY_VENV="$TOOLCHAINS/py"
COMPONENTIZE_PY="$PY_VENV/bin/componentize-py"
ensure_componentize_py() {
    if [[ -x "$COMPONENTIZE_PY" ]] &&
        [[ "$("$COMPONENTIZE_PY" --version 2> /dev/null)" == "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
        return
    fi
    require "$PYTHON" "Install Python 3 (for example 'apt-get install python3 python3-venv')."
    log "installing componentize-py $COMPONENTIZE_PY_VERSION into $PY_VENV"
    rm -rf "$PY_VENV"
    "$PYTHON" -m venv "$PY_VENV" ||
        die "'$PYTHON -m venv' failed; install the venv module (for example 'apt-get install python3-venv')."
    "$PY_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "componentize-py==$COMPONENTIZE_PY_VERSION" ||
        die "pip could not install componentize-py==$COMPONENTIZE_PY_VERSION from PyPI."
}

# JavaScript: an npm prefix with componentize-js at the pinned version.
JS_PREFIX="$TOOLCHAINS/js"
COMPONENTIZE_JS_PKG="$JS_PREFIX/node_modules/@bytecodealliance/componentize-js"
ensure_componentize_js() {
    require "$NODE" "Install Node.js 18 or newer (for example 'apt-get install nodejs npm')."
    local installed=""
    if [[ -f "$COMPONENTIZE_JS_PKG/package.json" ]]; then
        installed="$("$NODE" -p "require(process.argv[1]).version" "$COMPONENTIZE_JS_PKG/package.json")"
    fi
    if [[ "$installed" == "$COMPONENTIZE_JS_VERSION" ]]; then
        return
    fi
    require "$NPM" "Install npm (for example 'apt-get install npm')."
    log "installing @bytecodealliance/componentize-js $COMPONENTIZE_JS_VERSION into $JS_PREFIX"
    mkdir -p "$JS_PREFIX"
    "$NPM" install --prefix "$JS_PREFIX" --no-audit --no-fund --loglevel=error \
        "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" ||
        die "npm could not install @bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION."
}

# Copies the example's wit/ into $2/wit with the system API
# (wit/canister.wit as deps/cellar) and the vendored WASI packages it
# refers to, so the example's world can import `cellar:canister/log`.
stage_wit() {
    local src="$1" stage="$2"
    cp -R "$src/wit" "$stage/wit"
    mkdir -p "$stage/wit/deps/cellar"
    cp "$ROOT/wit/canister.wit" "$stage/wit/deps/cellar/"
    cp -R "$ROOT/wit/deps/." "$stage/wit/deps/"
}

# kv-py: componentize-py against the world `kv` of components/python/kv/wit.
# The app module is `app` (app.py); componentize-py bundles the Python
# standard library and the interpreter, so the component is ~18 MB.
build_python_kv() {
    local src="$ROOT/components/python/kv" out="$OUT/kv-py.wasm"
    if [[ $FORCE == 0 ]] && up_to_date "$out" "$src/app.py" "$src/wit" "$ROOT/wit/canister.wit" "$COMPONENTIZE_PY" "$SCRIPT"; then
        log "kv-py.wasm is up to date"
        return
    fi
    ensure_componentize_py
    log "building kv-py.wasm with componentize-py $COMPONENTIZE_PY_VERSION"
    # componentize-py writes __pycache__ next to the modules it imports:
    # build from a copy under target/ to keep the source tree clean.
    local stage="$OUT/build/python-kv"
    rm -rf "$stage"
    mkdir -p "$stage"
    cp "$src/app.py" "$stage/"
    stage_wit "$src" "$stage"
    (cd "$stage" && "$COMPONENTIZE_PY" -d wit -w kv componentize app -o "$out.tmp" > /dev/null) ||
        die "componentize-py failed to build $src"
    mv "$out.tmp" "$out"
}

# kv-js: componentize-js (its own CLI, which works on Node 20, unlike
# `jco componentize`). Disabled features:
# * http, fetch-event: the node does not link wasi:http.
# Clocks (Date.now() gives the round's time), stdio and random (the node's
# per-round tape) stay. The bundled wasi_snapshot_preview1 adapter finds its
# lazily allocated state through mutable globals, which the node persists
# (until it did, every message that read the clock allocated 128 KiB again).
# console.log is routed to the system API's log by kv.js itself: the
# adapter would cache the stdout handle of the first message that logs, and
# the next message's fresh instance does not have it (see
# components/js/README.md).
build_js_kv() {
    local src="$ROOT/components/js/kv" out="$OUT/kv-js.wasm"
    if [[ $FORCE == 0 ]] && up_to_date "$out" "$src/kv.js" "$src/wit" "$ROOT/wit/canister.wit" "$COMPONENTIZE_JS_PKG/package.json" "$SCRIPT"; then
        log "kv-js.wasm is up to date"
        return
    fi
    ensure_componentize_js
    log "building kv-js.wasm with componentize-js $COMPONENTIZE_JS_VERSION"
    local stage="$OUT/build/js-kv"
    rm -rf "$stage"
    mkdir -p "$stage"
    cp "$src/kv.js" "$stage/"
    stage_wit "$src" "$stage"
    (cd "$stage" && "$NODE" "$COMPONENTIZE_JS_PKG/src/cli.js" kv.js --wit wit --world-name kv \
        --disable http fetch-event --out "$out.tmp") ||
        die "componentize-js failed to build $src"
    mv "$out.tmp" "$out"
}

if [[ -n "$TOOLCHAINS_ONLY" ]]; then
    case "$TOOLCHAINS_ONLY" in
        py) ensure_componentize_py ;;
        js) ensure_componentize_js ;;
        all) ensure_componentize_py && ensure_componentize_js ;;
        *) die "unknown toolchain '$TOOLCHAINS_ONLY' (py, js or all)" ;;
    esac
    exit 0
fi

mkdir -p "$OUT"
build_python_kv
build_js_kv
log "done: $(cd "$OUT" && ls -l kv-py.wasm kv-js.wasm | awk '{printf "%s %s B; ", $NF, $5}')"
