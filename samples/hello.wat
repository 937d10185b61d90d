;; hello.wat: the smallest WAGI module, written by hand in WebAssembly text.
;; wagi compiles .wat files itself, so there is no hello.wasm to build.
;;
;; It writes one CGI response to stdout (fd 1):
;;   Content-Type: text/plain
;;
;;   Hello, world!
(module
  ;; fd_write(fd, iovs, iovs_len, nwritten) -> errno
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; The response text, 40 bytes, at offset 16.
  (data (i32.const 16) "Content-Type: text/plain\n\nHello, world!\n")

  (func $main (export "_start")
    (local $rest i32)   ;; bytes still to write
    (local $ptr i32)    ;; next byte to write
    (local.set $ptr (i32.const 16))
    (local.set $rest (i32.const 40))
    ;; Loop until everything is written: a host may perform a short write.
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $rest)))
        ;; one iovec at offset 0: { buf = $ptr, len = $rest }
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $rest))
        ;; an error: give up (the host answers 500 for a missing response)
        (br_if $done (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        ;; nwritten is at offset 8; nothing written at all: give up rather than spin
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (i32.const 8))))
        (local.set $rest (i32.sub (local.get $rest) (i32.load (i32.const 8))))
        (br $again)))))
