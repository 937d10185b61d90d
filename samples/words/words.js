// A JSON API in JavaScript: counts the words of a text, run by wagi as a WASI 0.2
// command component built by componentize-js (see build.sh).
//
//   GET  /words?text=to+be+or+not+to+be   counts the query's text
//   POST /words                          counts the request body (UTF-8 text)
//
// The answer: {"words":6,"characters":18,"distinct":4,"top":[["be",2],["to",2],...]}
// (at most 5 in "top", most frequent first, then alphabetical).
import { getEnvironment, getArguments } from "wasi:cli/environment@0.2.12";
import { getStdin } from "wasi:cli/stdin@0.2.12";
import { getStdout } from "wasi:cli/stdout@0.2.12";

function write(text) {
  const bytes = new TextEncoder().encode(text);
  const out = getStdout();
  // blocking-write-and-flush takes at most 4096 bytes a call.
  for (let i = 0; i < bytes.length; i += 4096) {
    out.blockingWriteAndFlush(bytes.subarray(i, i + 4096));
  }
}

function answer(status, body) {
  write(`Status: ${status}\nContent-Type: application/json\n\n${JSON.stringify(body)}\n`);
}

function readBody(length) {
  const input = getStdin();
  const chunks = [];
  let got = 0;
  while (got < length) {
    let chunk;
    try {
      chunk = input.blockingRead(BigInt(Math.min(65536, length - got)));
    } catch {
      break; // closed: the body was shorter than CONTENT_LENGTH
    }
    chunks.push(chunk);
    got += chunk.length;
  }
  const body = new Uint8Array(got);
  let at = 0;
  for (const chunk of chunks) {
    body.set(chunk, at);
    at += chunk.length;
  }
  return new TextDecoder().decode(body);
}

// argv[1:] are the raw query items: "text=to+be" -> "to be".
function queryText(args) {
  for (const item of args.slice(1)) {
    const [name, ...rest] = item.split("=");
    if (name === "text") {
      try {
        return decodeURIComponent(rest.join("=").replace(/\+/g, " "));
      } catch {
        return null;
      }
    }
  }
  return "";
}

function count(text) {
  // Letters of the Latin scripts, digits and apostrophes (this engine's regular
  // expressions have no Unicode property classes).
  const words = text.toLowerCase().match(/[a-z0-9\u00c0-\u024f']+/g) || [];
  const counts = new Map();
  for (const word of words) counts.set(word, (counts.get(word) || 0) + 1);
  const top = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 5);
  return { words: words.length, characters: [...text].length, distinct: counts.size, top };
}

export const run = {
  run() {
    const env = Object.fromEntries(getEnvironment());
    const method = env.REQUEST_METHOD || "GET";
    if (method === "POST") {
      answer("200 OK", count(readBody(Number(env.CONTENT_LENGTH || 0))));
    } else if (method === "GET" || method === "HEAD") {
      const text = queryText(getArguments());
      if (text === null) answer("400 Bad Request", { error: "bad percent-encoding in text" });
      else answer("200 OK", count(text));
    } else {
      answer("405 Method Not Allowed", { error: `${method} is not allowed: use GET or POST` });
    }
  },
};
