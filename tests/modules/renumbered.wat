;; Moves its stdout over fd 0 (fd_renumber(1, 0), as dup2-style code does: WASI renumbers
;; only onto an open fd, and stdin is the one every run has) and writes its whole response
;; there: the header block, then the body in one vectored write of two buffers. Then writes
;; to fd 1, which is closed now (the errno goes into the body: 8 is EBADF). The response is
;; "Content-Type: text/plain", body "written to fd 0, in two buffers\nfd_renumber=0
;; fd_write(1)=8\n" on every engine.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_renumber" (func $fd_renumber (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "Content-Type: text/plain\n\n")
  (data (i32.const 200) "written to fd 0, ")
  (data (i32.const 300) "in two buffers\n")
  (data (i32.const 400) "fd_renumber=? fd_write(1)=?\n")
  (data (i32.const 500) "lost\n")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func (export "_start")
    ;; fd_renumber's errno, as a digit, into the report line
    (i32.store8 (i32.const 412)
      (i32.add (i32.const 48) (call $fd_renumber (i32.const 1) (i32.const 0))))
    (drop (call $write (i32.const 0) (i32.const 100) (i32.const 26)))
    ;; two iovecs at 16: "written to fd 0, " and "in two buffers\n"
    (i32.store (i32.const 16) (i32.const 200)) (i32.store (i32.const 20) (i32.const 17))
    (i32.store (i32.const 24) (i32.const 300)) (i32.store (i32.const 28) (i32.const 15))
    (drop (call $fd_write (i32.const 0) (i32.const 16) (i32.const 2) (i32.const 8)))
    (i32.store8 (i32.const 426)
      (i32.add (i32.const 48) (call $write (i32.const 1) (i32.const 500) (i32.const 5))))
    (drop (call $write (i32.const 0) (i32.const 400) (i32.const 28)))))
