//! The gateway's configuration file: where it listens and its routes.
//!
//! TOML, read once at start. Unknown keys are refused and every error names
//! the file and the line at fault: parse errors by the span `toml` reports,
//! value errors (a bad duration, a duplicate path) by the span of the value
//! kept with [`toml::Spanned`]. Every limit has a named default below, and
//! [`Config::parse`] validates all of it before anything listens.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//!
//! [[route]]
//! path = "/hello"
//! image = "oci:/srv/images/hello:latest"
//! command = ["/cgi/hello"]
//! timeout = "10s"
//! memory = "128M"
//! max_body = "1M"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Where the gateway listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where unpacked images are kept, one directory per manifest digest.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/mu2/gateway/images";
/// How long in-flight requests have to finish after SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// A request's deadline, from its admission to its last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body a route takes.
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// VMs a route runs at once.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// Requests a route holds waiting for a VM, beyond its concurrency.
pub const DEFAULT_QUEUE: usize = 8;
/// Longest a request waits in the queue before it is refused (503).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most VMs kept booted ahead for one route.
pub const MAX_WARM: usize = 64;
/// Most VMs one route may run at once.
pub const MAX_CONCURRENCY: usize = 1024;
/// Largest `max_body`: a chunked body is held in memory whole (CGI needs
/// its CONTENT_LENGTH before the script starts).
pub const MAX_MAX_BODY: u64 = 1 << 30;
/// Paths the gateway answers itself.
pub const RESERVED_PATHS: [&str; 2] = ["/healthz", "/metrics"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Where a route's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI image layout directory and the tag in its index
    /// (`org.opencontainers.image.ref.name`); `None`: its only manifest.
    Layout { dir: PathBuf, tag: Option<String> },
    /// An image in containerd's content store.
    Containerd { reference: String },
}

impl ImageRef {
    /// `oci:DIR[:TAG]` or `containerd:REF`.
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        if let Some(rest) = s.strip_prefix("oci:") {
            // DIR may hold colons; a tag holds no slash.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') => (d, Some(t)),
                _ => (rest, None),
            };
            if !dir.starts_with('/') {
                return Err(format!("{s:?}: the layout directory must be absolute"));
            }
            if tag.is_some_and(str::is_empty) {
                return Err(format!("{s:?}: empty tag"));
            }
            return Ok(ImageRef::Layout {
                dir: PathBuf::from(dir),
                tag: tag.map(str::to_string),
            });
        }
        if let Some(reference) = s.strip_prefix("containerd:") {
            if reference.is_empty() {
                return Err(format!("{s:?}: empty reference"));
            }
            return Ok(ImageRef::Containerd {
                reference: reference.to_string(),
            });
        }
        Err(format!(
            "{s:?}: an image is oci:DIR:TAG (an OCI image layout) or containerd:REF"
        ))
    }
}

/// A user as the route names it: numeric, or names looked up in the
/// image's /etc/passwd and /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub user: String,
    pub group: Option<String>,
}

impl UserSpec {
    /// `USER[:GROUP]`, as an image's config writes it.
    pub fn parse(s: &str) -> Result<UserSpec, String> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(format!("{s:?} is not USER[:GROUP]"));
        }
        Ok(UserSpec {
            user: user.to_string(),
            group: group.map(str::to_string),
        })
    }
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// A path prefix: `/hello` serves `/hello` and `/hello/...`.
    pub path: String,
    pub image: ImageRef,
    /// The program and its arguments; `None`: the image's Entrypoint + Cmd.
    pub command: Option<Vec<String>>,
    /// Added to the image's environment (and overridden by CGI's).
    pub env: BTreeMap<String, String>,
    pub user: Option<UserSpec>,
    pub timeout: Duration,
    /// The container's memory limit; `None`: mu2's default guest size.
    pub memory: Option<u64>,
    pub max_body: u64,
    pub warm: usize,
    pub concurrency: usize,
    pub queue: usize,
    pub queue_timeout: Duration,
    /// The line of the table, for errors found later (an image that does
    /// not load).
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub cache_dir: PathBuf,
    pub grace: Duration,
    /// The sum of guest memory of the VMs running at once, in bytes.
    pub memory_budget: Option<u64>,
    pub routes: Vec<Route>,
    /// containerd's socket, for `containerd:REF` images.
    pub containerd_address: PathBuf,
    /// The containerd namespace those images are in.
    pub containerd_namespace: String,
}

/// The containerd namespace images are read from unless configured.
pub const DEFAULT_CONTAINERD_NAMESPACE: &str = "default";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    cache_dir: Option<Spanned<PathBuf>>,
    grace: Option<Spanned<String>>,
    memory_budget: Option<Spanned<String>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    containerd: Option<RawContainerd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainerd {
    address: Option<Spanned<PathBuf>>,
    namespace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Spanned<String>,
    image: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    user: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
    max_body: Option<Spanned<String>>,
    warm: Option<Spanned<i64>>,
    concurrency: Option<Spanned<i64>>,
    queue: Option<Spanned<i64>>,
    queue_timeout: Option<Spanned<String>>,
}

/// `"512"`, `"1K"`, `"128M"`, `"1G"` (powers of 1024) as bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let shift = match unit {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(format!("{s:?}: unknown unit (K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            message: message.into(),
        }
    }

    fn duration(&self, name: &str, v: &Spanned<String>) -> Result<Duration, ConfigError> {
        let d = mu2_microvm::deadlines::parse_duration(v.get_ref())
            .map_err(|why| self.err(v.span(), format!("{name}: {why}")))?;
        if d.is_zero() {
            return Err(self.err(v.span(), format!("{name}: must not be zero")));
        }
        Ok(d)
    }

    fn size(&self, name: &str, v: &Spanned<String>) -> Result<u64, ConfigError> {
        let n =
            parse_size(v.get_ref()).map_err(|why| self.err(v.span(), format!("{name}: {why}")))?;
        if n == 0 {
            return Err(self.err(v.span(), format!("{name}: must not be zero")));
        }
        Ok(n)
    }

    fn count(
        &self,
        name: &str,
        v: &Spanned<i64>,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        usize::try_from(*v.get_ref())
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                self.err(
                    v.span(),
                    format!(
                        "{name}: {} is not in {}..={}",
                        v.get_ref(),
                        range.start(),
                        range.end()
                    ),
                )
            })
    }
}

/// Whether `name` may be an environment variable's name.
fn env_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text`, the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().to_string(),
        })?;
        let listen = match &raw.listen {
            Some(l) => l.get_ref().parse().map_err(|_| {
                cx.err(
                    l.span(),
                    format!("listen: {:?} is not an address and port", l.get_ref()),
                )
            })?,
            None => DEFAULT_LISTEN.parse().expect("the default address parses"),
        };
        let cache_dir = match &raw.cache_dir {
            Some(d) if !d.get_ref().is_absolute() => {
                return Err(cx.err(d.span(), "cache_dir: must be an absolute path"))
            }
            Some(d) => d.get_ref().clone(),
            None => PathBuf::from(DEFAULT_CACHE_DIR),
        };
        let grace = match &raw.grace {
            Some(g) => cx.duration("grace", g)?,
            None => DEFAULT_GRACE,
        };
        let memory_budget = match &raw.memory_budget {
            Some(m) => Some(cx.size("memory_budget", m)?),
            None => None,
        };
        let (address, namespace) = match raw.containerd {
            Some(c) => (c.address, c.namespace),
            None => (None, None),
        };
        let containerd_address = match address {
            Some(a) if !a.get_ref().is_absolute() => {
                return Err(cx.err(a.span(), "containerd.address: must be an absolute path"))
            }
            Some(a) => a.into_inner(),
            None => PathBuf::from(crate::containerd::DEFAULT_ADDRESS),
        };
        let containerd_namespace = match namespace {
            Some(n)
                if n.get_ref().is_empty()
                    || !n
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                return Err(cx.err(n.span(), "containerd.namespace: not a namespace name"))
            }
            Some(n) => n.into_inner(),
            None => DEFAULT_CONTAINERD_NAMESPACE.to_string(),
        };
        if raw.route.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: 1,
                message: "no [[route]]: the gateway would serve nothing".into(),
            });
        }
        let mut routes: Vec<Route> = Vec::new();
        for r in &raw.route {
            let line = line_of(text, r.span().start);
            let route = Self::route(&cx, r.get_ref(), line)?;
            if routes.iter().any(|o| o.path == route.path) {
                return Err(cx.err(
                    r.get_ref().path.span(),
                    format!("route path {:?} is configured twice", route.path),
                ));
            }
            routes.push(route);
        }
        Ok(Config {
            listen,
            cache_dir,
            grace,
            memory_budget,
            routes,
            containerd_address,
            containerd_namespace,
        })
    }

    fn route(cx: &Ctx<'_>, r: &RawRoute, line: usize) -> Result<Route, ConfigError> {
        let p = r.path.get_ref();
        let path_ok = p.starts_with('/')
            && (p == "/" || !p.ends_with('/'))
            && !p.split('/').any(|seg| seg == "." || seg == "..")
            && !p.contains("//")
            && p.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'%');
        if !path_ok {
            return Err(cx.err(
                r.path.span(),
                format!("route path {p:?}: use an absolute path without a trailing slash, dot segments, '?', '#' or '%'"),
            ));
        }
        if let Some(reserved) = RESERVED_PATHS
            .iter()
            .find(|res| p == *res || p.starts_with(&format!("{res}/")))
        {
            return Err(cx.err(
                r.path.span(),
                format!("route path {p:?}: {reserved} is answered by the gateway itself"),
            ));
        }
        let image = ImageRef::parse(r.image.get_ref())
            .map_err(|why| cx.err(r.image.span(), format!("image: {why}")))?;
        let command = match &r.command {
            Some(c) if c.get_ref().is_empty() => {
                return Err(cx.err(c.span(), "command: must not be empty"))
            }
            Some(c) if c.get_ref().iter().any(|a| a.contains('\0')) => {
                return Err(cx.err(c.span(), "command: an argument holds a NUL"))
            }
            Some(c) => Some(c.get_ref().clone()),
            None => None,
        };
        let mut env = BTreeMap::new();
        for (k, v) in &r.env {
            if !env_name_ok(k) || v.get_ref().contains('\0') {
                return Err(cx.err(v.span(), format!("env: {k:?} is not a valid variable")));
            }
            env.insert(k.clone(), v.get_ref().clone());
        }
        let user = match &r.user {
            Some(u) => Some(
                UserSpec::parse(u.get_ref())
                    .map_err(|why| cx.err(u.span(), format!("user: {why}")))?,
            ),
            None => None,
        };
        let memory = match &r.memory {
            Some(m) => {
                let n = cx.size("memory", m)?;
                let min = mu2_oci::MIN_MEMORY_LIMIT as u64;
                if n < min {
                    return Err(cx.err(
                        m.span(),
                        format!("memory: {n} bytes is less than the smallest limit, {min}"),
                    ));
                }
                Some(n)
            }
            None => None,
        };
        let max_body = match &r.max_body {
            Some(m) => {
                let n = parse_size(m.get_ref())
                    .map_err(|why| cx.err(m.span(), format!("max_body: {why}")))?;
                if n > MAX_MAX_BODY {
                    return Err(cx.err(
                        m.span(),
                        format!("max_body: more than {MAX_MAX_BODY} bytes"),
                    ));
                }
                n
            }
            None => DEFAULT_MAX_BODY,
        };
        let concurrency = match &r.concurrency {
            Some(c) => cx.count("concurrency", c, 1..=MAX_CONCURRENCY)?,
            None => DEFAULT_CONCURRENCY,
        };
        let warm = match &r.warm {
            Some(w) => cx.count("warm", w, 0..=MAX_WARM.min(concurrency))?,
            None => 0,
        };
        let queue = match &r.queue {
            Some(q) => cx.count("queue", q, 0..=MAX_CONCURRENCY * 16)?,
            None => DEFAULT_QUEUE,
        };
        Ok(Route {
            path: p.clone(),
            image,
            command,
            env,
            user,
            timeout: match &r.timeout {
                Some(t) => cx.duration("timeout", t)?,
                None => DEFAULT_TIMEOUT,
            },
            memory,
            max_body,
            warm,
            concurrency,
            queue,
            queue_timeout: match &r.queue_timeout {
                Some(t) => cx.duration("queue_timeout", t)?,
                None => DEFAULT_QUEUE_TIMEOUT,
            },
            line,
        })
    }

    /// The route serving `path`: the longest prefix that ends at a segment
    /// boundary.
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| prefix_matches(&r.path, path))
            .max_by_key(|r| r.path.len())
    }
}

/// `/a` matches `/a`, `/a/` and `/a/b`, not `/ab`; `/` matches everything.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("gw.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const FULL: &str = r#"
listen = "127.0.0.1:9090"
cache_dir = "/tmp/cache"
grace = "5s"
memory_budget = "2G"

[containerd]
address = "/run/ctd.sock"
namespace = "gw"

[[route]]
path = "/hello"
image = "oci:/srv/images/hello:latest"
command = ["/cgi/hello", "-v"]
env = { GREETING = "hi", EMPTY = "" }
user = "1000:1000"
timeout = "10s"
memory = "128M"
max_body = "1M"
warm = 2
concurrency = 4
queue = 3
queue_timeout = "500ms"

[[route]]
path = "/"
image = "containerd:docker.io/library/busybox:latest"
"#;

    #[test]
    fn a_full_config_parses() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.cache_dir, PathBuf::from("/tmp/cache"));
        assert_eq!(c.grace, Duration::from_secs(5));
        assert_eq!(c.memory_budget, Some(2 << 30));
        assert_eq!(c.containerd_address, Path::new("/run/ctd.sock"));
        assert_eq!(c.containerd_namespace, "gw");
        let r = &c.routes[0];
        assert_eq!(r.path, "/hello");
        assert_eq!(
            r.image,
            ImageRef::Layout {
                dir: "/srv/images/hello".into(),
                tag: Some("latest".into())
            }
        );
        assert_eq!(r.command.as_deref().unwrap(), ["/cgi/hello", "-v"]);
        assert_eq!(r.env["GREETING"], "hi");
        assert_eq!(r.env["EMPTY"], "");
        assert_eq!(
            r.user,
            Some(UserSpec {
                user: "1000".into(),
                group: Some("1000".into())
            })
        );
        assert_eq!(r.timeout, Duration::from_secs(10));
        assert_eq!(r.memory, Some(128 << 20));
        assert_eq!(r.max_body, 1 << 20);
        assert_eq!((r.warm, r.concurrency, r.queue), (2, 4, 3));
        assert_eq!(r.queue_timeout, Duration::from_millis(500));
        assert_eq!(r.line, 11);
        let d = &c.routes[1];
        assert_eq!(
            d.image,
            ImageRef::Containerd {
                reference: "docker.io/library/busybox:latest".into()
            }
        );
        assert_eq!(d.command, None);
        assert_eq!(d.timeout, DEFAULT_TIMEOUT);
        assert_eq!(d.max_body, DEFAULT_MAX_BODY);
        assert_eq!(d.concurrency, DEFAULT_CONCURRENCY);
    }

    #[test]
    fn defaults_apply() {
        let c = parse("[[route]]\npath = \"/\"\nimage = \"oci:/i\"\n").unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.cache_dir, PathBuf::from(DEFAULT_CACHE_DIR));
        assert_eq!(c.grace, DEFAULT_GRACE);
        assert_eq!(c.memory_budget, None);
        assert_eq!(
            c.containerd_address,
            Path::new(crate::containerd::DEFAULT_ADDRESS)
        );
        assert_eq!(c.containerd_namespace, DEFAULT_CONTAINERD_NAMESPACE);
        assert_eq!(
            c.routes[0].image,
            ImageRef::Layout {
                dir: "/i".into(),
                tag: None
            }
        );
    }

    #[test]
    fn errors_name_the_line() {
        let text = "listen = \"127.0.0.1:1\"\n\n[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\nbogus = 1\n";
        let e = err(text);
        assert!(e.starts_with("gw.toml:6: "), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\ntimeout = \"10 parsecs\"\n");
        assert!(e.starts_with("gw.toml:4: timeout: "), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\nmemory = \"12X\"\n");
        assert!(e.starts_with("gw.toml:4: memory: "), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\nmemory = \"1M\"\n");
        assert!(e.starts_with("gw.toml:4: memory: "), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\n\n[[route]]\npath = \"/a\"\nimage = \"oci:/j:t\"\n");
        assert!(e.starts_with("gw.toml:6: ") && e.contains("twice"), "{e}");
        let e = err("listen = \"nowhere\"\n[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\n");
        assert!(e.starts_with("gw.toml:1: listen"), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"docker://x\"\n");
        assert!(e.starts_with("gw.toml:3: image"), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\nconcurrency = 0\n");
        assert!(e.starts_with("gw.toml:4: concurrency"), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\nconcurrency = 1\nwarm = 2\n");
        assert!(e.starts_with("gw.toml:5: warm"), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\ncommand = []\n");
        assert!(e.starts_with("gw.toml:4: command"), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\nenv = { \"A=B\" = \"c\" }\n");
        assert!(e.starts_with("gw.toml:4: env"), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\nuser = \":5\"\n");
        assert!(e.starts_with("gw.toml:4: user"), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\nwarm = \"two\"\n");
        assert!(e.starts_with("gw.toml:4: "), "{e}");
        let e = err("cache_dir = \"rel\"\n[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\n");
        assert!(e.starts_with("gw.toml:1: cache_dir"), "{e}");
        let e = err("[containerd]\naddress = \"/a\"\nport = 1\n[[route]]\npath = \"/a\"\nimage = \"oci:/i:t\"\n");
        assert!(e.starts_with("gw.toml:3: ") && e.contains("port"), "{e}");
        assert!(err("listen = \"127.0.0.1:1\"\n").contains("no [[route]]"));
        // A syntax error, too.
        let e = err("[[route]]\npath = \"/a\nimage = \"oci:/i:t\"\n");
        assert!(e.starts_with("gw.toml:2: "), "{e}");
    }

    #[test]
    fn route_paths_are_checked() {
        for bad in [
            "a",
            "/a/",
            "/a/../b",
            "/a//b",
            "/a?x",
            "/a b",
            "/healthz",
            "/metrics/x",
            "/%2e",
        ] {
            let text = format!("[[route]]\npath = {bad:?}\nimage = \"oci:/i:t\"\n");
            let e = err(&text);
            assert!(e.starts_with("gw.toml:2: route path"), "{bad}: {e}");
        }
        parse("[[route]]\npath = \"/healthzz\"\nimage = \"oci:/i:t\"\n").unwrap();
    }

    #[test]
    fn the_longest_prefix_wins_at_segment_boundaries() {
        let text = "[[route]]\npath = \"/\"\nimage = \"oci:/r:t\"\n[[route]]\npath = \"/a\"\nimage = \"oci:/a:t\"\n[[route]]\npath = \"/a/b\"\nimage = \"oci:/ab:t\"\n";
        let c = parse(text).unwrap();
        let at = |p: &str| c.route_for(p).map(|r| r.path.as_str());
        assert_eq!(at("/a"), Some("/a"));
        assert_eq!(at("/a/"), Some("/a"));
        assert_eq!(at("/a/x"), Some("/a"));
        assert_eq!(at("/a/b"), Some("/a/b"));
        assert_eq!(at("/a/b/c"), Some("/a/b"));
        assert_eq!(at("/ab"), Some("/"));
        assert_eq!(at("/"), Some("/"));
        let c = parse("[[route]]\npath = \"/a\"\nimage = \"oci:/a:t\"\n").unwrap();
        assert_eq!(c.route_for("/b"), None);
        assert_eq!(c.route_for("/ab"), None);
    }

    #[test]
    fn sizes_and_images_parse() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("M").is_err());
        assert!(parse_size("1T").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert_eq!(
            ImageRef::parse("oci:/a:b/c"),
            Ok(ImageRef::Layout {
                dir: "/a:b/c".into(),
                tag: None
            })
        );
        assert_eq!(
            ImageRef::parse("oci:/a:b/c:v1.2"),
            Ok(ImageRef::Layout {
                dir: "/a:b/c".into(),
                tag: Some("v1.2".into())
            })
        );
        assert!(ImageRef::parse("oci:rel:t").is_err());
        assert!(ImageRef::parse("oci:/a:").is_err());
        assert!(ImageRef::parse("containerd:").is_err());
    }
}
