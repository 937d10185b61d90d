/*
 * echo.c: send the request body straight back.
 *
 * Reads all of stdin (the request body), then replies with the request's
 * CONTENT_TYPE (or application/octet-stream when there is none) and the
 * body bytes unchanged. Binary-safe: it never treats the body as text.
 *
 * Build: see build.sh.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Write all of buf to fd, retrying short writes. */
static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(void) {
    size_t cap = 64 * 1024, len = 0;
    char *body = malloc(cap);
    if (!body) return 1;
    for (;;) {
        if (len == cap) {
            char *bigger = realloc(body, cap * 2);
            if (!bigger) return 1;
            body = bigger;
            cap *= 2;
        }
        ssize_t n = read(0, body + len, cap - len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        if (n == 0) break;
        len += (size_t)n;
    }

    const char *type = getenv("CONTENT_TYPE");
    if (!type || !*type) type = "application/octet-stream";

    if (write_all(1, "Content-Type: ", 14) || write_all(1, type, strlen(type)) ||
        write_all(1, "\n\n", 2) || write_all(1, body, len))
        return 1;
    free(body);
    return 0;
}
