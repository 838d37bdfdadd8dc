//! The `mu2.*` keys of the kernel command line.
//!
//! The host configures the guest only through these keys and the agent
//! protocol, never through files dropped into the image. init forwards each
//! key to the agent as an environment variable (`mu2.debug=1` becomes
//! `MU2_DEBUG=1`), so the agent needs no second parser.

/// The `mu2.*` keys, in command-line order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    keys: Vec<(String, String)>,
}

impl Cmdline {
    /// Parses a kernel command line: words split on whitespace, double
    /// quotes group a value with spaces (as the kernel does).
    pub fn parse(line: &str) -> Self {
        let mut keys = Vec::new();
        for word in split_words(line) {
            let (k, v) = match word.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (word.clone(), String::new()),
            };
            if let Some(name) = k.strip_prefix("mu2.") {
                if !name.is_empty() {
                    keys.push((name.to_string(), v));
                }
            }
        }
        Cmdline { keys }
    }

    /// The value of `mu2.NAME` (the last one wins, as for kernel params).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.keys
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `mu2.debug` set to anything but `0` (a bare `mu2.debug` counts).
    pub fn debug(&self) -> bool {
        matches!(self.get("debug"), Some(v) if v != "0")
    }

    pub fn mu2_keys(&self) -> &[(String, String)] {
        &self.keys
    }

    /// `MU2_<NAME>` variables for the agent.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        self.keys
            .iter()
            .map(|(k, v)| {
                let name: String = k
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let v = if v.is_empty() {
                    "1".to_string()
                } else {
                    v.clone()
                };
                (format!("MU2_{name}"), v)
            })
            .collect()
    }
}

/// Reads `/proc/cmdline`; an unreadable one counts as empty.
pub fn read() -> Cmdline {
    Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_mu2_keys_only() {
        let c = Cmdline::parse("console=ttyS0 quiet mu2.debug=1 panic=-1 mu2.x=\"a b\"\n");
        assert_eq!(c.get("debug"), Some("1"));
        assert_eq!(c.get("x"), Some("a b"));
        assert_eq!(c.get("console"), None);
        assert!(c.debug());
        assert_eq!(
            c.agent_env(),
            vec![
                ("MU2_DEBUG".to_string(), "1".to_string()),
                ("MU2_X".to_string(), "a b".to_string())
            ]
        );
    }

    #[test]
    fn debug_off_by_default_and_with_zero() {
        assert!(!Cmdline::parse("quiet").debug());
        assert!(!Cmdline::parse("mu2.debug=0").debug());
        assert!(Cmdline::parse("mu2.debug").debug());
        assert!(Cmdline::parse("mu2.debug=0 mu2.debug=1").debug());
    }

    #[test]
    fn bare_prefix_is_ignored() {
        assert!(Cmdline::parse("mu2.=1 mu2.").mu2_keys().is_empty());
    }
}
