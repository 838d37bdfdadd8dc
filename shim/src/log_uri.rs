//! containerd's stdout/stderr paths and log URIs, parsed.
//!
//! containerd passes a process's output as a plain FIFO path, as empty
//! (null IO), or — with `ctr run --log-uri` — as a URI: `fifo://PATH`,
//! `file://PATH` (append to that file) or `binary://PATH?k=v&…` (start that
//! logger with `k v …` as arguments). Paths must be absolute, without `..`;
//! `%XX` escapes are decoded (a malformed one stays as it is), `+` in a
//! query means a space. [`crate::io`] acts on the result. The parser is
//! public so that the fuzz target `log_uri` reaches it; it only parses.

use std::path::PathBuf;

use crate::error::ShimError;

/// Where containerd wants a process's output.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Null IO.
    None,
    /// A FIFO containerd reads (a plain path or `fifo://`).
    Fifo(PathBuf),
    /// A log file to append to (`file://`).
    File(PathBuf),
    /// A logger to start (`binary://`).
    Binary { path: PathBuf, args: Vec<String> },
}

/// Parses one of containerd's stdout/stderr paths.
pub fn parse_output(path: &str) -> Result<Output, ShimError> {
    if path.is_empty() {
        return Ok(Output::None);
    }
    let Some((scheme, rest)) = path.split_once("://") else {
        return Ok(Output::Fifo(PathBuf::from(path)));
    };
    let uri_path = |rest: &str| -> Result<PathBuf, ShimError> {
        // `file:///p` (no host); a query or fragment is not part of the path.
        let p = rest.split(['?', '#']).next().unwrap_or_default();
        let p = percent_decode(p);
        if !p.starts_with('/') || p.contains("/../") || p.ends_with("/..") {
            return Err(ShimError::InvalidArgument(format!(
                "log uri {path}: not an absolute path"
            )));
        }
        Ok(PathBuf::from(p))
    };
    match scheme {
        "fifo" => Ok(Output::Fifo(uri_path(rest)?)),
        "file" => Ok(Output::File(uri_path(rest)?)),
        "binary" => {
            let query = rest.split_once('?').map(|(_, q)| q).unwrap_or_default();
            let query = query.split('#').next().unwrap_or_default();
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = match pair.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (pair, None),
                };
                args.push(percent_decode(&k.replace('+', " ")));
                if let Some(v) = v {
                    args.push(percent_decode(&v.replace('+', " ")));
                }
            }
            Ok(Output::Binary {
                path: uri_path(rest)?,
                args,
            })
        }
        other => Err(ShimError::InvalidArgument(format!(
            "log uri {path}: scheme {other} is not supported by mu2 (file, binary and fifo are)"
        ))),
    }
}

/// `%XX` escapes of a URI path; a malformed escape stays as it is. Works on
/// bytes: the two characters after a `%` may be anything, a multibyte
/// character included.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_and_log_uris() {
        assert_eq!(parse_output("").unwrap(), Output::None);
        assert_eq!(
            parse_output("/run/ctd/fifo-1").unwrap(),
            Output::Fifo("/run/ctd/fifo-1".into())
        );
        assert_eq!(
            parse_output("fifo:///run/x").unwrap(),
            Output::Fifo("/run/x".into())
        );
        assert_eq!(
            parse_output("file:///var/log/a%20b.log?x=1").unwrap(),
            Output::File("/var/log/a b.log".into())
        );
        assert!(parse_output("file://relative/x").is_err());
        assert!(parse_output("file:///a/../etc").is_err());
        assert_eq!(
            parse_output("binary:///usr/bin/log?dir=/x+y&v").unwrap(),
            Output::Binary {
                path: "/usr/bin/log".into(),
                args: vec!["dir".into(), "/x y".into(), "v".into()],
            }
        );
        assert!(parse_output("syslog:///dev/log").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%2Fb%"), "/a/b%");
        assert_eq!(percent_decode("/%zz%4"), "/%zz%4");
        assert_eq!(percent_decode("%41%62"), "Ab");
        // Decoded bytes that are not UTF-8 become U+FFFD.
        assert_eq!(percent_decode("/%ff"), "/\u{fffd}");
    }

    /// `%`, a hex digit, then a multibyte character: the escape is not one,
    /// and nothing slices a character in two (this used to panic).
    #[test]
    fn a_percent_before_a_multibyte_character_stays() {
        assert_eq!(percent_decode("%4é"), "%4é");
        assert_eq!(percent_decode("/x%é1"), "/x%é1");
        assert_eq!(percent_decode("%€"), "%€");
        assert_eq!(
            parse_output("file:///log/%4é").unwrap(),
            Output::File("/log/%4é".into())
        );
        assert!(parse_output("binary:///bin/l?%4é=%e9").is_ok());
        // What the fuzz target found in its first second on the old code.
        assert!(parse_output("binary://li&=://li&=%oě%4'cad").is_err());
    }
}
