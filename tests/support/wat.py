"""Small WASI modules written as WebAssembly text, step by step, for tests.

No libc sits between a step and the system call, so a test knows exactly
which writes happen and when::

    module = WatModule().print("Content-Type: text/plain\\n\\nfirst\\n").busy(2000).exit(1)
    path.write_text(module.text())
"""

from __future__ import annotations

from collections.abc import Mapping

WASI = "wasi_snapshot_preview1"

_SIGNATURES = {
    "fd_write": "(param i32 i32 i32 i32) (result i32)",
    "fd_read": "(param i32 i32 i32 i32) (result i32)",
    "proc_exit": "(param i32)",
    "args_sizes_get": "(param i32 i32) (result i32)",
    "args_get": "(param i32 i32) (result i32)",
    "environ_sizes_get": "(param i32 i32) (result i32)",
    "environ_get": "(param i32 i32) (result i32)",
    "fd_prestat_get": "(param i32 i32) (result i32)",
    "fd_prestat_dir_name": "(param i32 i32 i32) (result i32)",
    "fd_renumber": "(param i32 i32) (result i32)",
    "path_open": "(param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)",
    "poll_oneoff": "(param i32 i32 i32 i32) (result i32)",
    "clock_time_get": "(param i32 i64 i32) (result i32)",
}
IMPORTS = "".join(
    f'  (import "{WASI}" "{name}" (func ${name} {signature}))\n'
    for name, signature in _SIGNATURES.items()
)
"""Every WASI function the test modules call, each as ``$name``."""

HELPERS = """
  ;; Scratch area: 0..255. One iovec at 0, nwritten (or nread) at 8.
  (func $write_fd (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (drop (call $write_fd (local.get $fd) (local.get $ptr) (local.get $len))))
  (func $print (param $ptr i32) (param $len i32)
    (drop (call $write_fd (i32.const 1) (local.get $ptr) (local.get $len))))
  ;; Read up to $len bytes of stdin to 65536 with one fd_read; returns the count.
  (func $read (param $len i32) (result i32)
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.load (i32.const 8)))
  ;; Sleep on the monotonic clock via poll_oneoff (subscription at 64, event at 128).
  (func $sleep (param $ns i64)
    (i64.store (i32.const 64) (i64.const 0))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (local.get $ns))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 160))))
  (func $now (result i64)
    (drop (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 168)))
    (i64.load (i32.const 168)))
  ;; Spin (no host call) for $ms milliseconds: computing, as far as the host can tell.
  (func $busy (param $ms i64) (local $end i64)
    (local.set $end (i64.add (call $now) (i64.mul (local.get $ms) (i64.const 1000000))))
    (loop $spin (br_if $spin (i64.lt_u (call $now) (local.get $end)))))
  ;; Fill [$ptr, $ptr + $len) with 'x', 8 bytes at a time.
  (func $fill (param $ptr i32) (param $len i32) (local $end i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (loop $more
      (i64.store (local.get $ptr) (i64.const 0x7878787878787878))
      (local.set $ptr (i32.add (local.get $ptr) (i32.const 8)))
      (br_if $more (i32.lt_u (local.get $ptr) (local.get $end)))))
"""
"""Functions the test modules share; they use the scratch area below 256."""

FLOOD_AT = 1 << 20
"""Where :meth:`WatModule.flood` keeps its buffer of 'x' (1 MiB in)."""


def wat_bytes(data: bytes) -> str:
    """``b"hi"`` -> ``\\68\\69``, a WAT string literal's body."""
    return "".join(f"\\{byte:02x}" for byte in data)


def module_text(
    body: str, *, pages: int = 1, data: Mapping[int, bytes] | None = None, raw: str = ""
) -> str:
    """A module: :data:`IMPORTS`, a memory of ``pages``, ``data`` segments at their offsets,
    ``raw`` fields as written, :data:`HELPERS`, then ``body`` (its functions, ``_start``)."""
    segments = "".join(
        f'  (data (i32.const {offset}) "{wat_bytes(value)}")\n'
        for offset, value in (data or {}).items()
    )
    return (
        f'(module\n{IMPORTS}  (memory (export "memory") {pages})\n{segments}{raw}\n'
        f"{HELPERS}\n{body})\n"
    )


class WatModule:
    """A ``_start`` made of steps; :meth:`text` is the module."""

    def __init__(self, pages: int = 40) -> None:
        self.pages = pages
        self.steps: list[str] = []
        self.data: list[tuple[int, bytes]] = []
        self.next_data = 4096

    def _place(self, data: bytes) -> int:
        offset = self.next_data
        self.data.append((offset, data))
        self.next_data += len(data) + 8
        assert self.next_data < FLOOD_AT, "too much text for the data area"
        return offset

    def print(self, text: str | bytes, fd: int = 1) -> WatModule:
        data = text.encode() if isinstance(text, str) else text
        self.steps.append(
            f"(drop (call $write_fd (i32.const {fd}) (i32.const {self._place(data)}) "
            f"(i32.const {len(data)})))"
        )
        return self

    def busy(self, ms: int) -> WatModule:
        self.steps.append(f"(call $busy (i64.const {ms}))")
        return self

    def trap(self) -> WatModule:
        self.steps.append("unreachable")
        return self

    def exit(self, code: int) -> WatModule:
        self.steps.append(f"(call $proc_exit (i32.const {code}))")
        return self

    def flood(self, total: int, chunk: int = 1 << 20, fd: int = 1) -> WatModule:
        """Write ``total`` bytes of 'x' in writes of ``chunk`` bytes."""
        assert total % chunk == 0 and FLOOD_AT + chunk <= self.pages * 65536
        self.steps.append(
            f"(call $fill (i32.const {FLOOD_AT}) (i32.const {chunk}))\n"
            f"    (local.set $n (i32.const {total // chunk}))\n"
            "    (loop $flood\n"
            f"      (drop (call $write_fd (i32.const {fd}) (i32.const {FLOOD_AT}) "
            f"(i32.const {chunk})))\n"
            "      (local.set $n (i32.sub (local.get $n) (i32.const 1)))\n"
            "      (br_if $flood (local.get $n)))"
        )
        return self

    def renumber_file_onto(self, guest_dir_fd: int, name: str, target_fd: int) -> WatModule:
        """Create/truncate ``name`` in the preopen ``guest_dir_fd`` and renumber it to
        ``target_fd`` (what ``freopen``/``dup2`` do); exit 90 + errno on failure."""
        path = self._place(name.encode())
        rights = (1 << 6) | (1 << 2)  # fd_write | fd_seek
        self.steps.append(
            f"(local.set $err (call $path_open (i32.const {guest_dir_fd}) (i32.const 0) "
            f"(i32.const {path}) (i32.const {len(name)}) (i32.const 9) "  # O_CREAT|O_TRUNC
            f"(i64.const {rights}) (i64.const {rights}) (i32.const 0) (i32.const 24)))\n"
            "    (if (local.get $err) (then (call $proc_exit (i32.add (i32.const 90) "
            "(local.get $err)))))\n"
            f"    (local.set $err (call $fd_renumber (i32.load (i32.const 24)) "
            f"(i32.const {target_fd})))\n"
            "    (if (local.get $err) (then (call $proc_exit (i32.add (i32.const 90) "
            "(local.get $err)))))"
        )
        return self

    def text(self) -> str:
        body = "\n    ".join(self.steps)
        start = f'  (func (export "_start") (local $n i32) (local $err i32)\n    {body})'
        return module_text(start, pages=self.pages, data=dict(self.data))
