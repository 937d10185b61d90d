;; stream.wat: a 1 GiB response body in large writes, for bench/compare.py's stream test.
;;
;; One fd_write for the header block, then 1,024 fd_writes of the same 1 MiB of zero
;; bytes: 1 GiB the gateway must stream, never hold. A failed or short write traps
;; (unreachable), so a measurement never counts a run that lost output.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))

  ;; page 0: the iovec, nwritten and the header; pages 1-16: the 1 MiB chunk (zeros)
  (memory (export "memory") 17)

  ;; offset 16: the header block (40 bytes)
  (data (i32.const 16) "Content-Type: application/octet-stream\n\n")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
      (then unreachable))
    (if (i32.ne (i32.load (i32.const 8)) (local.get $len))
      (then unreachable)))

  (func $main (export "_start")
    (local $i i32)
    (call $write (i32.const 16) (i32.const 40))
    (block $done
      (loop $again
        (br_if $done (i32.eq (local.get $i) (i32.const 1024)))
        (call $write (i32.const 65536) (i32.const 1048576))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))))
