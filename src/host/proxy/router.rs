//! Route matching: exact URIs, or prefixes ending in `*`; the most specific
//! match wins (an exact URI over any prefix, a longer prefix over a shorter
//! one, then the higher `priority`, then file order). Disabled routes
//! (`status: 0`) match nothing.

use crate::host::config::{Route, UriPattern};
use http::Method;
use std::sync::Arc;

/// The routes, ready to match.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// A router over `routes` (file order breaks ties).
    pub fn new(routes: Vec<Route>) -> Self {
        Router {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// The routes, in file order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The index (in [`Router::routes`]) of the best route for `method` and
    /// `path`, if any.
    pub fn find(&self, method: &Method, path: &str) -> Option<usize> {
        let mut best: Option<(usize, (bool, usize, i64))> = None;
        for (index, route) in self.routes.iter().enumerate() {
            if !route.enabled {
                continue;
            }
            if let Some(methods) = &route.methods {
                if !methods.contains(method) {
                    continue;
                }
            }
            for pattern in &route.uris {
                let score = match pattern {
                    UriPattern::Exact(uri) if uri == path => (true, uri.len(), route.priority),
                    UriPattern::Prefix(prefix) if path.starts_with(prefix.as_str()) => {
                        (false, prefix.len(), route.priority)
                    }
                    _ => continue,
                };
                if best.is_none_or(|(_, b)| score > b) {
                    best = Some((index, score));
                }
            }
        }
        best.map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::config::Config;

    fn router(routes: &str) -> Router {
        let c = Config::parse(&format!(
            r#"{{"ext-plugin":{{"cmd":["r"]}},"routes":[{routes}]}}"#
        ))
        .unwrap();
        Router::new(c.routes)
    }

    #[test]
    fn most_specific_wins() {
        let up = r#""upstream":{"nodes":{"127.0.0.1:1":1}}"#;
        let r = router(&format!(
            r#"{{"id":"all","uri":"/*",{up}}},{{"id":"api","uri":"/api/*",{up}}},
               {{"id":"exact","uri":"/api/x",{up}}},{{"id":"get","uri":"/g","methods":["GET"],{up}}}"#
        ));
        let id = |m: Method, p: &str| r.find(&m, p).map(|i| r.routes()[i].id.clone());
        assert_eq!(id(Method::GET, "/api/x").as_deref(), Some("exact"));
        assert_eq!(id(Method::GET, "/api/y").as_deref(), Some("api"));
        assert_eq!(id(Method::GET, "/other").as_deref(), Some("all"));
        assert_eq!(id(Method::GET, "/g").as_deref(), Some("get"));
        assert_eq!(id(Method::POST, "/g").as_deref(), Some("all"));
        let r = router(&format!(r#"{{"id":"only","uri":"/only",{up}}}"#));
        assert!(r.find(&Method::GET, "/nope").is_none());
        let r = router(&format!(
            r#"{{"id":"low","uri":"/p/*",{up}}},{{"id":"high","uri":"/p/*","priority":5,{up}}},
               {{"id":"off","uri":"/p/x","status":0,{up}}}"#
        ));
        let id = |m: Method, p: &str| r.find(&m, p).map(|i| r.routes()[i].id.clone());
        assert_eq!(
            id(Method::GET, "/p/x").as_deref(),
            Some("high"),
            "priority breaks the tie; disabled skipped"
        );
    }
}
