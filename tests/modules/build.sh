#!/usr/bin/env bash
# Rebuild the test modules from source. Runs from any directory.
#
# Needs clang with a WASI sysroot (Debian/Ubuntu:
#   apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
# or wasi-sdk: CC=/opt/wasi-sdk/bin/clang ./build.sh), and a Python with the
# wasmtime package for .wat -> .wasm (PYTHON=/path/to/python to choose it).
# Set WASI_SYSROOT if your clang does not find the sysroot by itself.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

CC=${CC:-clang}
PYTHON=${PYTHON:-python3}
CFLAGS=(--target=wasm32-wasi -O2 -Wall -Wextra -Werror)
if [[ -n "${WASI_SYSROOT:-}" ]]; then
    CFLAGS+=(--sysroot="$WASI_SYSROOT")
fi
LDFLAGS=(-Wl,--strip-debug)

for name in probe outbound files; do
    "$CC" "${CFLAGS[@]}" "${LDFLAGS[@]}" -o "$name.wasm" "$name.c"
    chmod 644 "$name.wasm"
    echo "built tests/modules/$name.wasm"
done

# The probe as a WASI 0.2 component (tests/test_conformance.py runs both forms): the same
# probe.c with the sample's cabi_realloc.c, through jco's preview 1 command adapter (npm,
# pinned in samples/package-lock.json; samples/build.sh installs it).
JCO=${JCO:-../../samples/node_modules/.bin/jco}
if [[ ! -x "$JCO" ]]; then
    (cd ../../samples && npm ci --no-audit --no-fund --loglevel=error)
fi
core=$(mktemp --suffix=.wasm)
"$CC" "${CFLAGS[@]}" "${LDFLAGS[@]}" -o "$core" probe.c ../../samples/cabi_realloc.c
"$JCO" new "$core" --wasi-command -o probe.component.wasm >/dev/null
rm -f "$core"
chmod 644 probe.component.wasm
echo "built tests/modules/probe.component.wasm"

for name in vectored; do
    "$PYTHON" - "$name.wat" "$name.wasm" <<'PY'
import sys
import wasmtime

src, dst = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    wasm = wasmtime.wat2wasm(f.read())
with open(dst, "wb") as f:
    f.write(wasm)
PY
    chmod 644 "$name.wasm"
    echo "built tests/modules/$name.wasm"
done
