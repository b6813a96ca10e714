//! Route matching, as APISIX's default router (`radixtree_host_uri`) does
//! it, for the file's routes and etcd's alike:
//!
//! 1. Routes with `hosts` are tried before every route without, whatever
//!    their URIs or priorities: the routes of the request's exact host
//!    first, then those of each `*.` wildcard covering it, the longest
//!    first; then the routes without hosts.
//! 2. Within each of those sets, an exact URI before any prefix, a longer
//!    prefix before a shorter one (the most specific match wins).
//! 3. Routes of the same URI: the higher `priority` first, then file order
//!    (etcd's: id order).
//! 4. The first route whose `methods`, `remote_addrs` and `vars` admit the
//!    request is the one; one that does not admit it passes the request to
//!    the next, down to the routes without hosts.
//!
//! Disabled routes (`status: 0`) match nothing. Matching costs a hash probe
//! per label of the host, a hash probe for the exact URI and a walk of the
//! prefix trie as deep as the path: flat in the number of routes.

use crate::host::config::{Route, UriPattern};
use crate::host::edge::hostname::HostTable;
use http::Method;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// What a request is matched on (its variables, for `vars`, are given
/// apart, read only when a route's `vars` asks).
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    /// The method.
    pub method: &'a Method,
    /// The normalized, decoded path.
    pub path: &'a str,
    /// The host as [`crate::host::edge::hostname::request_host`] gives it
    /// (empty when the request names none).
    pub host: &'a str,
    /// The client's address (the one `remote_addr` gives).
    pub client: IpAddr,
}

/// The routes, indexed for matching.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    /// Each host pattern's index in `host_routes`.
    by_host: HostTable<usize>,
    host_routes: Vec<UriIndex>,
    any_host: UriIndex,
}

impl Router {
    /// A router over `routes` (their order breaks ties of priority).
    pub fn new(routes: Vec<Route>) -> Self {
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let mut by_host = HostTable::new();
        let mut host_routes: Vec<UriIndex> = Vec::new();
        let mut any_host = UriIndex::default();
        for (index, route) in routes.iter().enumerate() {
            if !route.enabled {
                continue;
            }
            let index = u32::try_from(index).expect("fewer than 2^32 routes");
            if route.hosts.is_empty() {
                any_host.insert(route, index);
            }
            for host in &route.hosts {
                let at = *by_host.entry(host, || {
                    host_routes.push(UriIndex::default());
                    host_routes.len() - 1
                });
                host_routes[at].insert(route, index);
            }
        }
        let order = |a: &u32, b: &u32| {
            let (ra, rb) = (&routes[*a as usize], &routes[*b as usize]);
            rb.priority.cmp(&ra.priority).then(a.cmp(b))
        };
        any_host.finish(&order);
        for index in &mut host_routes {
            index.finish(&order);
        }
        Router {
            routes,
            by_host,
            host_routes,
            any_host,
        }
    }

    /// The routes, in the order given.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The index (in [`Router::routes`]) of the route for `req`, if any;
    /// `var` gives a request variable by name, asked only by routes with
    /// `vars`.
    pub fn find<F, S>(&self, req: &Matched<'_>, var: &mut F) -> Option<usize>
    where
        F: FnMut(&str) -> Option<S>,
        S: AsRef<str>,
    {
        if !req.host.is_empty() {
            for &at in self.by_host.matches(req.host) {
                if let Some(found) = self.host_routes[at].find(&self.routes, req, var) {
                    return Some(found);
                }
            }
        }
        self.any_host.find(&self.routes, req, var)
    }
}

/// The routes of one host (or of no host) by URI: exact URIs hashed,
/// prefixes in a byte trie.
#[derive(Debug, Clone, Default)]
struct UriIndex {
    exact: HashMap<String, Vec<u32>>,
    prefixes: PrefixTrie,
}

impl UriIndex {
    fn insert(&mut self, route: &Route, index: u32) {
        for pattern in &route.uris {
            let bucket = match pattern {
                UriPattern::Exact(uri) => self.exact.entry(uri.clone()).or_default(),
                UriPattern::Prefix(prefix) => self.prefixes.bucket(prefix.as_bytes()),
            };
            // A route listing the same URI twice is tried once.
            if bucket.last() != Some(&index) {
                bucket.push(index);
            }
        }
    }

    /// Orders each bucket: higher priority first, then given order.
    fn finish(&mut self, order: &dyn Fn(&u32, &u32) -> std::cmp::Ordering) {
        for bucket in self.exact.values_mut() {
            bucket.sort_by(order);
        }
        self.prefixes.finish(order);
    }

    fn find<F, S>(&self, routes: &[Arc<Route>], req: &Matched<'_>, var: &mut F) -> Option<usize>
    where
        F: FnMut(&str) -> Option<S>,
        S: AsRef<str>,
    {
        let mut first = |bucket: &[u32]| {
            bucket
                .iter()
                .map(|&i| i as usize)
                .find(|&i| admits(&routes[i], req, var))
        };
        if let Some(found) = self.exact.get(req.path).and_then(|b| first(b)) {
            return Some(found);
        }
        self.prefixes.covering(req.path.as_bytes()).find_map(first)
    }
}

/// Whether `route`'s conditions besides its URI and hosts admit `req`.
fn admits<F, S>(route: &Route, req: &Matched<'_>, var: &mut F) -> bool
where
    F: FnMut(&str) -> Option<S>,
    S: AsRef<str>,
{
    if let Some(methods) = &route.methods {
        if !methods.contains(req.method) {
            return false;
        }
    }
    if !route.remote_addrs.is_empty()
        && !crate::host::config::expr::ip_within(&route.remote_addrs, req.client)
    {
        return false;
    }
    match &route.vars {
        Some(vars) => vars.eval(var),
        None => true,
    }
}

/// No node: the trie's `u32` links use it for "none".
const NONE: u32 = u32::MAX;

/// Route prefixes in a byte trie: a path's covering prefixes are found by
/// one walk down as deep as the path goes, then, from the deepest, the
/// links up to each shorter prefix that has routes. Built with a vector of
/// children per node, then laid out flat ([`PrefixTrie::finish`]): every
/// node's child bytes side by side in one array, so that a walk touches
/// few cache lines however many routes there are.
#[derive(Debug, Clone)]
struct PrefixTrie {
    /// While building: each node's `(byte, child)`, sorted by byte.
    building: Vec<Vec<(u8, u32)>>,
    nodes: Vec<TrieNode>,
    /// The child bytes of every node, node after node (a node's are
    /// `bytes[first..first + count]`, sorted) ...
    bytes: Vec<u8>,
    /// ... and the child each byte leads to.
    targets: Vec<u32>,
    buckets: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, Copy)]
struct TrieNode {
    first: u32,
    count: u32,
    /// The routes of the prefix ending here (an index in `buckets`).
    bucket: u32,
    /// The nearest node above with a bucket.
    up: u32,
}

const EMPTY_NODE: TrieNode = TrieNode {
    first: 0,
    count: 0,
    bucket: NONE,
    up: NONE,
};

impl Default for PrefixTrie {
    fn default() -> Self {
        PrefixTrie {
            building: vec![Vec::new()],
            nodes: vec![EMPTY_NODE],
            bytes: Vec::new(),
            targets: Vec::new(),
            buckets: Vec::new(),
        }
    }
}

impl PrefixTrie {
    /// The routes of `prefix`, made empty if new (before [`Self::finish`]).
    fn bucket(&mut self, prefix: &[u8]) -> &mut Vec<u32> {
        let mut node = 0usize;
        for &b in prefix {
            node = match self.building[node].binary_search_by_key(&b, |c| c.0) {
                Ok(at) => self.building[node][at].1 as usize,
                Err(at) => {
                    let child = self.building.len();
                    self.building.push(Vec::new());
                    self.nodes.push(EMPTY_NODE);
                    let link = u32::try_from(child).expect("fewer than 2^32 trie nodes");
                    self.building[node].insert(at, (b, link));
                    child
                }
            };
        }
        if self.nodes[node].bucket == NONE {
            self.nodes[node].bucket =
                u32::try_from(self.buckets.len()).expect("fewer than 2^32 prefixes");
            self.buckets.push(Vec::new());
        }
        &mut self.buckets[self.nodes[node].bucket as usize]
    }

    /// Orders the buckets, lays the children out flat, and links each node
    /// to the nearest one above with routes (children are made after their
    /// parent: one pass in index order sees each parent's link final).
    fn finish(&mut self, order: &dyn Fn(&u32, &u32) -> std::cmp::Ordering) {
        for bucket in &mut self.buckets {
            bucket.sort_by(order);
        }
        let building = std::mem::take(&mut self.building);
        for (i, children) in building.iter().enumerate() {
            let link = if self.nodes[i].bucket != NONE {
                i as u32
            } else {
                self.nodes[i].up
            };
            self.nodes[i].first = u32::try_from(self.bytes.len()).expect("fewer than 2^32 edges");
            self.nodes[i].count = children.len() as u32;
            for &(b, child) in children {
                self.bytes.push(b);
                self.targets.push(child);
                self.nodes[child as usize].up = link;
            }
        }
    }

    /// The buckets of the prefixes of `path`, the longest first.
    fn covering<'a>(&'a self, path: &[u8]) -> impl Iterator<Item = &'a [u32]> + 'a {
        let mut node = 0usize;
        let mut deepest = (self.nodes[0].bucket != NONE).then_some(0u32);
        for &b in path {
            let n = self.nodes[node];
            let (first, count) = (n.first as usize, n.count as usize);
            let children = &self.bytes[first..first + count];
            // A scan of a few bytes beats a binary search's chain of
            // dependent steps; past 16, the search.
            let at = if count <= 16 {
                children.iter().position(|&c| c == b)
            } else {
                children.binary_search(&b).ok()
            };
            match at {
                Some(at) => node = self.targets[first + at] as usize,
                None => break,
            }
            if self.nodes[node].bucket != NONE {
                deepest = Some(node as u32);
            }
        }
        std::iter::successors(deepest, move |&n| {
            Some(self.nodes[n as usize].up).filter(|&up| up != NONE)
        })
        .map(move |n| self.buckets[self.nodes[n as usize].bucket as usize].as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::config::Config;

    const UP: &str = r#""upstream":{"nodes":{"127.0.0.1:1":1}}"#;

    fn router(routes: &[&str]) -> Router {
        let routes: Vec<String> = routes.iter().map(|r| format!("{{{r},{UP}}}")).collect();
        let c = Config::parse(&format!(
            r#"{{"ext-plugin":{{"cmd":["r"]}},"routes":[{}]}}"#,
            routes.join(",")
        ))
        .unwrap();
        Router::new(c.routes)
    }

    /// The id of the route for a request; `vars` are `(name, value)`.
    fn id(
        r: &Router,
        method: Method,
        host: &str,
        path: &str,
        client: &str,
        vars: &[(&str, &str)],
    ) -> Option<String> {
        let req = Matched {
            method: &method,
            path,
            host,
            client: client.parse().unwrap(),
        };
        let found = r.find(&req, &mut |name: &str| {
            vars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
        });
        found.map(|i| r.routes()[i].id.clone())
    }

    fn get(r: &Router, host: &str, path: &str) -> Option<String> {
        id(r, Method::GET, host, path, "127.0.0.1", &[])
    }

    #[test]
    fn most_specific_uri_wins_then_priority_then_order() {
        let r = router(&[
            r#""id":"all","uri":"/*""#,
            r#""id":"api","uri":"/api/*""#,
            r#""id":"exact","uri":"/api/x""#,
            r#""id":"get","uri":"/g","methods":["GET"]"#,
        ]);
        assert_eq!(get(&r, "", "/api/x").as_deref(), Some("exact"));
        assert_eq!(get(&r, "", "/api/y").as_deref(), Some("api"));
        assert_eq!(get(&r, "", "/other").as_deref(), Some("all"));
        assert_eq!(get(&r, "", "/g").as_deref(), Some("get"));
        let post = id(&r, Method::POST, "", "/g", "127.0.0.1", &[]);
        assert_eq!(
            post.as_deref(),
            Some("all"),
            "a method mismatch falls through"
        );
        let r = router(&[r#""id":"only","uri":"/only""#]);
        assert_eq!(get(&r, "", "/nope"), None);
        let r = router(&[
            r#""id":"low","uri":"/p/*""#,
            r#""id":"high","uri":"/p/*","priority":5"#,
            r#""id":"tie","uri":"/p/*","priority":5"#,
            r#""id":"off","uri":"/p/x","status":0"#,
            r#""id":"exact-low","uri":"/p/e","priority":-10"#,
        ]);
        assert_eq!(
            get(&r, "", "/p/x").as_deref(),
            Some("high"),
            "priority; disabled skipped"
        );
        assert_eq!(
            get(&r, "", "/p/e").as_deref(),
            Some("exact-low"),
            "an exact URI beats a prefix whatever the priorities"
        );
    }

    #[test]
    fn prefixes_are_byte_prefixes_longest_first() {
        let r = router(&[
            r#""id":"a","uri":"/a*""#,
            r#""id":"ab","uri":"/ab/*""#,
            r#""id":"abc","uris":["/ab/c*","/zz"]"#,
        ]);
        assert_eq!(
            get(&r, "", "/a").as_deref(),
            Some("a"),
            "a prefix covers itself"
        );
        assert_eq!(get(&r, "", "/axe").as_deref(), Some("a"));
        assert_eq!(
            get(&r, "", "/ab").as_deref(),
            Some("a"),
            "`/ab/*` does not cover `/ab`"
        );
        assert_eq!(get(&r, "", "/ab/").as_deref(), Some("ab"));
        assert_eq!(get(&r, "", "/ab/cd").as_deref(), Some("abc"));
        assert_eq!(get(&r, "", "/zz").as_deref(), Some("abc"));
        assert_eq!(get(&r, "", "/b"), None);
    }

    #[test]
    fn routes_with_hosts_come_first_whatever_the_priority() {
        let r = router(&[
            r#""id":"any-exact","uri":"/x","priority":100"#,
            r#""id":"host-prefix","uri":"/*","host":"api.example.com""#,
            r#""id":"wild","uri":"/*","hosts":["*.example.com"]"#,
            r#""id":"wild-deep","uri":"/deep/*","hosts":["*.b.example.com"]"#,
            r#""id":"exact-host-get","uri":"/g","hosts":["x.b.example.com"],"methods":["GET"]"#,
        ]);
        assert_eq!(
            get(&r, "api.example.com", "/x").as_deref(),
            Some("host-prefix"),
            "a host's prefix before a hostless exact URI of higher priority"
        );
        assert_eq!(get(&r, "other.org", "/x").as_deref(), Some("any-exact"));
        assert_eq!(get(&r, "", "/x").as_deref(), Some("any-exact"));
        assert_eq!(get(&r, "z.example.com", "/x").as_deref(), Some("wild"));
        assert_eq!(
            get(&r, "y.b.example.com", "/deep/1").as_deref(),
            Some("wild-deep")
        );
        assert_eq!(
            get(&r, "y.b.example.com", "/x").as_deref(),
            Some("wild"),
            "the longest wildcard's routes do not match: the next wildcard"
        );
        assert_eq!(
            get(&r, "x.b.example.com", "/g").as_deref(),
            Some("exact-host-get")
        );
        let post = id(&r, Method::POST, "x.b.example.com", "/g", "127.0.0.1", &[]);
        assert_eq!(
            post.as_deref(),
            Some("wild"),
            "exact host, then the wildcards"
        );
        assert_eq!(
            get(&r, "example.com", "/nothing"),
            None,
            "a wildcard needs a label"
        );
    }

    #[test]
    fn remote_addrs_and_vars_admit_or_pass_on() {
        let r = router(&[
            r#""id":"local","uri":"/r","remote_addrs":["127.0.0.2","10.0.0.0/8","::1"]"#,
            r#""id":"one","uri":"/r","remote_addr":"192.168.1.0/24""#,
            r#""id":"vars","uri":"/r","vars":[["arg_v","==","1"],["http_x_a","~~","^a"]],"priority":-1"#,
            r#""id":"rest","uri":"/*""#,
        ]);
        let at = |client: &str, vars: &[(&str, &str)]| id(&r, Method::GET, "", "/r", client, vars);
        assert_eq!(at("127.0.0.2", &[]).as_deref(), Some("local"));
        assert_eq!(at("10.9.8.7", &[]).as_deref(), Some("local"));
        assert_eq!(at("::1", &[]).as_deref(), Some("local"));
        assert_eq!(at("192.168.1.9", &[]).as_deref(), Some("one"));
        assert_eq!(at("127.0.0.1", &[]).as_deref(), Some("rest"));
        let v = [("arg_v", "1"), ("http_x_a", "abc")];
        assert_eq!(at("127.0.0.1", &v).as_deref(), Some("vars"));
        assert_eq!(at("127.0.0.1", &v[..1]).as_deref(), Some("rest"));
    }

    #[test]
    fn vars_are_read_only_when_a_route_asks() {
        let r = router(&[
            r#""id":"plain","uri":"/p""#,
            r#""id":"v","uri":"/v","vars":[["arg_a","==","1"]]"#,
        ]);
        let mut asked = Vec::new();
        let req = Matched {
            method: &Method::GET,
            path: "/p",
            host: "",
            client: "127.0.0.1".parse().unwrap(),
        };
        r.find(&req, &mut |name: &str| {
            asked.push(name.to_owned());
            None::<&str>
        });
        assert!(asked.is_empty());
        let req = Matched { path: "/v", ..req };
        r.find(&req, &mut |name: &str| {
            asked.push(name.to_owned());
            None::<&str>
        });
        assert_eq!(asked, ["arg_a"]);
    }

    #[test]
    fn many_routes_index_as_few() {
        let mut routes: Vec<String> = (0..2000)
            .map(|i| format!(r#""id":"e{i}","uri":"/svc{i}/x""#))
            .collect();
        routes.extend((0..2000).map(|i| format!(r#""id":"p{i}","uri":"/svc{i}/*""#)));
        routes.extend(
            (0..500).map(|i| format!(r#""id":"h{i}","uri":"/*","host":"h{i}.example.com""#)),
        );
        let refs: Vec<&str> = routes.iter().map(String::as_str).collect();
        let r = router(&refs);
        assert_eq!(get(&r, "", "/svc1999/x").as_deref(), Some("e1999"));
        assert_eq!(get(&r, "", "/svc1999/y").as_deref(), Some("p1999"));
        assert_eq!(get(&r, "", "/svc19/y").as_deref(), Some("p19"));
        assert_eq!(get(&r, "h7.example.com", "/svc1/x").as_deref(), Some("h7"));
        assert_eq!(get(&r, "", "/none"), None);
    }
}
