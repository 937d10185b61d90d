;; lines.wat: a module that writes its body in many small writes, for bench/engine_overhead.py.
;;
;; One fd_write for the header block, then 1,000 fd_writes of one 14-byte line each
;; ("Hello, world!\n"): the output of a program that writes line by line without a
;; buffer. Its run time minus that of samples/hello.wat (one write) is what 999
;; extra writes cost. A failed or short write traps (unreachable), so a measurement
;; never counts a run that lost output.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; offset 16: the header block (26 bytes); offset 48: one line (14 bytes)
  (data (i32.const 16) "Content-Type: text/plain\n\n")
  (data (i32.const 48) "Hello, world!\n")

  ;; write(ptr, len): one iovec at offset 0, nwritten at offset 8; anything but a
  ;; complete write traps
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
      (then unreachable))
    (if (i32.ne (i32.load (i32.const 8)) (local.get $len))
      (then unreachable)))

  (func $main (export "_start")
    (local $i i32)
    (call $write (i32.const 16) (i32.const 26))
    (block $done
      (loop $again
        (br_if $done (i32.eq (local.get $i) (i32.const 1000)))
        (call $write (i32.const 48) (i32.const 14))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))))
