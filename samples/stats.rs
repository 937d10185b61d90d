//! stats.rs: a small JSON API in Rust, std only.
//!
//! Send it numbers, get their count, sum, mean, minimum and maximum:
//!
//!     GET  /stats?n=1&n=2.5&n=4.5
//!     POST /stats            with a body such as "1 2.5, 4.5" (whitespace or commas)
//!
//!     Content-Type: application/json
//!
//!     {"count":3,"sum":8,"mean":2.6666666666666665,"min":1,"max":4.5}
//!
//! It reads the request the CGI way:
//!
//! - the **query string arrives as argv**: wagi splits it on `&` and passes the
//!   items raw (`argv[1..]`, still percent-encoded), after `argv[0]`, the route;
//! - the **method and the rest are environment variables** (`REQUEST_METHOD`, ...);
//! - the **body is stdin** (read to the end: wagi closes it after the body).
//!
//! and it answers the CGI way: header lines, a blank line, the body, on stdout.
//! A `Status:` header sets the HTTP status; without one it is 200.
//!
//! Mistakes get a 4xx with a JSON error that says what was wrong, never a 500:
//! a module that traps or exits non-zero is the server's failure, not the
//! client's.
//!
//! Build (see build.sh): rustc --target wasm32-wasi -O stats.rs

use std::env;
use std::fmt::Write as _;
use std::io::{self, Read, Write};

/// What the client did wrong: an HTTP status and a message for the JSON body.
struct Problem {
    status: &'static str,
    message: String,
    extra_headers: &'static str,
}

impl Problem {
    fn bad_request(message: String) -> Problem {
        Problem {
            status: "400 Bad Request",
            message,
            extra_headers: "",
        }
    }
}

fn main() {
    let (status, headers, body) = match answer() {
        Ok(json) => ("200 OK", "", json),
        Err(p) => (
            p.status,
            p.extra_headers,
            format!("{{\"error\":{}}}", json_string(&p.message)),
        ),
    };
    let response = format!(
        "Status: {}\nContent-Type: application/json\n{}\n{}\n",
        status, headers, body
    );
    // One write of the whole response; if stdout is gone there is nobody to tell.
    let _ = io::stdout().write_all(response.as_bytes());
}

/// The JSON for a good request, or what was wrong with it.
fn answer() -> Result<String, Problem> {
    let method = env::var("REQUEST_METHOD").unwrap_or_default();
    if !matches!(method.as_str(), "GET" | "HEAD" | "POST") {
        return Err(Problem {
            status: "405 Method Not Allowed",
            message: format!("method '{}' is not allowed: use GET or POST", method),
            extra_headers: "Allow: GET, HEAD, POST\n",
        });
    }
    let mut numbers = Vec::new();

    // argv[0] is the route (SCRIPT_NAME); every other item is one `name=value`
    // of the query string. args_os, not args: a query may carry bytes that are
    // not UTF-8, and that is the client's mistake, not a reason to panic.
    for item in env::args_os().skip(1) {
        let item = item
            .into_string()
            .map_err(|_| Problem::bad_request("the query string is not valid UTF-8".into()))?;
        let (name, value) = match item.split_once('=') {
            Some((name, value)) => (percent_decode(name)?, percent_decode(value)?),
            None => (percent_decode(&item)?, String::new()),
        };
        if name != "n" {
            return Err(Problem::bad_request(format!(
                "unknown parameter '{}': send numbers as n=NUMBER",
                name
            )));
        }
        numbers.push(parse_number(&value)?);
    }

    if method == "POST" {
        let mut body = Vec::new();
        io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| Problem::bad_request(format!("cannot read the body: {}", e)))?;
        let body = String::from_utf8(body)
            .map_err(|_| Problem::bad_request("the body is not valid UTF-8".into()))?;
        for word in body.split(|c: char| c == ',' || c.is_whitespace()) {
            if !word.is_empty() {
                numbers.push(parse_number(word)?);
            }
        }
    }
    summarize(&numbers)
}

/// `{"count":..,"sum":..,"mean":..,"min":..,"max":..}`; no numbers give nulls.
fn summarize(numbers: &[f64]) -> Result<String, Problem> {
    let sum: f64 = numbers.iter().sum();
    if !sum.is_finite() {
        return Err(Problem::bad_request(
            "the sum is too large for a 64-bit float".into(),
        ));
    }
    let mut json = format!("{{\"count\":{},\"sum\":{}", numbers.len(), json_number(sum));
    if numbers.is_empty() {
        json.push_str(",\"mean\":null,\"min\":null,\"max\":null}");
        return Ok(json);
    }
    let mean = sum / numbers.len() as f64;
    let min = numbers.iter().copied().fold(f64::INFINITY, f64::min);
    let max = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let _ = write!(
        json,
        ",\"mean\":{},\"min\":{},\"max\":{}}}",
        json_number(mean),
        json_number(min),
        json_number(max)
    );
    Ok(json)
}

/// A finite number, or a 400 naming the text that is not one.
fn parse_number(text: &str) -> Result<f64, Problem> {
    match text.trim().parse::<f64>() {
        // "inf" and "NaN" parse as f64, but JSON has no way to write them.
        Ok(n) if n.is_finite() => Ok(n),
        _ => Err(Problem::bad_request(format!("'{}' is not a number", text))),
    }
}

/// Decode `%XX` escapes and `+` (a space, in a query string) into UTF-8 text.
fn percent_decode(text: &str) -> Result<String, Problem> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => out.push(byte),
                    None => {
                        return Err(Problem::bad_request(format!(
                            "bad percent-encoding in '{}'",
                            text
                        )))
                    }
                }
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| Problem::bad_request(format!("'{}' does not decode to UTF-8", text)))
}

/// Integers without a fraction ("4", not "4.0"); the rest in Rust's shortest
/// round-trip form ("2.5", "1e300"), which is valid JSON.
fn json_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{:?}", n)
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
