;; vectored.wat: writes its whole CGI response with ONE fd_write call to fd 1,
;; using 4 iovecs, and never looks at nwritten (no retry on a short write).
;; A host that performs a short write loses output here: wagi must deliver
;; every buffer. Expected response body: "part one\npart two\npart three\n".
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; The four buffers (offset, length):
  (data (i32.const 256) "Content-Type: text/plain\n\n")   ;; 256, 26
  (data (i32.const 512) "part one\n")                     ;; 512, 9
  (data (i32.const 768) "part two\n")                     ;; 768, 9
  (data (i32.const 1024) "part three\n")                  ;; 1024, 11

  ;; The iovec array at offset 0: 4 x {buf, len}.
  (data (i32.const 0)
    "\00\01\00\00" "\1a\00\00\00"
    "\00\02\00\00" "\09\00\00\00"
    "\00\03\00\00" "\09\00\00\00"
    "\00\04\00\00" "\0b\00\00\00")

  (func (export "_start")
    ;; nwritten goes to offset 64 and is ignored, and so is the errno.
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 4) (i32.const 64)))))
