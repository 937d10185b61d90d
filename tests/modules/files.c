/*
 * files.c: a test module for scratch directories and the write budget, driven
 * by its arguments like probe.c (argv[0] skipped; each query item is one
 * operation; the value after `=` is percent-decoded). See README.md here.
 *
 * Build: see build.sh.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *errno_name(int e) {
    switch (e) {
#define E(x) case x: return #x;
    E(EDQUOT) E(ENOSPC) E(EFBIG) E(ENOENT) E(EEXIST) E(EACCES) E(EPERM)
    E(ENOTCAPABLE) E(EBADF) E(EINVAL) E(ENOTDIR) E(EISDIR) E(EROFS)
#undef E
    default: return "E?";
    }
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void pct_decode(char *s) {
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
}

/* Splits "A:B" at the first ':'; returns B (or exits 2). */
static char *second(char *value) {
    char *colon = value ? strchr(value, ':') : NULL;
    if (!colon) {
        fprintf(stderr, "files: expected A:B, got %s\n", value ? value : "(nothing)");
        exit(2);
    }
    *colon = '\0';
    return colon + 1;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char chunk[65536];

/* fill=PATH:N (write) or pfill=PATH:N (pwrite): N bytes of 'x' in 64 KiB chunks. */
static void fill(char *path, long n, int positional) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        printf("%s %s ERR %s\n", positional ? "pfill" : "fill", path, errno_name(errno));
        return;
    }
    long done = 0;
    while (done < n) {
        size_t want = (size_t)(n - done) < sizeof chunk ? (size_t)(n - done) : sizeof chunk;
        ssize_t got = positional ? pwrite(fd, chunk, want, done) : write(fd, chunk, want);
        if (got < 0) {
            printf("%s %s ERR %s wrote=%ld\n", positional ? "pfill" : "fill", path,
                   errno_name(errno), done);
            close(fd);
            return;
        }
        done += got;
    }
    close(fd);
    printf("%s %s wrote=%ld\n", positional ? "pfill" : "fill", path, done);
}

int main(int argc, char **argv) {
    memset(chunk, 'x', sizeof chunk);
    for (int i = 1; i < argc; i++) {
        char *op = argv[i];
        char *value = strchr(op, '=');
        if (value) {
            *value++ = '\0';
            pct_decode(value);
        }
        if (!strcmp(op, "hdr")) {
            printf("Content-Type: text/plain\n\n");
        } else if (!strcmp(op, "fill") || !strcmp(op, "pfill")) {
            char *n = second(value);
            fill(value, atol(n), op[0] == 'p');
        } else if (!strcmp(op, "mkdirs")) {
            /* mkdirs=PREFIX:N makes PREFIX0 .. PREFIX<N-1>. */
            int n = atoi(second(value)), made = 0;
            char path[512];
            for (; made < n; made++) {
                snprintf(path, sizeof path, "%s%d", value, made);
                if (mkdir(path, 0755) < 0) break;
            }
            if (made < n)
                printf("mkdirs made=%d ERR %s\n", made, errno_name(errno));
            else
                printf("mkdirs made=%d\n", made);
        } else if (!strcmp(op, "write")) {
            char *text = second(value);
            FILE *f = fopen(value, "w");
            if (!f || fputs(text, f) < 0 || fclose(f) != 0)
                printf("write ERR %s\n", errno_name(errno));
            else
                printf("write OK\n");
        } else if (!strcmp(op, "read") && value) {
            FILE *f = fopen(value, "r");
            if (!f) {
                printf("read ERR %s\n", errno_name(errno));
                continue;
            }
            char buf[4096];
            size_t got;
            while ((got = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, got, stdout);
            fclose(f);
            printf("\n");
        } else if (!strcmp(op, "ls") && value) {
            DIR *d = opendir(value);
            if (!d) {
                printf("ls ERR %s\n", errno_name(errno));
                continue;
            }
            char *names[1024];
            int count = 0;
            struct dirent *e;
            while ((e = readdir(d)) && count < 1024)
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                    names[count++] = strdup(e->d_name);
            closedir(d);
            qsort(names, (size_t)count, sizeof *names, cmp_str);
            printf("ls %s:", value);
            for (int k = 0; k < count; k++) printf(" %s", names[k]);
            printf("\n");
        } else if (!strcmp(op, "exit") && value) {
            fflush(stdout);
            exit(atoi(value));
        } else if (!strcmp(op, "trap")) {
            fflush(stdout);
            __builtin_trap();
        } else if (!strcmp(op, "loop")) {
            fflush(stdout);
            volatile unsigned long spin = 0;
            for (;;) spin++;
        } else {
            fprintf(stderr, "files: bad operation: %s\n", op);
            exit(2);
        }
    }
    fflush(stdout);
    return 0;
}
