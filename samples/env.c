/*
 * env.c: show what a WAGI module receives.
 *
 * Prints a plain-text CGI response listing the command-line arguments
 * (the route's SCRIPT_NAME, then one argument per query-string item)
 * and every environment variable, sorted by name so the output is stable.
 *
 *   Content-Type: text/plain
 *
 *   argv[0] = /env
 *   argv[1] = greet=matt
 *   CONTENT_LENGTH=0
 *   ...
 *
 * Build: see build.sh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

/* Order "NAME=value" strings by NAME (then by value, for duplicate names). */
static int by_name(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    size_t nx = strcspn(x, "="), ny = strcspn(y, "=");
    size_t n = nx < ny ? nx : ny;
    int c = memcmp(x, y, n);
    if (c != 0) return c;
    if (nx != ny) return nx < ny ? -1 : 1;
    return strcmp(x, y);
}

int main(int argc, char **argv) {
    size_t n = 0;
    while (environ && environ[n]) n++;
    char **vars = malloc((n + 1) * sizeof *vars);
    if (!vars) return 1;
    for (size_t i = 0; i < n; i++) vars[i] = environ[i];
    qsort(vars, n, sizeof *vars, by_name);

    printf("Content-Type: text/plain\n\n");
    for (int i = 0; i < argc; i++) printf("argv[%d] = %s\n", i, argv[i]);
    for (size_t i = 0; i < n; i++) printf("%s\n", vars[i]);
    free(vars);
    return 0;
}
