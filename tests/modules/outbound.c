/*
 * outbound.c: a test module for outbound HTTP, written against WAGI 0.8's
 * wasi_experimental_http ABI (the imports the Rust crate
 * wasi-experimental-http declares), driven by its arguments like probe.c.
 *
 * argv[0] is skipped; every other argument is one raw query item, run in
 * order, its value (after the first `=`) percent-decoded (%XX only). See
 * README.md in this folder for the operations.
 *
 * Build: see build.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HTTP_IMPORT(name) \
    __attribute__((import_module("wasi_experimental_http"), import_name(name)))

HTTP_IMPORT("req")
uint32_t http_req(const char *url, size_t url_len, const char *method, size_t method_len,
                  const char *headers, size_t headers_len, const uint8_t *body,
                  size_t body_len, uint16_t *status, uint32_t *handle);
HTTP_IMPORT("close") uint32_t http_close(uint32_t handle);
HTTP_IMPORT("header_get")
uint32_t http_header_get(uint32_t handle, const char *name, size_t name_len, char *value,
                         size_t value_len, size_t *written);
HTTP_IMPORT("headers_get_all")
uint32_t http_headers_get_all(uint32_t handle, char *buf, size_t buf_len, size_t *written);
HTTP_IMPORT("body_read")
uint32_t http_body_read(uint32_t handle, uint8_t *buf, size_t buf_len, size_t *written);

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

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

/* The next request's method, headers and body; the last handle. */
static char method[64] = "GET";
static char headers[8192];
static size_t headers_len;
static char body[8192];
static size_t body_len;
static uint32_t last = 0;

static uint32_t do_req(const char *url, uint16_t *status, uint32_t *handle) {
    return http_req(url, strlen(url), method, strlen(method), headers, headers_len,
                    (const uint8_t *)body, body_len, status, handle);
}

/* Reads the whole body of `handle`; prints it when `print` is set. */
static uint32_t read_body(uint32_t handle, int print, size_t *total) {
    static uint8_t buf[4096];
    *total = 0;
    for (;;) {
        size_t got = 0;
        uint32_t err = http_body_read(handle, buf, sizeof buf, &got);
        if (err) return err;
        if (got == 0) return 0;
        if (print) fwrite(buf, 1, got, stdout);
        *total += got;
    }
}

static void bad(const char *op) {
    fprintf(stderr, "outbound: bad operation: %s\n", op);
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char *op = argv[i];
        char *value = strchr(op, '=');
        if (value) {
            *value++ = '\0';
            pct_decode(value);
        }
        if (!strcmp(op, "hdr")) {
            printf("Content-Type: text/plain\n\n");
        } else if (!strcmp(op, "method") && value) {
            snprintf(method, sizeof method, "%s", value);
        } else if (!strcmp(op, "header") && value) {
            headers_len += (size_t)snprintf(headers + headers_len,
                                            sizeof headers - headers_len, "%s\n", value);
        } else if (!strcmp(op, "body") && value) {
            body_len = (size_t)snprintf(body, sizeof body, "%s", value);
        } else if (!strcmp(op, "req") && value) {
            uint16_t status = 0;
            uint32_t handle = 0;
            uint32_t err = do_req(value, &status, &handle);
            if (err) {
                printf("req=%u\n", err);
            } else {
                last = handle;
                printf("req=0 status=%u\n", status);
            }
        } else if (!strcmp(op, "get") && value) {
            char *colon = strchr(value, ':');
            size_t cap = 4096;
            if (colon) {
                *colon = '\0';
                cap = (size_t)atoi(colon + 1);
            }
            static char buf[65536];
            size_t written = 0;
            uint32_t err = http_header_get(last, value, strlen(value), buf, cap, &written);
            if (err)
                printf("get %s=%u\n", value, err);
            else
                printf("get %s=0 %.*s\n", value, (int)written, buf);
        } else if (!strcmp(op, "all")) {
            static char buf[65536];
            size_t written = 0;
            uint32_t err = http_headers_get_all(last, buf, sizeof buf, &written);
            printf("all=%u\n", err);
            if (!err) fwrite(buf, 1, written, stdout);
        } else if (!strcmp(op, "read")) {
            size_t total;
            uint32_t err = read_body(last, 1, &total);
            printf("\nread=%u bytes=%zu\n", err, total);
        } else if (!strcmp(op, "count")) {
            size_t total;
            uint32_t err = read_body(last, 0, &total);
            printf("count=%u bytes=%zu\n", err, total);
        } else if (!strcmp(op, "close")) {
            printf("close=%u\n", http_close(value ? (uint32_t)atoi(value) : last));
        } else if (!strcmp(op, "open") && value) {
            /* open=N:URL: N requests, none closed; stops at the first error. */
            char *colon = strchr(value, ':');
            if (!colon) bad(op);
            *colon = '\0';
            int n = atoi(value), ok = 0;
            uint32_t err = 0;
            for (; ok < n; ok++) {
                uint16_t status;
                uint32_t handle;
                if ((err = do_req(colon + 1, &status, &handle))) break;
            }
            printf("open ok=%d err=%u\n", ok, err);
        } else if (!strcmp(op, "cycle") && value) {
            /* cycle=N:URL: N times request, read, close. */
            char *colon = strchr(value, ':');
            if (!colon) bad(op);
            *colon = '\0';
            int n = atoi(value), ok = 0;
            uint32_t err = 0;
            for (; ok < n; ok++) {
                uint16_t status;
                uint32_t handle;
                size_t total;
                if ((err = do_req(colon + 1, &status, &handle))) break;
                if ((err = read_body(handle, 0, &total))) break;
                if ((err = http_close(handle))) break;
            }
            printf("cycle ok=%d err=%u\n", ok, err);
        } else if (!strcmp(op, "badhandle")) {
            uint8_t buf[16];
            size_t got;
            printf("badhandle=%u\n", http_body_read(999999, buf, sizeof buf, &got));
        } else if (!strcmp(op, "badptr") && value) {
            uint16_t status;
            uint32_t handle;
            /* The URL's length runs past the end of linear memory. */
            printf("badptr=%u\n", http_req(value, 0x7fffffff, method, strlen(method), headers,
                                           headers_len, NULL, 0, &status, &handle));
        } else if (!strcmp(op, "print") && value) {
            printf("%s\n", value);
        } else {
            bad(op);
        }
    }
    fflush(stdout);
    return 0;
}
