#!/usr/bin/env bash
# Rebuild the sample modules from source. Runs from any directory.
#
#   samples/build.sh [--install] [c|rust|assemblyscript|component|python|javascript ...]
#
# Without a language: c, rust, assemblyscript and component (the modules whose build is
# byte-for-byte reproducible); python and javascript are built when named.
#
# Toolchains, all from Debian/Ubuntu packages, npm and PyPI (no rustup, no crates):
#   C (env, echo, routes, guestbook):  apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
#   Rust (stats):                      apt-get install rustc libstd-rust-dev-wasm32
#   AssemblyScript (request):          apt-get install nodejs npm; the compiler itself
#                                      (assemblyscript + @assemblyscript/wasi-shim, pinned in
#                                      package-lock.json) goes to samples/node_modules via `npm ci`,
#                                      which this script runs when it is missing.
#   component (env.component):         C's toolchain, and jco's preview 1 command adapter
#                                      (`jco new --wasi-command`; npm, like AssemblyScript).
#   python (notes/notes):              componentize-py (PyPI; `pip install -e '.[dev]'` installs
#                                      the pinned version; COMPONENTIZE_PY to choose one) and pip,
#                                      which fetches the Markdown package the sample bundles.
#   javascript (words/words):          componentize-js (npm, like AssemblyScript).
# componentize-py and componentize-js do not build byte-for-byte reproducibly (the snapshot of
# the interpreter's heap differs from build to build): their output is committed, and the
# tests check that a rebuild answers the same requests with the same bytes.
# With --install (as root) the missing Debian packages are installed first; without it, a
# missing toolchain stops the build with the exact command to run.
#
# Environment: CC (clang or wasi-sdk's), WASI_SYSROOT if your clang does not find the sysroot,
# RUSTC (a rustc with std for wasm32-wasi/wasm32-wasip1; default: Debian's /usr/bin/rustc),
# OUT_DIR (write the .wasm files there instead of beside their sources: the tests rebuild into
# a temporary directory and compare with the committed files).
# hello.wat needs no build: wagi compiles .wat files itself.
#
# With the same toolchain versions the output is byte-for-byte reproducible: no debug info, no
# build paths.
set -euo pipefail

# OUT_DIR relative to where the script was started from.
[[ -z "${OUT_DIR:-}" ]] || OUT_DIR=$(realpath -m -- "$OUT_DIR")
cd "$(dirname "${BASH_SOURCE[0]}")"
OUT_DIR=$(realpath -m -- "${OUT_DIR:-.}")
mkdir -p "$OUT_DIR"

install=0
langs=()
for arg in "$@"; do
    case $arg in
        --install) install=1 ;;
        c | rust | assemblyscript | component | python | javascript) langs+=("$arg") ;;
        *)
            echo "usage: $0 [--install] [c|rust|assemblyscript|component|python|javascript ...]" >&2
            exit 2
            ;;
    esac
done
[[ ${#langs[@]} -gt 0 ]] || langs=(c rust assemblyscript component)

# need WHAT PACKAGES...: install the Debian packages with --install, else say what to run.
need() {
    local what=$1
    shift
    if [[ $install == 1 ]]; then
        echo "installing $* (for $what)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    else
        echo "build.sh: $what is missing; install it with: apt-get install $*" \
            "(or run build.sh --install as root)" >&2
        exit 1
    fi
}

built() {
    chmod 644 "$OUT_DIR/$1"
    echo "built samples/$1"
}

# C flags: set by find_c (a clang that builds for wasm32-wasi, or the command to install one).
cflags=()
ldflags=()
find_c() {
    CC=${CC:-clang}
    cflags=(--target=wasm32-wasi -O2 -Wall -Wextra -Werror)
    if [[ -n "${WASI_SYSROOT:-}" ]]; then
        cflags+=(--sysroot="$WASI_SYSROOT")
    fi
    # No debug info, so no build paths in the output.
    ldflags=(-Wl,--strip-debug)
    if ! command -v "$CC" >/dev/null || ! echo 'int main(void){return 0;}' |
        "$CC" "${cflags[@]}" -x c -o /dev/null - 2>/dev/null; then
        need "clang for wasm32-wasi" clang lld wasi-libc libclang-rt-14-dev-wasm32
    fi
}

# The npm tools (samples/node_modules, pinned by package-lock.json).
npm_tools() {
    if ! command -v npm >/dev/null; then
        need "npm (for the AssemblyScript compiler, jco and componentize-js)" nodejs npm
    fi
    if [[ ! -x node_modules/.bin/asc || ! -x node_modules/.bin/jco ||
        ! -x node_modules/.bin/componentize-js ]]; then
        npm ci --no-audit --no-fund --loglevel=error
    fi
}

build_c() {
    find_c
    for name in env echo routes guestbook/guestbook; do
        mkdir -p "$(dirname "$OUT_DIR/$name.wasm")"
        "$CC" "${cflags[@]}" "${ldflags[@]}" -o "$OUT_DIR/$name.wasm" "$name.c"
        built "$name.wasm"
    done
}

# The first rustc (RUSTC, Debian's, the one on PATH) that has std for a WASI target, and the
# target's name: wasm32-wasip1 on newer Rust (1.78+), wasm32-wasi on older (gone since 1.84).
find_rust() {
    local rustc target
    for rustc in ${RUSTC:-/usr/bin/rustc rustc}; do
        command -v "$rustc" >/dev/null || continue
        for target in wasm32-wasip1 wasm32-wasi; do
            if [[ -d "$("$rustc" --print sysroot)/lib/rustlib/$target/lib" ]]; then
                echo "$rustc $target"
                return 0
            fi
        done
    done
    return 1
}

build_rust() {
    local found
    if ! found=$(find_rust); then
        if [[ -n "${RUSTC:-}" ]]; then
            echo "build.sh: RUSTC=$RUSTC has no std for wasm32-wasi or wasm32-wasip1" >&2
            exit 1
        fi
        need "rustc with std for wasm32-wasi" rustc libstd-rust-dev-wasm32
        found=$(find_rust) || { echo "build.sh: rustc still has no wasm32-wasi std" >&2; exit 1; }
    fi
    read -r rustc target <<<"$found"
    # std only, size-optimised, one codegen unit and LTO: small, and reproducible.
    "$rustc" --edition 2021 --target "$target" -C opt-level=s -C lto -C codegen-units=1 \
        -C strip=symbols -o "$OUT_DIR/stats.wasm" stats.rs
    built stats.wasm
}

build_assemblyscript() {
    npm_tools
    # The wasi-shim's config makes asc target WASI (process.env, argv, stdin, stdout). The stub
    # runtime never frees: an instance lives for one request, so a collector is dead weight.
    node_modules/.bin/asc request.ts --config node_modules/@assemblyscript/wasi-shim/asconfig.json \
        --runtime stub -O3 -o "$OUT_DIR/request.wasm"
    built request.wasm
}

# The C sample as a WASI 0.2 component: the same env.c, plus cabi_realloc.c (the adapter
# allocates through the module's malloc), wrapped by the preview 1 command adapter.
build_component() {
    find_c
    npm_tools
    local core
    core=$(mktemp --suffix=.wasm)
    "$CC" "${cflags[@]}" "${ldflags[@]}" -o "$core" env.c cabi_realloc.c
    node_modules/.bin/jco new "$core" --wasi-command -o "$OUT_DIR/env.component.wasm" >/dev/null
    rm -f "$core"
    built env.component.wasm
}

# Python: componentize-py bundles notes/app.py and the Markdown package (pinned in
# notes/requirements.txt, fetched by pip into a temporary directory) into one component.
build_python() {
    local componentize=${COMPONENTIZE_PY:-componentize-py} python=${PYTHON:-python3} site
    if ! command -v "$componentize" >/dev/null; then
        echo "build.sh: componentize-py is missing; install it with: pip install -e '.[dev]'" \
            "(or set COMPONENTIZE_PY)" >&2
        exit 1
    fi
    site=$(mktemp -d)
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$site" \
        -r notes/requirements.txt
    mkdir -p "$OUT_DIR/notes"
    # Only notes/ and the bundled package on the module path, nothing of any virtualenv.
    (cd notes && env -u VIRTUAL_ENV "$componentize" -d wit -w command componentize app \
        -p . -p "$site" -o "$OUT_DIR/notes/notes.wasm" >/dev/null)
    rm -rf "$site"
    built notes/notes.wasm
}

# JavaScript: componentize-js (StarlingMonkey) with HTTP left out (wagi refuses wasi:http).
build_javascript() {
    npm_tools
    mkdir -p "$OUT_DIR/words"
    node_modules/.bin/componentize-js words/words.js --wit words/wit --world-name command \
        --disable http fetch-event -o "$OUT_DIR/words/words.wasm" >/dev/null
    built words/words.wasm
}

for lang in "${langs[@]}"; do
    "build_$lang"
done
