;; argv: [name, dirfd (one digit), r|w, path]. Opens path relative to dirfd exactly as given
;; (wasi-libc would resolve an absolute path itself) and prints the file (r), or writes
;; "pwned" into it and prints OK (w); or prints "ERR <wasi errno>".
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "ERR ")
  (data (i32.const 80) "OK\n")
  (data (i32.const 96) "pwned")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $more
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $more)))
    (local.get $n))
  (func $fail (param $errno i32)
    (i32.store8 (i32.const 68) (i32.add (i32.const 48) (i32.div_u (local.get $errno) (i32.const 10))))
    (i32.store8 (i32.const 69) (i32.add (i32.const 48) (i32.rem_u (local.get $errno) (i32.const 10))))
    (i32.store8 (i32.const 70) (i32.const 10))
    (call $write (i32.const 64) (i32.const 7)))
  (func (export "_start") (local $path i32) (local $mode i32) (local $err i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (local.set $mode (i32.load8_u (i32.load (i32.const 1032))))
    (local.set $path (i32.load (i32.const 1036)))
    (local.set $err (call $path_open
      (i32.sub (i32.load8_u (i32.load (i32.const 1028))) (i32.const 48))
      (i32.const 1) (local.get $path) (call $strlen (local.get $path))
      (select (i32.const 9) (i32.const 0) (i32.eq (local.get $mode) (i32.const 119)))
      (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 24)))
    (if (local.get $err) (then (call $fail (local.get $err)) (return)))
    (if (i32.eq (local.get $mode) (i32.const 119))
      (then
        (i32.store (i32.const 0) (i32.const 96)) (i32.store (i32.const 4) (i32.const 5))
        (local.set $err
          (call $fd_write (i32.load (i32.const 24)) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $err) (then (call $fail (local.get $err)) (return)))
        (call $write (i32.const 80) (i32.const 3))
        (return)))
    (i32.store (i32.const 0) (i32.const 4096)) (i32.store (i32.const 4) (i32.const 4096))
    (local.set $err
      (call $fd_read (i32.load (i32.const 24)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (local.get $err) (then (call $fail (local.get $err)) (return)))
    (call $write (i32.const 4096) (i32.load (i32.const 8)))))
