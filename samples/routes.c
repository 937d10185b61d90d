/*
 * routes.c: a module with its own sub-routes.
 *
 * When a module exports `_routes`, wagi calls it once at load time and reads
 * one "<pattern> <export>" line per sub-route from its stdout. Mounted at
 * "/routes/..." (see modules.toml), this module serves:
 *
 *   /routes/...          -> _start   (main below)
 *   /routes/hello        -> export "hello"
 *   /routes/goodbye/...  -> export "goodbye"
 *
 * Each handler is called on a fresh instance, alone. This is a WASI
 * "command" module: wasm-ld wraps every export other than _start so that it
 * runs the C constructors first and flushes stdio after, so a handler can
 * use printf/getenv without _start having run. (No _initialize is needed.)
 *
 * Build: see build.sh.
 */
#include <stdio.h>
#include <stdlib.h>

#define EXPORT(name) __attribute__((export_name(name)))

static const char *env_or_empty(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

static void respond(const char *export) {
    printf("Content-Type: text/plain\n\n");
    printf("This is the routes sample: export %s ran.\n", export);
    printf("SCRIPT_NAME=%s\n", env_or_empty("SCRIPT_NAME"));
    printf("PATH_INFO=%s\n", env_or_empty("PATH_INFO"));
    printf("X_MATCHED_ROUTE=%s\n", env_or_empty("X_MATCHED_ROUTE"));
    fflush(stdout);
}

EXPORT("_routes") void routes(void) {
    printf("/hello hello\n");
    printf("/goodbye/... goodbye\n");
    fflush(stdout);
}

EXPORT("hello") void hello(void) { respond("hello"); }

EXPORT("goodbye") void goodbye(void) { respond("goodbye"); }

int main(void) {
    respond("_start");
    return 0;
}
