/* hello.c: the classic-CGI contender of bench/compare.py.
 *
 * The same response as samples/hello.wat, from a native program that nginx +
 * fcgiwrap start once per request (fork + exec): the header block, a blank line,
 * then the body. compare.py builds it with the machine's C compiler (cc -O2) at
 * bench time; nothing here is committed in binary form.
 */
#include <stdio.h>

int main(void) {
    static const char response[] = "Content-Type: text/plain\n\nHello, world!\n";
    /* One write, like the WAT module: fwrite then the exit flush. */
    fwrite(response, 1, sizeof response - 1, stdout);
    return 0;
}
