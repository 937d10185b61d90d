/*
 * probe.c: a Swiss-army WAGI test module, driven by its arguments.
 *
 * argv[0] is the script name and is skipped. Every other argument is one raw
 * query-string item (`/probe?hdr&env` -> argv = {"/probe", "hdr", "env"}),
 * executed in order. The value after `=` is percent-decoded (%XX only; `+`
 * stays `+`). See README.md in this folder for the list of operations.
 *
 * stdin is only ever read with read(2) (no stdio buffering), so `read=N`
 * consumes exactly what one fd_read returns. stdout goes through stdio and is
 * flushed before exit, trap and loop.
 *
 * Build: see build.sh.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- helpers ----------------------------------------------------------- */

static const char *errno_name(int e) {
    switch (e) {
#define E(x) case x: return #x;
    E(EACCES) E(EBADF) E(EEXIST) E(EFAULT) E(EINVAL) E(EIO) E(EISDIR)
    E(ELOOP) E(EMFILE) E(ENAMETOOLONG) E(ENOENT) E(ENOMEM) E(ENOSPC)
    E(ENOSYS) E(ENOTDIR) E(ENOTEMPTY) E(ENOTSUP) E(EPERM) E(EROFS)
    E(EXDEV) E(ENOTCAPABLE) E(EAGAIN) E(EINTR) E(ESPIPE) E(EFBIG)
#undef E
    default: return "E?";
    }
}

/* Print "ERR ENAME (strerror text)\n" for the current errno. */
static void print_err(void) {
    int e = errno;
    printf("ERR %s (%s)\n", errno_name(e), strerror(e));
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode s in place (%XX only); returns the decoded length. */
static size_t pct_decode(char *s) {
    char *r = s, *w = s;
    while (*r) {
        int h, l;
        if (r[0] == '%' && (h = hexval((unsigned char)r[1])) >= 0 &&
            (l = hexval((unsigned char)r[2])) >= 0) {
            *w++ = (char)(h * 16 + l);
            r += 3;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Order "NAME=value" by NAME, then by the whole string. */
static int cmp_env(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    size_t nx = strcspn(x, "="), ny = strcspn(y, "=");
    size_t n = nx < ny ? nx : ny;
    int c = memcmp(x, y, n);
    if (c != 0) return c;
    if (nx != ny) return nx < ny ? -1 : 1;
    return strcmp(x, y);
}

/* Split "A:B" at the first ':' into A and B (in place). NULL if no ':'. */
static char *split_colon(char *s) {
    char *c = strchr(s, ':');
    if (!c) return NULL;
    *c = '\0';
    return c + 1;
}

static unsigned long parse_num(const char *s) { return strtoul(s, NULL, 10); }

/* ---- operations -------------------------------------------------------- */

static void op_cat(void) {
    char buf[16384];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        fwrite(buf, 1, (size_t)n, stdout);
    }
}

static void op_read(unsigned long want) {
    if (want == 0) return;
    char *buf = malloc(want);
    if (!buf) { printf("failed\n"); return; }
    ssize_t n = read(0, buf, want); /* exactly one fd_read */
    if (n > 0) fwrite(buf, 1, (size_t)n, stdout);
    free(buf);
}

/* Kept in a volatile global so the allocation cannot be optimised away. */
static void *volatile grown;
static volatile unsigned char grow_sink;

static void op_grow(unsigned long mib) {
    if (mib >= 4096) { printf("failed\n"); return; } /* past wasm32 */
    size_t size = (size_t)mib * 1024 * 1024;
    unsigned char *p = malloc(size ? size : 1);
    if (!p) { printf("failed\n"); return; }
    memset(p, 0xA5, size);
    grown = p;
    for (size_t i = 0; i < size; i += 65536) grow_sink ^= ((volatile unsigned char *)p)[i];
    printf("grew\n");
}

static void op_out(unsigned long n) {
    char buf[4096];
    memset(buf, 'x', sizeof buf);
    while (n > 0) {
        size_t k = n < sizeof buf ? n : sizeof buf;
        fwrite(buf, 1, k, stdout);
        n -= k;
    }
}

static void op_env(void) {
    size_t n = 0;
    while (environ && environ[n]) n++;
    char **v = malloc((n + 1) * sizeof *v);
    if (!v) return;
    for (size_t i = 0; i < n; i++) v[i] = environ[i];
    qsort(v, n, sizeof *v, cmp_env);
    for (size_t i = 0; i < n; i++) printf("%s\n", v[i]);
    free(v);
}

static void op_readfile(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { print_err(); return; }
    char buf[16384];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
    if (ferror(f)) print_err();
    fclose(f);
}

static void op_writefile(char *arg) {
    char *text = split_colon(arg);
    if (!text) { errno = EINVAL; print_err(); return; }
    int fd = open(arg, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { print_err(); return; }
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(fd, text, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { print_err(); close(fd); return; }
        text += n;
        len -= (size_t)n;
    }
    if (close(fd) != 0) { print_err(); return; }
    printf("OK\n");
}

static void op_ls(const char *path) {
    DIR *d = opendir(path);
    if (!d) { print_err(); return; }
    size_t n = 0, cap = 16;
    char **names = malloc(cap * sizeof *names);
    struct dirent *e;
    errno = 0;
    while (names && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (n == cap) {
            char **more = realloc(names, (cap *= 2) * sizeof *names);
            if (!more) break;
            names = more;
        }
        names[n++] = strdup(e->d_name);
    }
    int err = errno;
    closedir(d);
    if (!names) { errno = ENOMEM; print_err(); return; }
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) { printf("%s\n", names[i]); free(names[i]); }
    free(names);
    if (err) { errno = err; print_err(); }
}

static void op_symlink(char *arg) {
    char *link = split_colon(arg);
    if (!link) { errno = EINVAL; print_err(); return; }
    if (symlink(arg, link) != 0) { print_err(); return; }
    printf("OK\n");
}

static void op_mkdir(const char *path) {
    if (mkdir(path, 0755) != 0) { print_err(); return; }
    printf("OK\n");
}

static void op_rm(const char *path) {
    if (unlink(path) != 0 && rmdir(path) != 0) { print_err(); return; }
    printf("OK\n");
}

static void op_sleep(unsigned long ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!*argv[i]) continue;
        char *op = strdup(argv[i]); /* parse a copy: `args` prints argv intact */
        if (!op) return 1;
        char *val = strchr(op, '=');
        if (val) {
            *val++ = '\0';
            pct_decode(val);
        }
#define IS(name) (strcmp(op, name) == 0)
#define NEED_VAL if (!val) goto bad
        if (IS("cat")) op_cat();
        else if (IS("hdr")) fputs("Content-Type: text/plain\n\n", stdout);
        else if (IS("read")) { NEED_VAL; op_read(parse_num(val)); }
        else if (IS("exit")) { NEED_VAL; fflush(stdout); exit((int)parse_num(val)); }
        else if (IS("trap")) { fflush(stdout); __builtin_trap(); }
        else if (IS("loop")) {
            fflush(stdout);
            volatile unsigned long spin = 0;
            for (;;) spin++;
        }
        else if (IS("grow")) { NEED_VAL; op_grow(parse_num(val)); }
        else if (IS("out")) { NEED_VAL; op_out(parse_num(val)); }
        else if (IS("err")) { NEED_VAL; fprintf(stderr, "%s\n", val); }
        else if (IS("print")) { NEED_VAL; printf("%s\n", val); }
        else if (IS("raw")) { NEED_VAL; fputs(val, stdout); }
        else if (IS("env")) op_env();
        else if (IS("args")) { for (int j = 0; j < argc; j++) printf("argv[%d]=%s\n", j, argv[j]); }
        else if (IS("readfile")) { NEED_VAL; op_readfile(val); }
        else if (IS("writefile")) { NEED_VAL; op_writefile(val); }
        else if (IS("ls")) { NEED_VAL; op_ls(val); }
        else if (IS("symlink")) { NEED_VAL; op_symlink(val); }
        else if (IS("mkdir")) { NEED_VAL; op_mkdir(val); }
        else if (IS("rm")) { NEED_VAL; op_rm(val); }
        else if (IS("sleep")) { NEED_VAL; op_sleep(parse_num(val)); }
        else goto bad;
        free(op);
        continue;
    bad:
        fflush(stdout);
        fprintf(stderr, "probe: bad operation: %s%s%s\n", op, val ? "=" : "", val ? val : "");
        return 2;
    }
    return 0;
}
