/*
 * guestbook.c: a small web application as one WASI module.
 *
 *   GET  /guestbook                  the page: a form and every entry, newest first
 *   POST /guestbook                  sign it (an HTML form, x-www-form-urlencoded);
 *                                    answers 303 See Other back to the page
 *   GET  /guestbook/static/NAME      a file from the read-only /static volume
 *                                    (the export "static", see modules.toml)
 *
 * What it shows, beside the CGI basics (environment, stdin, stdout):
 *
 * - State lives in a volume. The module is a fresh instance per request and
 *   remembers nothing, so entries go to /data/entries.log, a directory that
 *   modules.toml maps from the host ("volumes"). The module sees that
 *   directory and nothing else of the host's files.
 *
 * - Several requests write at once. gunicorn runs several workers, so two
 *   POSTs can append at the same moment. Each entry is therefore one line,
 *   written with ONE write() to a file opened with O_APPEND: the kernel puts
 *   each such write at the end of the file whole, never interleaved with
 *   another. A reader may still catch a line half written, so lines without
 *   their final newline are skipped. No lock file is needed (and WASI has
 *   no flock).
 *
 * - Post/Redirect/Get: a successful POST answers "Status: 303 See Other"
 *   with a Location, so the browser loads the page with a GET and a reload
 *   does not sign twice.
 *
 * - Everything the visitor typed is untrusted. The form body is parsed and
 *   percent-decoded here, checked (UTF-8, no control characters, lengths),
 *   stored escaped so it cannot break the file's line format, and
 *   HTML-escaped on output, so "<script>" shows as text.
 *
 * - A bad request is the visitor's problem, answered with a 4xx and a
 *   helpful page, never a crash (a trap or a non-zero exit is a 500).
 *
 * Build: see ../build.sh.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define EXPORT(name) __attribute__((export_name(name)))

#define ENTRIES_PATH "/data/entries.log"
#define STATIC_DIR "/static/"
#define MAX_BODY (16 * 1024)     /* a form body larger than this is refused (413) */
#define MAX_NAME 60              /* characters (code points), not bytes */
#define MAX_MESSAGE 1000
#define MAX_SHOWN 100            /* newest entries on the page */

/* ------------------------------------------------------------------ text buffer */

/* A growable byte string: the whole response is built in one, then written once. */
typedef struct {
    char *p;
    size_t len, cap;
} buf;

static void buf_add(buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) abort(); /* out of memory: a 500 is all that is left */
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_printf(buf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Text for HTML element content or a double- or single-quoted attribute. */
static void buf_html(buf *b, const char *s, size_t n) {
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *entity;
        switch (s[i]) {
        case '&': entity = "&amp;"; break;
        case '<': entity = "&lt;"; break;
        case '>': entity = "&gt;"; break;
        case '"': entity = "&quot;"; break;
        case '\'': entity = "&#39;"; break;
        default: continue;
        }
        buf_add(b, s + start, i - start);
        buf_puts(b, entity);
        start = i + 1;
    }
    buf_add(b, s + start, n - start);
}

static void buf_html_str(buf *b, const char *s) { buf_html(b, s, strlen(s)); }

/* ------------------------------------------------------------------ I/O helpers */

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read fd to the end into a new buffer; more than `limit` bytes gives -1 and errno EFBIG. */
static int read_all(int fd, buf *out, size_t limit) {
    char chunk[8192];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) return 0;
        if (out->len + (size_t)n > limit) {
            errno = EFBIG;
            return -1;
        }
        buf_add(out, chunk, (size_t)n);
    }
}

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

/* Send the response: CGI headers (each ending in "\n"), a blank line, the body. */
static void respond(const char *headers, const buf *body) {
    buf out = {0};
    buf_puts(&out, headers);
    buf_puts(&out, "\n");
    if (body && body->len && strcmp(env("REQUEST_METHOD"), "HEAD") != 0)
        buf_add(&out, body->p, body->len);
    write_all(1, out.p, out.len);
    free(out.p);
}

static void respond_text(const char *status, const char *extra_headers, const char *text) {
    buf headers = {0}, body = {0};
    buf_printf(&headers, "Status: %s\nContent-Type: text/plain; charset=utf-8\n", status);
    buf_puts(&headers, extra_headers);
    buf_puts(&body, text);
    respond(headers.p, &body);
    free(headers.p);
    free(body.p);
}

/* ------------------------------------------------------------------ the form */

static int hex(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/*
 * Decode one application/x-www-form-urlencoded value in place: "+" is a
 * space, "%XX" a byte. Returns the decoded length, or -1 for a malformed
 * escape. The result may hold any byte, NUL included: it is checked next.
 */
static long form_decode(char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            s[o++] = ' ';
        } else if (s[i] == '%') {
            if (i + 2 >= n) return -1;
            int hi = hex((unsigned char)s[i + 1]), lo = hex((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            s[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            s[o++] = s[i];
        }
    }
    return (long)o;
}

/*
 * Count the code points of s if it is well-formed UTF-8 (no overlong forms,
 * no surrogates, nothing past U+10FFFF); -1 if it is not.
 */
static long utf8_length(const char *s, size_t n) {
    long count = 0;
    for (size_t i = 0; i < n; count++) {
        unsigned char c = (unsigned char)s[i];
        size_t extra;
        unsigned long cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xe0) == 0xc0) { extra = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { extra = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { extra = 3; cp = c & 0x07; min = 0x10000; }
        else return -1;
        if (i + extra >= n) return -1;
        for (size_t k = 1; k <= extra; k++) {
            unsigned char d = (unsigned char)s[i + k];
            if ((d & 0xc0) != 0x80) return -1;
            cp = cp << 6 | (d & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return -1;
        i += extra + 1;
    }
    return count;
}

/* Trim ASCII whitespace at both ends of s[0..*n), in place. */
static char *trim(char *s, size_t *n) {
    while (*n && isspace((unsigned char)s[0])) { s++; (*n)--; }
    while (*n && isspace((unsigned char)s[*n - 1])) (*n)--;
    return s;
}

/* Browsers send line breaks in a textarea as CRLF; keep LF only. */
static size_t normalize_newlines(char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            s[o++] = '\n';
            if (i + 1 < n && s[i + 1] == '\n') i++;
        } else {
            s[o++] = s[i];
        }
    }
    return o;
}

/* Whether s has a control character other than those in `allowed`. */
static int has_control(const char *s, size_t n, const char *allowed) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 || c == 0x7f) && !(c && strchr(allowed, c))) return 1;
    }
    return 0;
}

typedef struct {
    char *p;
    size_t n;
} field;

/* Find `name` in a urlencoded body (the first one wins); decodes it in place. */
static int form_field(char *body, size_t len, const char *name, field *out) {
    size_t name_len = strlen(name);
    out->p = NULL;
    out->n = 0;
    for (size_t i = 0; i < len;) {
        size_t end = i;
        while (end < len && body[end] != '&') end++;
        char *eq = memchr(body + i, '=', end - i);
        size_t key_len = eq ? (size_t)(eq - (body + i)) : end - i;
        if (key_len == name_len && memcmp(body + i, name, name_len) == 0) {
            char *value = eq ? eq + 1 : body + end;
            long n = form_decode(value, (size_t)(body + end - value));
            if (n < 0) return -1;
            out->p = value;
            out->n = (size_t)n;
            return 0;
        }
        i = end + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ the store */

/*
 * One entry per line: "v1 TAB seconds TAB name TAB message LF". The name
 * and message are stored with "%", TAB, LF and CR as %XX, so no field can
 * break the line format, whatever the visitor typed.
 */
static void buf_field(buf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%' || c == '\t' || c == '\n' || c == '\r')
            buf_printf(b, "%%%02X", (unsigned char)c);
        else
            buf_add(b, &c, 1);
    }
}

static int append_entry(const char *name, size_t name_len, const char *message, size_t message_len) {
    buf line = {0};
    buf_printf(&line, "v1\t%lld\t", (long long)time(NULL));
    buf_field(&line, name, name_len);
    buf_puts(&line, "\t");
    buf_field(&line, message, message_len);
    buf_puts(&line, "\n");
    int fd = open(ENTRIES_PATH, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) {
        free(line.p);
        return -1;
    }
    /* One write: appended whole (see the top of this file). */
    int status = write_all(fd, line.p, line.len);
    if (close(fd) != 0) status = -1;
    free(line.p);
    return status;
}

typedef struct {
    long long when;
    field name, message; /* still %XX-escaped, pointing into the file's text */
} entry;

/* Parse "v1\tSECONDS\tNAME\tMESSAGE" (without its LF); 0 if it is not one. */
static int parse_entry(char *line, size_t n, entry *e) {
    char *fields[4];
    size_t lens[4];
    size_t count = 0, start = 0;
    for (size_t i = 0; i <= n && count < 4; i++) {
        if (i == n || line[i] == '\t') {
            fields[count] = line + start;
            lens[count++] = i - start;
            start = i + 1;
        }
    }
    if (count != 4 || start != n + 1 || lens[0] != 2 || memcmp(fields[0], "v1", 2) != 0)
        return 0;
    char *end;
    errno = 0;
    e->when = strtoll(fields[1], &end, 10);
    if (errno || end != fields[1] + lens[1] || lens[1] == 0) return 0;
    e->name = (field){fields[2], lens[2]};
    e->message = (field){fields[3], lens[3]};
    return 1;
}

/* Undo buf_field's escaping, then HTML-escape. */
static void buf_stored_html(buf *b, field f) {
    buf plain = {0};
    for (size_t i = 0; i < f.n; i++) {
        int hi, lo;
        if (f.p[i] == '%' && i + 2 < f.n &&
            (hi = hex((unsigned char)f.p[i + 1])) >= 0 && (lo = hex((unsigned char)f.p[i + 2])) >= 0) {
            char c = (char)(hi << 4 | lo);
            buf_add(&plain, &c, 1);
            i += 2;
        } else {
            buf_add(&plain, f.p + i, 1);
        }
    }
    if (plain.len) buf_html(b, plain.p, plain.len);
    free(plain.p);
}

/* ------------------------------------------------------------------ the page */

typedef struct {
    const char *status;  /* "200 OK", "400 Bad Request", ... */
    const char *error;   /* shown above the form, or NULL */
    field name, message; /* the form's values to show again after an error */
} page_state;

static void render_entries(buf *b, buf *text) {
    /* Collect complete lines; a last line without its LF is a write in progress. */
    size_t count = 0, cap = 0;
    entry *entries = NULL;
    size_t start = 0;
    for (size_t i = 0; i < text->len; i++) {
        if (text->p[i] != '\n') continue;
        entry e;
        if (parse_entry(text->p + start, i - start, &e)) {
            if (count == cap) {
                cap = cap ? cap * 2 : 64;
                entries = realloc(entries, cap * sizeof *entries);
                if (!entries) abort();
            }
            entries[count++] = e;
        }
        start = i + 1;
    }
    if (count == 0) {
        buf_puts(b, "<p class=\"empty\">No entries yet: be the first to sign.</p>\n");
        free(entries);
        return;
    }
    buf_printf(b, "<h2>%zu %s</h2>\n<ol class=\"entries\">\n", count, count == 1 ? "entry" : "entries");
    size_t shown = 0;
    for (size_t k = count; k-- > 0 && shown < MAX_SHOWN; shown++) {
        entry *e = &entries[k];
        time_t when = (time_t)e->when;
        struct tm tm;
        char iso[32] = "", human[32] = "";
        if (gmtime_r(&when, &tm)) {
            strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
            strftime(human, sizeof human, "%d %b %Y, %H:%M UTC", &tm);
        }
        buf_printf(b, "<li id=\"entry-%zu\">\n<p class=\"meta\"><span class=\"name\">", k + 1);
        buf_stored_html(b, e->name);
        buf_printf(b, "</span> <time datetime=\"%s\">%s</time></p>\n<p class=\"message\">", iso, human);
        buf_stored_html(b, e->message);
        buf_puts(b, "</p>\n</li>\n");
    }
    buf_puts(b, "</ol>\n");
    if (count > shown) buf_printf(b, "<p class=\"older\">and %zu older entries</p>\n", count - shown);
    free(entries);
}

static void show_page(const page_state *st) {
    buf text = {0};
    int fd = open(ENTRIES_PATH, O_RDONLY);
    if (fd < 0 && errno != ENOENT) {
        respond_text("500 Internal Server Error", "", "The guestbook cannot be read right now.\n");
        fprintf(stderr, "guestbook: cannot open %s: %s\n", ENTRIES_PATH, strerror(errno));
        return;
    }
    if (fd >= 0) {
        if (read_all(fd, &text, (size_t)64 << 20) != 0)
            fprintf(stderr, "guestbook: cannot read %s: %s\n", ENTRIES_PATH, strerror(errno));
        close(fd);
    }

    const char *self = env("SCRIPT_NAME");
    buf b = {0};
    buf_puts(&b, "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                 "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                 "<title>Guestbook</title>\n<link rel=\"stylesheet\" href=\"");
    buf_html_str(&b, self);
    buf_puts(&b, "/static/guestbook.css\">\n</head>\n<body>\n<main>\n<h1>Guestbook</h1>\n"
                 "<form method=\"post\" action=\"");
    buf_html_str(&b, self);
    buf_puts(&b, "\" accept-charset=\"utf-8\">\n");
    if (st->error) {
        buf_puts(&b, "<p class=\"error\" role=\"alert\">");
        buf_html_str(&b, st->error);
        buf_puts(&b, "</p>\n");
    }
    buf_printf(&b, "<label for=\"name\">Your name</label>\n"
                   "<input id=\"name\" name=\"name\" maxlength=\"%d\" required value=\"", MAX_NAME);
    if (st->name.n) buf_html(&b, st->name.p, st->name.n);
    buf_printf(&b, "\">\n<label for=\"message\">Message</label>\n"
                   "<textarea id=\"message\" name=\"message\" maxlength=\"%d\" rows=\"4\" required>",
               MAX_MESSAGE);
    if (st->message.n) buf_html(&b, st->message.p, st->message.n);
    buf_puts(&b, "</textarea>\n<button type=\"submit\">Sign the guestbook</button>\n</form>\n");
    render_entries(&b, &text);
    buf_puts(&b, "</main>\n</body>\n</html>\n");

    buf headers = {0};
    buf_printf(&headers, "Status: %s\nContent-Type: text/html; charset=utf-8\n", st->status);
    respond(headers.p, &b);
    free(headers.p);
    free(b.p);
    free(text.p);
}

static void bad_form(const char *error, field name, field message) {
    page_state st = {"400 Bad Request", error, name, message};
    show_page(&st);
}

static void sign(void) {
    /* "application/x-www-form-urlencoded", maybe with parameters ("; charset=UTF-8"). */
    const char *type = env("CONTENT_TYPE");
    static const char form_type[] = "application/x-www-form-urlencoded";
    size_t tn = sizeof form_type - 1;
    if (strncasecmp(type, form_type, tn) != 0 || (type[tn] && type[tn] != ';' && type[tn] != ' ')) {
        respond_text("415 Unsupported Media Type", "",
                     "Send the form as application/x-www-form-urlencoded.\n");
        return;
    }
    buf body = {0};
    if (read_all(0, &body, MAX_BODY) != 0) {
        int too_big = errno == EFBIG;
        free(body.p);
        if (too_big)
            respond_text("413 Content Too Large", "", "That is more than a guestbook entry.\n");
        else
            respond_text("400 Bad Request", "", "The form could not be read.\n");
        return;
    }
    if (!body.p) buf_puts(&body, "");

    field name, message;
    field none = {NULL, 0};
    if (form_field(body.p, body.len, "name", &name) != 0 ||
        form_field(body.p, body.len, "message", &message) != 0) {
        bad_form("The form data is malformed.", none, none);
        free(body.p);
        return;
    }
    name.p = trim(name.p, &name.n);
    message.p = trim(message.p, &message.n);
    message.n = normalize_newlines(message.p, message.n);

    long name_chars = utf8_length(name.p, name.n);
    long message_chars = utf8_length(message.p, message.n);
    const char *error = NULL;
    if (name_chars < 0 || message_chars < 0) {
        /* Not text we can show again safely: drop what was typed. */
        bad_form("The form was not sent as UTF-8 text.", none, none);
        free(body.p);
        return;
    }
    if (has_control(name.p, name.n, "") || has_control(message.p, message.n, "\t\n"))
        error = "Please leave out control characters.";
    else if (name_chars == 0)
        error = "Please tell us your name.";
    else if (message_chars == 0)
        error = "Please write a message.";
    else if (name_chars > MAX_NAME)
        error = "Your name is too long (at most 60 characters).";
    else if (message_chars > MAX_MESSAGE)
        error = "Your message is too long (at most 1000 characters).";
    if (error) {
        bad_form(error, name, message);
        free(body.p);
        return;
    }
    if (append_entry(name.p, name.n, message.p, message.n) != 0) {
        fprintf(stderr, "guestbook: cannot append to %s: %s\n", ENTRIES_PATH, strerror(errno));
        respond_text("503 Service Unavailable", "", "The guestbook cannot be signed right now.\n");
        free(body.p);
        return;
    }
    free(body.p);
    /* Post/Redirect/Get: the browser follows with a GET of the page. */
    buf headers = {0};
    buf_puts(&headers, "Status: 303 See Other\nLocation: ");
    buf_puts(&headers, env("SCRIPT_NAME"));
    buf_puts(&headers, "\n");
    respond(headers.p, NULL);
    free(headers.p);
}

int main(void) {
    const char *method = env("REQUEST_METHOD");
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0) {
        page_state st = {"200 OK", NULL, {NULL, 0}, {NULL, 0}};
        show_page(&st);
    } else if (strcmp(method, "POST") == 0) {
        sign();
    } else {
        respond_text("405 Method Not Allowed", "Allow: GET, HEAD, POST\n", "Use GET or POST.\n");
    }
    return 0;
}

/* ------------------------------------------------------------------ static files */

static const char *content_type(const char *name) {
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".css", "text/css; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".svg", "image/svg+xml"},           {".png", "image/png"},
        {".ico", "image/x-icon"},            {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(dot, types[i].ext) == 0) return types[i].type;
    return "application/octet-stream";
}

/*
 * GET /guestbook/static/NAME: the file NAME from the /static volume. Only
 * plain names ([A-Za-z0-9._-], not starting with a dot) are served. The
 * volume is read-only and wagi confines the module to it anyway; checking
 * the name as well means a mistake in one wall is not a hole.
 */
EXPORT("static") void serve_static(void) {
    const char *method = env("REQUEST_METHOD");
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        respond_text("405 Method Not Allowed", "Allow: GET, HEAD\n", "Use GET.\n");
        return;
    }
    const char *name = env("PATH_INFO");
    if (*name == '/') name++;
    int ok = *name && *name != '.' && strlen(name) < 100;
    for (const char *c = name; ok && *c; c++)
        ok = isalnum((unsigned char)*c) || *c == '.' || *c == '_' || *c == '-';
    buf file = {0};
    if (ok) {
        char path[128];
        snprintf(path, sizeof path, STATIC_DIR "%s", name);
        int fd = open(path, O_RDONLY);
        ok = fd >= 0 && read_all(fd, &file, (size_t)16 << 20) == 0;
        if (fd >= 0) close(fd);
    }
    if (!ok) {
        free(file.p);
        respond_text("404 Not Found", "", "No such file.\n");
        return;
    }
    buf headers = {0};
    buf_printf(&headers, "Content-Type: %s\nCache-Control: public, max-age=300\n",
               content_type(name));
    respond(headers.p, &file);
    free(headers.p);
    free(file.p);
}
