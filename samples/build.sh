#!/usr/bin/env bash
# Rebuild the sample modules from source. Runs from any directory.
#
#   samples/build.sh [--install] [c|rust|assemblyscript ...]    (default: all three)
#
# Toolchains, all from Debian/Ubuntu packages and npm (no rustup, no crates):
#   C (env, echo, routes, guestbook):  apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
#   Rust (stats):                      apt-get install rustc libstd-rust-dev-wasm32
#   AssemblyScript (request):          apt-get install nodejs npm; the compiler itself
#                                      (assemblyscript + @assemblyscript/wasi-shim, pinned in
#                                      package-lock.json) goes to samples/node_modules via `npm ci`,
#                                      which this script runs when it is missing.
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
OUT_DIR=${OUT_DIR:-.}
mkdir -p "$OUT_DIR"

install=0
langs=()
for arg in "$@"; do
    case $arg in
        --install) install=1 ;;
        c | rust | assemblyscript) langs+=("$arg") ;;
        *) echo "usage: $0 [--install] [c|rust|assemblyscript ...]" >&2; exit 2 ;;
    esac
done
[[ ${#langs[@]} -gt 0 ]] || langs=(c rust assemblyscript)

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

build_c() {
    CC=${CC:-clang}
    local cflags=(--target=wasm32-wasi -O2 -Wall -Wextra -Werror)
    if [[ -n "${WASI_SYSROOT:-}" ]]; then
        cflags+=(--sysroot="$WASI_SYSROOT")
    fi
    # No debug info, so no build paths in the output.
    local ldflags=(-Wl,--strip-debug)
    if ! command -v "$CC" >/dev/null || ! echo 'int main(void){return 0;}' |
        "$CC" "${cflags[@]}" -x c -o /dev/null - 2>/dev/null; then
        need "clang for wasm32-wasi" clang lld wasi-libc libclang-rt-14-dev-wasm32
    fi
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
    if ! command -v npm >/dev/null; then
        need "npm (for the AssemblyScript compiler)" nodejs npm
    fi
    if [[ ! -x node_modules/.bin/asc ]]; then
        npm ci --no-audit --no-fund --loglevel=error
    fi
    # The wasi-shim's config makes asc target WASI (process.env, argv, stdin, stdout). The stub
    # runtime never frees: an instance lives for one request, so a collector is dead weight.
    node_modules/.bin/asc request.ts --config node_modules/@assemblyscript/wasi-shim/asconfig.json \
        --runtime stub -O3 -o "$OUT_DIR/request.wasm"
    built request.wasm
}

for lang in "${langs[@]}"; do
    "build_$lang"
done
