//! The CGI/1.1 contract (RFC 3875) between the gateway and a route's
//! command: what the command is told about the request, and how what it
//! writes becomes the HTTP response.
//!
//! In: [`meta_variables`] builds the request meta-variables (RFC 3875 §4.1)
//! from the request, and [`environment`] lays them over the image's and the
//! route's environment. PATH_INFO is decoded, QUERY_STRING is not, as the
//! RFC says. Header fields become `HTTP_*` variables except those that
//! carry credentials (Authorization, Proxy-Authorization: §4.1.18 says a
//! server should not pass them), hop-by-hop fields, `Proxy` (whose
//! HTTP_PROXY would be taken for a proxy setting, "httpoxy"), and any name
//! holding `_`, which could pose as another variable once `-` is mapped.
//!
//! Out: [`HeadParser`] reads the script's header block (§6.2) incrementally
//! and boundedly: lines ended by LF or CRLF, up to [`MAX_HEAD_BYTES`], then
//! an empty line. At least one CGI field (Content-Type, Location or Status)
//! is required; anything that is not a well-formed field is an error, which
//! the gateway answers with 502. Status gives the code (the reason phrase
//! is HTTP's standard one); a Location without Status is a redirect (302) —
//! a local redirect (a path) is handed to the client as such, not
//! re-processed: that would be another request, in another VM. Hop-by-hop
//! fields are dropped; a Content-Length is kept, so the body is sent with
//! it, else chunked. Everything after the blank line is body, passed on
//! unchanged. NPH scripts are not supported.
//!
//! Pure logic, no I/O: the place for a fuzz target.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hyper::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Largest header block a script may write.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields a script may write.
pub const MAX_HEAD_FIELDS: usize = 100;
/// The value of SERVER_SOFTWARE.
pub const SERVER_SOFTWARE: &str = concat!("mu2-gateway/", env!("CARGO_PKG_VERSION"));

/// Request header fields never passed as `HTTP_*` (compared lowercase).
const HIDDEN_REQUEST_FIELDS: [&str; 11] = [
    "authorization",
    "proxy-authorization",
    "proxy",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
];

/// Response fields of a script that HTTP/1.1 framing owns (compared
/// lowercase).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgiError {
    #[error("the request path is not valid as PATH_INFO: {0}")]
    PathInfo(&'static str),
    #[error("the header block is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("the header block has more than {0} fields")]
    TooManyFields(usize),
    #[error("header line {line} is not a field: {text:?}")]
    NotAField { line: usize, text: String },
    #[error("header line {line}: invalid field {name:?}")]
    BadField { line: usize, name: String },
    #[error("invalid Status {0:?}")]
    BadStatus(String),
    #[error("invalid Content-Length {0:?}")]
    BadLength(String),
    #[error("the header block has no Content-Type, Location or Status")]
    NoCgiField,
    #[error("{0:?} is given twice")]
    Duplicate(&'static str),
}

/// What the meta-variables are made of.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The route's path; `/` is the empty SCRIPT_NAME.
    pub route: &'a str,
    /// The request's path, as sent (still percent-encoded).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub remote: SocketAddr,
    /// The address the request came in on.
    pub local: SocketAddr,
    /// `HTTP/1.1`, `HTTP/1.0`.
    pub protocol: &'a str,
    /// The body's length (none: no body).
    pub content_length: Option<u64>,
}

/// `%XX`-decodes `s`; refuses a malformed escape, a NUL and bytes that are
/// not UTF-8 (an environment string is text here).
fn percent_decode(s: &str) -> Result<String, CgiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(CgiError::PathInfo("a malformed %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return Err(CgiError::PathInfo("a NUL"));
    }
    String::from_utf8(out).map_err(|_| CgiError::PathInfo("bytes that are not UTF-8"))
}

/// The server's name as the client addressed it (Host, without its port),
/// or the address the request came in on.
fn server_name(headers: &HeaderMap, local: SocketAddr) -> String {
    let host = headers
        .get(hyper::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|c| c.is_ascii_digit()) => name,
            _ => h,
        })
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b".-[]:".contains(&c))
        });
    match host {
        Some(h) => h.to_string(),
        None => local.ip().to_string(),
    }
}

/// The request meta-variables of RFC 3875 §4.1, and `HTTP_*` ones for the
/// header fields.
pub fn meta_variables(r: &Request<'_>) -> Result<Vec<(String, String)>, CgiError> {
    let script_name = if r.route == "/" { "" } else { r.route };
    let rest = r
        .path
        .strip_prefix(script_name)
        .ok_or(CgiError::PathInfo("outside its route"))?;
    let path_info = percent_decode(rest)?;
    let mut v: Vec<(String, String)> = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("REQUEST_METHOD".into(), r.method.into()),
        ("SCRIPT_NAME".into(), script_name.into()),
        ("PATH_INFO".into(), path_info),
        ("QUERY_STRING".into(), r.query.unwrap_or("").into()),
        ("REMOTE_ADDR".into(), r.remote.ip().to_string()),
        // §4.1.9: the address may stand in for a name not looked up.
        ("REMOTE_HOST".into(), r.remote.ip().to_string()),
        ("SERVER_NAME".into(), server_name(r.headers, r.local)),
        ("SERVER_PORT".into(), r.local.port().to_string()),
        ("SERVER_PROTOCOL".into(), r.protocol.into()),
        ("SERVER_SOFTWARE".into(), SERVER_SOFTWARE.into()),
    ];
    if let Some(n) = r.content_length {
        v.push(("CONTENT_LENGTH".into(), n.to_string()));
    }
    if let Some(t) = r
        .headers
        .get(hyper::http::header::CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
    {
        v.push(("CONTENT_TYPE".into(), t.into()));
    }
    // Repeated fields are joined with ", " (§4.1.18); names are distinct
    // after mapping because names with '_' are left out.
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in r.headers {
        let name = name.as_str();
        if HIDDEN_REQUEST_FIELDS.contains(&name) || name.contains('_') {
            continue;
        }
        let Ok(value) = value.to_str() else {
            // Not visible ASCII: nothing a script could rely on.
            continue;
        };
        let var = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        fields
            .entry(var)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    v.extend(fields);
    Ok(v)
}

/// The command's environment: the image's `NAME=value` list, then the
/// route's variables, then the meta-variables, each replacing a variable
/// of the same name before it.
pub fn environment(
    image: &[String],
    route: &BTreeMap<String, String>,
    meta: &[(String, String)],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |name: &str, entry: String| {
        let prefix = format!("{name}=");
        out.retain(|e| !e.starts_with(&prefix));
        out.push(entry);
    };
    for e in image {
        let name = e.split_once('=').map(|(n, _)| n).unwrap_or(e);
        set(name, e.clone());
    }
    for (k, v) in route.iter().chain(meta.iter().map(|(k, v)| (k, v))) {
        set(k, format!("{k}={v}"));
    }
    out
}

/// A script's response head, ready for HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The Content-Length the script gave, if any.
    pub content_length: Option<u64>,
}

/// Reads a script's header block from its output, chunk by chunk.
#[derive(Debug, Default)]
pub struct HeadParser {
    buf: Vec<u8>,
    /// Where the next unscanned line starts.
    line_start: usize,
    lines: Vec<(usize, usize)>,
}

impl HeadParser {
    pub fn new() -> HeadParser {
        HeadParser::default()
    }

    /// Bytes taken so far (while the head is incomplete).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `data`. Once the blank line ending the block arrived: the head
    /// and the bytes after it in `data` (the body's start).
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<(Head, Vec<u8>)>, CgiError> {
        let old_len = self.buf.len();
        // Never hold more than the limit (plus one line ending's worth).
        let room = MAX_HEAD_BYTES + 2 - old_len.min(MAX_HEAD_BYTES + 2);
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        while let Some(nl) = self.buf[self.line_start..].iter().position(|&b| b == b'\n') {
            let end = self.line_start + nl;
            let line_end = if end > self.line_start && self.buf[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            let start = self.line_start;
            self.line_start = end + 1;
            if line_end == start {
                if self.line_start > MAX_HEAD_BYTES + 2 {
                    return Err(CgiError::HeadTooLarge(MAX_HEAD_BYTES));
                }
                let head = self.head()?;
                // Body: what followed the blank line, in the buffer and in
                // the part of `data` not yet buffered.
                let mut body = self.buf[self.line_start..].to_vec();
                body.extend_from_slice(&data[take..]);
                return Ok(Some((head, body)));
            }
            self.lines.push((start, line_end));
            if self.lines.len() > MAX_HEAD_FIELDS {
                return Err(CgiError::TooManyFields(MAX_HEAD_FIELDS));
            }
        }
        if self.buf.len() > MAX_HEAD_BYTES {
            return Err(CgiError::HeadTooLarge(MAX_HEAD_BYTES));
        }
        Ok(None)
    }

    fn head(&self) -> Result<Head, CgiError> {
        let mut status: Option<StatusCode> = None;
        let mut content_length = None;
        let mut has_type = false;
        let mut location = false;
        let mut headers = HeaderMap::new();
        for (i, &(s, e)) in self.lines.iter().enumerate() {
            let line = &self.buf[s..e];
            let text = || String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
            let n = i + 1;
            let colon =
                line.iter()
                    .position(|&b| b == b':')
                    .ok_or_else(|| CgiError::NotAField {
                        line: n,
                        text: text(),
                    })?;
            let name = &line[..colon];
            let value = trim(&line[colon + 1..]);
            let name = HeaderName::from_bytes(name).map_err(|_| CgiError::NotAField {
                line: n,
                text: text(),
            })?;
            let bad = || CgiError::BadField {
                line: n,
                name: name.as_str().to_string(),
            };
            match name.as_str() {
                "status" => {
                    if status.is_some() {
                        return Err(CgiError::Duplicate("Status"));
                    }
                    status = Some(parse_status(value)?);
                    continue;
                }
                "content-length" => {
                    let v = std::str::from_utf8(value).unwrap_or("");
                    if content_length.is_some() {
                        return Err(CgiError::Duplicate("Content-Length"));
                    }
                    let len = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| v.parse::<u64>().ok())
                        .flatten()
                        .ok_or_else(|| CgiError::BadLength(v.to_string()))?;
                    content_length = Some(len);
                }
                "content-type" => {
                    if has_type {
                        return Err(CgiError::Duplicate("Content-Type"));
                    }
                    has_type = true;
                }
                "location" => {
                    if location || value.is_empty() {
                        return Err(bad());
                    }
                    location = true;
                }
                h if HOP_BY_HOP.contains(&h) => continue,
                _ => {}
            }
            let value = HeaderValue::from_bytes(value).map_err(|_| bad())?;
            headers.append(name, value);
        }
        if status.is_none() && !has_type && !location {
            return Err(CgiError::NoCgiField);
        }
        let status = status.unwrap_or(if location {
            StatusCode::FOUND
        } else {
            StatusCode::OK
        });
        Ok(Head {
            status,
            headers,
            content_length,
        })
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &b[s..=e],
        _ => &[],
    }
}

/// `Status: 404 Not Found`: three digits, 200..=599, then a phrase.
fn parse_status(value: &[u8]) -> Result<StatusCode, CgiError> {
    let text = String::from_utf8_lossy(value).into_owned();
    let digits = value.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
    let after_ok = value.get(3).is_none_or(|&b| b == b' ' || b == b'\t');
    match digits {
        Some(d) if after_ok => StatusCode::from_bytes(d)
            .ok()
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .ok_or(CgiError::BadStatus(text)),
        _ => Err(CgiError::BadStatus(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn request<'a>(route: &'a str, path: &'a str, h: &'a HeaderMap) -> Request<'a> {
        Request {
            method: "POST",
            route,
            path,
            query: Some("a=1&b=%20x"),
            headers: h,
            remote: "10.1.2.3:5555".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            protocol: "HTTP/1.1",
            content_length: Some(5),
        }
    }

    fn get<'a>(v: &'a [(String, String)], k: &str) -> Option<&'a str> {
        v.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn meta_variables_follow_rfc_3875() {
        let h = headers(&[
            ("host", "example.org:8080"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("x-thing", "one"),
            ("x-thing", "two"),
            ("accept", "*/*"),
            ("authorization", "Basic c2VjcmV0"),
            ("proxy", "http://evil"),
            ("x_sneaky", "1"),
            ("connection", "keep-alive"),
        ]);
        let r = request("/hello", "/hello/a%20b/c", &h);
        let v = meta_variables(&r).unwrap();
        assert_eq!(get(&v, "GATEWAY_INTERFACE"), Some("CGI/1.1"));
        assert_eq!(get(&v, "REQUEST_METHOD"), Some("POST"));
        assert_eq!(get(&v, "SCRIPT_NAME"), Some("/hello"));
        assert_eq!(get(&v, "PATH_INFO"), Some("/a b/c"));
        assert_eq!(get(&v, "QUERY_STRING"), Some("a=1&b=%20x"));
        assert_eq!(get(&v, "REMOTE_ADDR"), Some("10.1.2.3"));
        assert_eq!(get(&v, "SERVER_NAME"), Some("example.org"));
        assert_eq!(get(&v, "SERVER_PORT"), Some("8080"));
        assert_eq!(get(&v, "SERVER_PROTOCOL"), Some("HTTP/1.1"));
        assert_eq!(get(&v, "CONTENT_LENGTH"), Some("5"));
        assert_eq!(get(&v, "CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get(&v, "HTTP_X_THING"), Some("one, two"));
        assert_eq!(get(&v, "HTTP_ACCEPT"), Some("*/*"));
        assert_eq!(get(&v, "HTTP_HOST"), Some("example.org:8080"));
        for hidden in [
            "HTTP_AUTHORIZATION",
            "HTTP_PROXY",
            "HTTP_X_SNEAKY",
            "HTTP_CONNECTION",
            "HTTP_CONTENT_LENGTH",
            "HTTP_CONTENT_TYPE",
        ] {
            assert_eq!(get(&v, hidden), None, "{hidden}");
        }
    }

    #[test]
    fn the_root_route_has_an_empty_script_name() {
        let h = headers(&[]);
        let mut r = request("/", "/x/y", &h);
        r.query = None;
        r.content_length = None;
        let v = meta_variables(&r).unwrap();
        assert_eq!(get(&v, "SCRIPT_NAME"), Some(""));
        assert_eq!(get(&v, "PATH_INFO"), Some("/x/y"));
        assert_eq!(get(&v, "QUERY_STRING"), Some(""));
        assert_eq!(get(&v, "CONTENT_LENGTH"), None);
        // No Host: the address the request came in on.
        assert_eq!(get(&v, "SERVER_NAME"), Some("127.0.0.1"));
        let r = request("/hello", "/hello", &h);
        assert_eq!(get(&meta_variables(&r).unwrap(), "PATH_INFO"), Some(""));
    }

    #[test]
    fn bad_path_info_is_refused() {
        let h = headers(&[]);
        for p in ["/a/%00", "/a/%zz", "/a/%4", "/a/%ff"] {
            assert!(
                matches!(
                    meta_variables(&request("/a", p, &h)),
                    Err(CgiError::PathInfo(_))
                ),
                "{p}"
            );
        }
        let h = headers(&[("host", "bad host/")]);
        let v = meta_variables(&request("/a", "/a", &h)).unwrap();
        assert_eq!(get(&v, "SERVER_NAME"), Some("127.0.0.1"));
    }

    #[test]
    fn the_environment_layers_image_route_and_cgi() {
        let image = vec!["PATH=/bin".to_string(), "A=image".into(), "B=image".into()];
        let route: BTreeMap<String, String> = [("B".to_string(), "route".to_string())]
            .into_iter()
            .collect();
        let meta = vec![("A".to_string(), "cgi".to_string())];
        let env = environment(&image, &route, &meta);
        assert_eq!(env, ["PATH=/bin", "B=route", "A=cgi"]);
    }

    fn parse_all(data: &[u8]) -> Result<Option<(Head, Vec<u8>)>, CgiError> {
        HeadParser::new().feed(data)
    }

    #[test]
    fn a_document_response() {
        let (h, body) = parse_all(b"Content-Type: text/plain\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["content-type"], "text/plain");
        let xs: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(xs, ["1", "2"]);
        assert_eq!(body, b"hello");
        assert_eq!(h.content_length, None);
    }

    #[test]
    fn status_location_and_lf_only_lines() {
        let (h, body) = parse_all(b"Status: 404 Not Found\nContent-Type: text/html\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert!(body.is_empty());
        assert!(!h.headers.contains_key("status"));
        let (h, _) = parse_all(b"Location: https://example.org/x\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::FOUND);
        assert_eq!(h.headers["location"], "https://example.org/x");
        let (h, _) = parse_all(b"Status: 301\r\nLocation: /moved\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::MOVED_PERMANENTLY);
        let (h, _) = parse_all(b"Status:204\n\n").unwrap().unwrap();
        assert_eq!(h.status, StatusCode::NO_CONTENT);
    }

    #[test]
    fn the_head_may_arrive_byte_by_byte() {
        let data = b"Content-Type: a/b\r\nContent-Length: 3\r\n\r\nxyz";
        let mut p = HeadParser::new();
        let mut got = None;
        for (i, b) in data.iter().enumerate() {
            if let Some(r) = p.feed(std::slice::from_ref(b)).unwrap() {
                got = Some((i, r));
                break;
            }
        }
        let (i, (h, body)) = got.unwrap();
        assert_eq!(i, data.len() - 4);
        assert!(body.is_empty());
        assert_eq!(h.content_length, Some(3));
        assert_eq!(h.headers["content-length"], "3");
    }

    #[test]
    fn hop_by_hop_fields_are_dropped() {
        let (h, _) = parse_all(
            b"Content-Type: a/b\nTransfer-Encoding: chunked\nConnection: close\nX-Ok: 1\n\n",
        )
        .unwrap()
        .unwrap();
        assert!(!h.headers.contains_key("transfer-encoding"));
        assert!(!h.headers.contains_key("connection"));
        assert_eq!(h.headers["x-ok"], "1");
    }

    #[test]
    fn invalid_heads_are_errors() {
        type Check = fn(&CgiError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"hello world\n\n", |e| {
                matches!(e, CgiError::NotAField { .. })
            }),
            (b"X-Only: 1\n\n", |e| *e == CgiError::NoCgiField),
            (b"\n\nbody", |e| *e == CgiError::NoCgiField),
            (b"Status: 99 x\n\n", |e| matches!(e, CgiError::BadStatus(_))),
            (b"Status: 100\n\n", |e| matches!(e, CgiError::BadStatus(_))),
            (b"Status: 2000\n\n", |e| matches!(e, CgiError::BadStatus(_))),
            (b"Status: abc\n\n", |e| matches!(e, CgiError::BadStatus(_))),
            (b"Status: 200\nStatus: 201\n\n", |e| {
                *e == CgiError::Duplicate("Status")
            }),
            (b"Content-Type: a\nContent-Length: -1\n\n", |e| {
                matches!(e, CgiError::BadLength(_))
            }),
            (
                b"Content-Type: a\nContent-Length: 1\nContent-Length: 1\n\n",
                |e| *e == CgiError::Duplicate("Content-Length"),
            ),
            (b"Bad Name: 1\nContent-Type: a\n\n", |e| {
                matches!(e, CgiError::NotAField { .. })
            }),
            (b"Content-Type: a\x01b\n\n", |e| {
                matches!(e, CgiError::BadField { .. })
            }),
            (b" Content-Type: a\n\n", |e| {
                matches!(e, CgiError::NotAField { .. })
            }),
        ];
        for (data, ok) in cases {
            let e = parse_all(data).unwrap_err();
            assert!(ok(&e), "{:?}: {e:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn the_head_is_bounded() {
        let mut p = HeadParser::new();
        let line = vec![b'a'; 1024];
        let mut res = Ok(None);
        for _ in 0..100 {
            res = p.feed(&line);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res.unwrap_err(), CgiError::HeadTooLarge(MAX_HEAD_BYTES));
        assert!(p.buffered() <= MAX_HEAD_BYTES + 2);
        let mut many = Vec::new();
        for i in 0..=MAX_HEAD_FIELDS {
            many.extend_from_slice(format!("X-{i}: v\n").as_bytes());
        }
        assert_eq!(
            parse_all(&many).unwrap_err(),
            CgiError::TooManyFields(MAX_HEAD_FIELDS)
        );
        // An incomplete head is not an error yet.
        assert_eq!(parse_all(b"Content-Type: a/b\n").unwrap(), None);
    }
}
