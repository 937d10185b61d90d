#!/usr/bin/env bash
# Rebuild the sample modules from source. Runs from any directory.
#
# Needs clang with a WASI sysroot (Debian/Ubuntu:
#   apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
# or wasi-sdk: CC=/opt/wasi-sdk/bin/clang ./build.sh).
# Set WASI_SYSROOT if your clang does not find the sysroot by itself.
# hello.wat needs no build: wagi compiles .wat files itself.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

CC=${CC:-clang}
CFLAGS=(--target=wasm32-wasi -O2 -Wall -Wextra -Werror)
if [[ -n "${WASI_SYSROOT:-}" ]]; then
    CFLAGS+=(--sysroot="$WASI_SYSROOT")
fi
# No debug info, no build paths: the output is byte-for-byte reproducible
# with the same toolchain.
LDFLAGS=(-Wl,--strip-debug)

for name in env echo routes; do
    "$CC" "${CFLAGS[@]}" "${LDFLAGS[@]}" -o "$name.wasm" "$name.c"
    chmod 644 "$name.wasm"
    echo "built samples/$name.wasm"
done
