//! Host names as routes (`host`, `hosts`) and certificates (`sni`, `snis`)
//! match them: one matcher for both, so that a route and the certificate
//! that serves it agree on which names a pattern covers.
//!
//! The rules are APISIX's (its radix tree matches a reversed host name by
//! prefix): a pattern is an exact name, or `*.` and a suffix that covers
//! one or more labels (`*.example.com` matches `a.example.com` and
//! `a.b.example.com`, not `example.com`). Names compare case-insensitively;
//! a request's host loses its port and a trailing dot first, as nginx's
//! `$host` does. When several patterns match, an exact name wins, then the
//! longest wildcard.

use std::collections::HashMap;

/// One host pattern: an exact name or a wildcard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// A name, lower-case: `api.example.com`, `127.0.0.1`, `[::1]`.
    Exact(String),
    /// `*.` and a suffix; holds the suffix with its leading dot, lower-case
    /// (`.example.com`).
    Wildcard(String),
}

impl HostPattern {
    /// Parses a pattern as a configuration writes it.
    ///
    /// # Errors
    /// A message saying what is wrong with `text`: empty, a `*` anywhere but
    /// a leading `*.`, a port, or a character no host name has.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (wild, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if name.is_empty() {
            return Err(format!("host pattern {text:?} has no name"));
        }
        if name.contains('*') {
            return Err(format!(
                "host pattern {text:?}: a `*` may only start a pattern, as `*.example.com`"
            ));
        }
        let literal = name.starts_with('[') && name.ends_with(']') && !wild;
        let ok = if literal {
            name[1..name.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok()
        } else {
            name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        };
        if !ok || name.len() > 253 {
            return Err(format!(
                "host pattern {text:?} is not a host name (letters, digits, `-`, `_` in dot-separated labels, or a bracketed IPv6 address; no port)"
            ));
        }
        let name = name.to_ascii_lowercase();
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }

    /// Whether this pattern covers `host`, a name as [`request_host`] gives it.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// The name a request is for, from its `Host` header or HTTP/2
/// `:authority`: the port and a trailing dot removed, lower-case
/// (`API.Example.com.:8080` is `api.example.com`; `[::1]:80` is `[::1]`).
pub fn request_host(authority: &str) -> String {
    let name = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => authority,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// Values keyed by host patterns, looked up by a request's host: the exact
/// name first, then the longest wildcard that covers it. A look-up costs
/// one hash probe per label of the host, whatever the number of patterns.
#[derive(Debug, Clone)]
pub struct HostTable<T> {
    exact: HashMap<String, T>,
    wildcards: HashMap<String, T>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        HostTable {
            exact: HashMap::new(),
            wildcards: HashMap::new(),
        }
    }
}

impl<T> HostTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value for `pattern`, inserted by `make` if the pattern is new.
    pub fn entry(&mut self, pattern: &HostPattern, make: impl FnOnce() -> T) -> &mut T {
        match pattern {
            HostPattern::Exact(name) => self.exact.entry(name.clone()).or_insert_with(make),
            HostPattern::Wildcard(suffix) => {
                self.wildcards.entry(suffix.clone()).or_insert_with(make)
            }
        }
    }

    /// Sets the value for `pattern`, returning the one it replaces.
    pub fn insert(&mut self, pattern: &HostPattern, value: T) -> Option<T> {
        match pattern {
            HostPattern::Exact(name) => self.exact.insert(name.clone(), value),
            HostPattern::Wildcard(suffix) => self.wildcards.insert(suffix.clone(), value),
        }
    }

    /// The value for `host` (a name as [`request_host`] gives it): its exact
    /// entry, else the longest wildcard covering it.
    pub fn get(&self, host: &str) -> Option<&T> {
        if let Some(value) = self.exact.get(host) {
            return Some(value);
        }
        if self.wildcards.is_empty() {
            return None;
        }
        // Suffixes from the longest: ".b.example.com", ".example.com", ".com".
        host.match_indices('.')
            .filter(|&(at, _)| at > 0)
            .find_map(|(at, _)| self.wildcards.get(&host[at..]))
    }

    /// Every value whose pattern covers `host`, best first: the exact
    /// entry, then each wildcard from the longest (APISIX's host router
    /// tries them in that order, falling to the next when a host's routes
    /// do not match). One hash probe per label, as [`HostTable::get`].
    pub fn matches<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a T> + 'a {
        let wild = (!self.wildcards.is_empty()).then(|| {
            host.match_indices('.')
                .filter(|&(at, _)| at > 0)
                .filter_map(|(at, _)| self.wildcards.get(&host[at..]))
        });
        self.exact
            .get(host)
            .into_iter()
            .chain(wild.into_iter().flatten())
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }

    /// Every pattern and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (HostPattern, &T)> {
        let exact = self
            .exact
            .iter()
            .map(|(k, v)| (HostPattern::Exact(k.clone()), v));
        let wild = self
            .wildcards
            .iter()
            .map(|(k, v)| (HostPattern::Wildcard(k.clone()), v));
        exact.chain(wild)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_as_apisix_writes_them() {
        assert_eq!(
            HostPattern::parse("API.example.com").unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Wildcard(".example.com".into())
        );
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Exact("[::1]".into())
        );
        for bad in [
            "", "*.", "*", "a.*.com", "*a.com", "a..com", "a.com:80", "a b", "[zz]", "*.[::1]",
            "a/b", "a@b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HostPattern::parse("*.a.b").unwrap().to_string(),
            "*.a.b",
            "displays as written"
        );
    }

    #[test]
    fn a_wildcard_covers_one_or_more_labels_not_its_suffix() {
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches(".example.com"));
        assert!(!p.matches("aexample.com"));
        let e = HostPattern::parse("example.com").unwrap();
        assert!(e.matches("example.com") && !e.matches("a.example.com"));
    }

    #[test]
    fn request_hosts_lose_port_dot_and_case() {
        assert_eq!(request_host("API.Example.com.:8080"), "api.example.com");
        assert_eq!(request_host("example.com"), "example.com");
        assert_eq!(request_host("[::1]:80"), "[::1]");
        assert_eq!(request_host("[::1]"), "[::1]");
        assert_eq!(request_host("10.0.0.1:443"), "10.0.0.1");
        assert_eq!(
            request_host("a:b"),
            "a:b",
            "not a port: left for the caller to refuse"
        );
    }

    #[test]
    fn exact_first_then_the_longest_wildcard() {
        let mut t = HostTable::new();
        for (p, v) in [
            ("*.example.com", 1),
            ("*.b.example.com", 2),
            ("x.b.example.com", 3),
        ] {
            t.insert(&HostPattern::parse(p).unwrap(), v);
        }
        assert_eq!(t.get("x.b.example.com"), Some(&3));
        assert_eq!(t.get("y.b.example.com"), Some(&2));
        assert_eq!(t.get("z.y.b.example.com"), Some(&2));
        assert_eq!(t.get("b.example.com"), Some(&1));
        assert_eq!(t.get("example.com"), None);
        assert_eq!(t.get("other.org"), None);
        let all: Vec<i32> = t.matches("x.b.example.com").copied().collect();
        assert_eq!(all, [3, 2, 1], "exact, then wildcards from the longest");
        assert_eq!(t.matches("example.com").count(), 0);
        *t.entry(&HostPattern::parse("other.org").unwrap(), || 0) += 7;
        assert_eq!(t.get("other.org"), Some(&7));
        assert_eq!(t.iter().count(), 4);
    }
}
