// request.ts: a page that shows the request it was given, in AssemblyScript.
//
//   GET  /request/some/path?name=Ada&lang=en
//   POST /request          (try the form on the page)
//
// A wagi module reads the request the CGI way:
//
// - the environment holds the request line and the headers (REQUEST_METHOD,
//   SCRIPT_NAME, PATH_INFO, QUERY_STRING, CONTENT_TYPE, HTTP_USER_AGENT, ...);
// - argv[0] is the route, and each query-string item is one more argument,
//   still percent-encoded: "?name=Ada&lang=en" -> ["/request", "name=Ada", "lang=en"];
// - stdin is the request body, up to end of file;
//
// and answers with CGI on stdout: header lines, a blank line, the body.
//
// With @assemblyscript/wasi-shim, AssemblyScript reaches these through
// `process.env` (a Map), `process.argv` and `process.stdin`/`process.stdout`.
// Every value shown on the page comes from the client, so every one of them
// goes through escapeHtml() first.
//
// Built with the stub runtime (no garbage collector): each request runs in a
// fresh instance that lives for milliseconds, so nothing needs freeing.
//
// Build: see build.sh.

/** How much of the body the page shows. */
const BODY_SHOWN: i32 = 4096;

/** The variable `name`, or "" when the request has none. */
function env(name: string): string {
  return process.env.has(name) ? process.env.get(name) : "";
}

/** `&`, `<`, `>`, `"` and `'` as entities: safe in element text and in quoted attributes. */
function escapeHtml(text: string): string {
  let out = "";
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    let entity = "";
    switch (text.charCodeAt(i)) {
      case 0x26: entity = "&amp;"; break;
      case 0x3c: entity = "&lt;"; break;
      case 0x3e: entity = "&gt;"; break;
      case 0x22: entity = "&quot;"; break;
      case 0x27: entity = "&#39;"; break;
      default: continue;
    }
    out += text.substring(start, i) + entity;
    start = i + 1;
  }
  return out + text.substring(start);
}

/** Whether `bytes` is well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF). */
function isUtf8(bytes: Uint8Array): bool {
  let i = 0;
  const n = bytes.length;
  while (i < n) {
    const b = <u32>bytes[i];
    let extra = 0;
    let min: u32 = 0;
    let cp: u32 = 0;
    if (b < 0x80) { i++; continue; }
    else if ((b & 0xe0) == 0xc0) { extra = 1; min = 0x80; cp = b & 0x1f; }
    else if ((b & 0xf0) == 0xe0) { extra = 2; min = 0x800; cp = b & 0x0f; }
    else if ((b & 0xf8) == 0xf0) { extra = 3; min = 0x10000; cp = b & 0x07; }
    else return false;
    if (i + extra >= n) return false;
    for (let k = 1; k <= extra; k++) {
      const c = <u32>bytes[i + k];
      if ((c & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

/** The UTF-8 text in `bytes`, or null when they are not UTF-8. */
function utf8Text(bytes: Uint8Array): string | null {
  if (!isUtf8(bytes)) return null;
  return String.UTF8.decodeUnsafe(bytes.dataStart, <usize>bytes.length);
}

function hexValue(c: i32): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30; // 0-9
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10; // A-F
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10; // a-f
  return -1;
}

/**
 * A query-string item decoded: `+` is a space and `%XX` a byte. A malformed
 * escape stays as it is; bytes that are not UTF-8 make it null (the page says
 * so rather than guessing). The standard decodeURIComponent would throw, which
 * in a WebAssembly module means a trap, and a trap is a 500 for the client.
 */
function formDecode(text: string): string | null {
  const raw = String.UTF8.encode(text);
  const src = Uint8Array.wrap(raw);
  const out = new Uint8Array(src.length);
  let n = 0;
  for (let i = 0; i < src.length; i++) {
    const c = <i32>src[i];
    if (c == 0x2b) {
      out[n++] = 0x20;
    } else if (c == 0x25 && i + 2 < src.length) {
      const hi = hexValue(<i32>src[i + 1]);
      const lo = hexValue(<i32>src[i + 2]);
      if (hi < 0 || lo < 0) {
        out[n++] = <u8>c;
      } else {
        out[n++] = <u8>((hi << 4) | lo);
        i += 2;
      }
    } else {
      out[n++] = <u8>c;
    }
  }
  return utf8Text(out.subarray(0, n));
}

/** HTTP_USER_AGENT -> User-Agent. */
function headerName(variable: string): string {
  const words = variable.substring(5).toLowerCase().split("_");
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    if (w.length > 0) words[i] = w.charAt(0).toUpperCase() + w.substring(1);
  }
  return words.join("-");
}

/** All of stdin: the request body. */
function readBody(): Uint8Array {
  let body = new Uint8Array(0);
  const chunk = new ArrayBuffer(65536);
  while (true) {
    const got = process.stdin.read(chunk);
    if (got <= 0) break;
    const grown = new Uint8Array(body.length + got);
    grown.set(body);
    grown.set(Uint8Array.wrap(chunk, 0, got), body.length);
    body = grown;
  }
  return body;
}

function row(name: string, value: string): string {
  return "<tr><th>" + escapeHtml(name) + "</th><td>" + escapeHtml(value) + "</td></tr>\n";
}

function shown(text: string | null): string {
  return text === null ? "(not UTF-8)" : text;
}

const method = env("REQUEST_METHOD");
const here = env("SCRIPT_NAME") + env("PATH_INFO");
const body = method == "POST" || method == "PUT" || method == "PATCH" ? readBody() : new Uint8Array(0);

let page = "";
page += "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
page += "<title>Your request</title>\n";
page += "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}";
page += "th{text-align:left;padding-right:1em}pre{background:#eee;padding:.5em}</style>\n";
page += "</head>\n<body>\n";
page += "<h1>" + escapeHtml(method) + " " + escapeHtml(here) + "</h1>\n";
page += "<p>An AssemblyScript module made this page for this one request.</p>\n";

page += "<h2>Request</h2>\n<table>\n";
const requestVars = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "REMOTE_ADDR"];
for (let i = 0; i < requestVars.length; i++) page += row(requestVars[i], env(requestVars[i]));
page += "</table>\n";

page += "<h2>Query parameters (argv)</h2>\n";
const argv = process.argv;
if (argv.length <= 1) {
  page += "<p>None. Try <a href=\"?name=Ada&amp;lang=en\">?name=Ada&amp;lang=en</a>.</p>\n";
} else {
  page += "<table>\n";
  for (let i = 1; i < argv.length; i++) {
    const item = argv[i];
    const eq = item.indexOf("=");
    const name = eq < 0 ? item : item.substring(0, eq);
    const value = eq < 0 ? "" : item.substring(eq + 1);
    page += row(shown(formDecode(name)), shown(formDecode(value)));
  }
  page += "</table>\n";
}

page += "<h2>Headers (HTTP_ variables)</h2>\n<table>\n";
const names = process.env.keys().sort();
for (let i = 0; i < names.length; i++) {
  if (names[i].startsWith("HTTP_")) page += row(headerName(names[i]), env(names[i]));
}
page += "</table>\n";

page += "<h2>Body (stdin)</h2>\n";
if (body.length == 0) {
  page += "<p>No body.</p>\n";
} else {
  page += "<p>" + body.length.toString() + " bytes of " + escapeHtml(env("CONTENT_TYPE")) + "</p>\n";
  // Cut at a character boundary: never in the middle of a UTF-8 sequence.
  let cut = min(body.length, BODY_SHOWN);
  while (cut < body.length && cut > 0 && (body[cut] & 0xc0) == 0x80) cut--;
  const text = utf8Text(body.subarray(0, cut));
  page += text === null ? "<p>(not UTF-8 text)</p>\n" : "<pre>" + escapeHtml(text) + "</pre>\n";
  if (cut < body.length) page += "<p>(the first " + cut.toString() + " bytes)</p>\n";
}

page += "<form method=\"post\"><input name=\"say\" value=\"hello\"> <button>POST it</button></form>\n";
page += "</body>\n</html>\n";

process.stdout.write("Content-Type: text/html; charset=utf-8\n\n");
process.stdout.write(page);
