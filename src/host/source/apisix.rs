//! APISIX's configuration objects as etcd holds them: routes, upstreams,
//! services and SSL objects under one prefix (`/apisix/routes/<id>`, ...),
//! kept by key and made into a [`RouteTable`] object by object.

use super::table::{ErrorKind, RouteTable, Skipped};
use crate::host::config::{self, Keyring, Objects, Ssl};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The kinds of object under the prefix that extplug reads; other keys
/// (`plugins`, `consumers`, ...) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Route,
    Upstream,
    Service,
    Ssl,
}

/// SSL objects already checked, by id: their text and what it made (a
/// certificate's check costs far more than a route's, and a table is made
/// at every change of any object).
type SslCache = BTreeMap<String, (String, Result<Option<Ssl>, String>)>;

/// The objects read from etcd, by kind and id, as their JSON text.
#[derive(Debug, Clone, Default)]
pub struct Store {
    prefix: String,
    routes: BTreeMap<String, String>,
    upstreams: BTreeMap<String, String>,
    services: BTreeMap<String, String>,
    ssls: BTreeMap<String, String>,
    /// The keys encrypted SSL keys are decrypted with.
    keyring: Keyring,
    ssl_cache: Arc<Mutex<SslCache>>,
}

impl Store {
    /// An empty store for keys under `prefix` (without a trailing `/`).
    pub fn new(prefix: &str) -> Store {
        Store {
            prefix: prefix.to_owned(),
            ..Store::default()
        }
    }

    /// An empty store for keys under `prefix`, decrypting SSL keys with
    /// `keyring`.
    pub fn with_keyring(prefix: &str, keyring: Keyring) -> Store {
        Store {
            keyring,
            ..Store::new(prefix)
        }
    }

    /// What `key` is: `(kind, id)` for `<prefix>/routes/<id>` and the like;
    /// `None` for any other key (ignored).
    fn classify<'k>(&self, key: &'k str) -> Option<(Kind, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (dir, id) = rest.split_once('/')?;
        if id.is_empty() || id.contains('/') {
            return None;
        }
        let kind = match dir {
            "routes" => Kind::Route,
            "upstreams" => Kind::Upstream,
            "services" => Kind::Service,
            "ssls" => Kind::Ssl,
            _ => return None,
        };
        Some((kind, id))
    }

    fn map(&mut self, kind: Kind) -> &mut BTreeMap<String, String> {
        match kind {
            Kind::Route => &mut self.routes,
            Kind::Upstream => &mut self.upstreams,
            Kind::Service => &mut self.services,
            Kind::Ssl => &mut self.ssls,
        }
    }

    /// Records `key` = `value` (a put); false when the key is not one of
    /// the objects read (nothing changed).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> bool {
        let Some(key) = utf8_key(key) else {
            return false;
        };
        let Some((kind, id)) = self.classify(key) else {
            return false;
        };
        let id = id.to_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        self.map(kind).insert(id, value);
        true
    }

    /// Forgets `key` (a delete); false when the key is not one of the
    /// objects read.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        let Some(key) = utf8_key(key) else {
            return false;
        };
        let Some((kind, id)) = self.classify(key) else {
            return false;
        };
        let id = id.to_owned();
        self.map(kind).remove(&id).is_some()
    }

    /// The number of route objects held.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Checks every object and makes the route table: valid routes in id
    /// order, and each object skipped with its key and the reason.
    pub fn table(&self) -> RouteTable {
        let mut table = RouteTable::default();
        let objects = Objects {
            prefix: &self.prefix,
            upstreams: &self.upstreams,
            services: &self.services,
        };
        for (id, text) in &self.upstreams {
            if let Err(reason) = config::check_apisix_upstream(text) {
                table.skipped.push(Skipped {
                    key: format!("{}/upstreams/{}", self.prefix, id.escape_debug()),
                    kind: ErrorKind::Upstream,
                    reason,
                });
            }
        }
        for (id, text) in &self.services {
            if let Err(reason) = config::check_apisix_service(text) {
                table.skipped.push(Skipped {
                    key: format!("{}/services/{}", self.prefix, id.escape_debug()),
                    kind: ErrorKind::Service,
                    reason,
                });
            }
        }
        let mut cache = self.ssl_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|id, (text, _)| self.ssls.get(id) == Some(text));
        for (id, text) in &self.ssls {
            let (_, checked) = cache.entry(id.clone()).or_insert_with(|| {
                let checked =
                    with_id(text, id).and_then(|text| config::parse_ssl(&text, &self.keyring));
                (text.clone(), checked)
            });
            match checked {
                Ok(Some(ssl)) => table.ssls.push(ssl.clone()),
                Ok(None) => {}
                Err(reason) => table.skipped.push(Skipped {
                    key: format!("{}/ssls/{}", self.prefix, id.escape_debug()),
                    kind: ErrorKind::Ssl,
                    reason: reason.clone(),
                }),
            }
        }
        drop(cache);
        for (id, text) in &self.routes {
            let parsed =
                with_id(text, id).and_then(|text| config::parse_apisix_route(&text, &objects));
            match parsed {
                Ok(route) => table.routes.push(route),
                Err(reason) => table.skipped.push(Skipped {
                    key: self.route_key(id),
                    kind: ErrorKind::Route,
                    reason,
                }),
            }
        }
        table
    }

    /// The etcd key of route `id`, for messages: control characters
    /// escaped (a key in etcd may hold any byte; a log line may not).
    pub fn route_key(&self, id: &str) -> String {
        format!("{}/routes/{}", self.prefix, id.escape_debug())
    }
}

/// `key` as text; `None` (the key is ignored) when it is not UTF-8, which
/// no APISIX id is: two such keys would otherwise read as one.
fn utf8_key(key: &[u8]) -> Option<&str> {
    match std::str::from_utf8(key) {
        Ok(key) => Some(key),
        Err(_) => {
            tracing::warn!(key = %String::from_utf8_lossy(key).escape_debug(), "ignored an etcd key that is not UTF-8");
            None
        }
    }
}

/// The route's text with the key's id as its `id` when it has none (APISIX
/// keeps the id in both); a different `id` is an error.
fn with_id(text: &str, id: &str) -> Result<String, String> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(object) = value.as_object_mut() else {
        return Err("not a JSON object".into());
    };
    match object.get("id") {
        None => {
            object.insert("id".into(), serde_json::Value::String(id.to_owned()));
            Ok(value.to_string())
        }
        Some(serde_json::Value::String(s)) if s == id => Ok(text.to_owned()),
        Some(serde_json::Value::Number(n)) if n.to_string() == id => Ok(text.to_owned()),
        Some(other) => Err(format!("`id` {other} is not the key's id {id:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: &str = r#"{"nodes":{"127.0.0.1:1980":1},"type":"roundrobin"}"#;

    #[test]
    fn keys_outside_the_objects_are_ignored() {
        let mut s = Store::new("/apisix");
        assert!(!s.put(b"/apisix/routes", b"init_dir"));
        assert!(!s.put(b"/apisix/plugins/x", b"{}"));
        assert!(!s.put(b"/apisixx/routes/1", b"{}"));
        assert!(!s.put(b"/apisix/routes/1/x", b"{}"));
        assert!(s.put(b"/apisix/routes/1", b"{}"));
        assert_eq!(s.route_count(), 1);
        assert!(s.delete(b"/apisix/routes/1"));
        assert!(!s.delete(b"/apisix/routes/1"));
        assert!(!s.put(b"/apisix/routes/\xff", b"{}"), "not UTF-8: ignored");
        s.put(b"/apisix/routes/a\nb", b"{}");
        let t = s.table();
        assert_eq!(
            t.skipped[0].key, "/apisix/routes/a\\nb",
            "escaped for the log"
        );
    }

    #[test]
    fn upstream_id_and_service_id_resolve_and_the_route_wins() {
        let mut s = Store::new("/apisix");
        s.put(b"/apisix/upstreams/u1", UP.as_bytes());
        s.put(
            b"/apisix/services/s1",
            br#"{"upstream_id":"u1","plugins":{"ext-plugin-pre-req":{"conf":[{"name":"say","value":"{}"}]},
                "ext-plugin-post-resp":{"conf":[{"name":"svc","value":"{}"}]}}}"#,
        );
        s.put(b"/apisix/routes/a", br#"{"uri":"/a","upstream_id":"u1"}"#);
        s.put(
            b"/apisix/routes/b",
            br#"{"id":"b","uri":"/b","service_id":"s1","create_time":1,"update_time":2,
                "plugins":{"ext-plugin-pre-req":{"conf":[{"name":"own","value":"{}"}]}}}"#,
        );
        s.put(b"/apisix/routes/c", br#"{"uri":"/c","upstream_id":"nope"}"#);
        s.put(
            b"/apisix/routes/d",
            br#"{"id":"x","uri":"/d","upstream_id":"u1"}"#,
        );
        let t = s.table();
        let ids: Vec<&str> = t.routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let b = &t.routes[1];
        assert_eq!(b.upstream.nodes, [("127.0.0.1:1980".to_string(), 1)]);
        assert_eq!(
            b.pre_req.as_ref().unwrap().conf[0].0,
            "own",
            "the route's plugin wins"
        );
        assert_eq!(
            b.post_resp.as_ref().unwrap().conf[0].0,
            "svc",
            "the service's applies"
        );
        assert_eq!(t.skipped.len(), 2, "{:?}", t.skipped);
        assert_eq!(t.skipped[0].key, "/apisix/routes/c");
        assert!(t.skipped[0]
            .reason
            .contains("no upstream at `/apisix/upstreams/nope`"));
        assert!(t.skipped[1].reason.contains("not the key's id"));
    }

    #[test]
    fn routes_with_hosts_and_vars_are_served_and_inherit_the_service_hosts() {
        let mut s = Store::new("/apisix");
        s.put(
            b"/apisix/services/s1",
            format!(r#"{{"upstream":{UP},"hosts":["svc.example.com"],"enable_websocket":true}}"#)
                .as_bytes(),
        );
        s.put(
            b"/apisix/routes/own",
            br#"{"uri":"/a","service_id":"s1","hosts":["own.example.com"],"enable_websocket":false,
                "vars":[["arg_a","==","1"]],"remote_addrs":["10.0.0.0/8"],"priority":2}"#,
        );
        s.put(
            b"/apisix/routes/inherits",
            br#"{"uri":"/b","service_id":"s1"}"#,
        );
        s.put(
            b"/apisix/routes/badvars",
            br#"{"uri":"/c","service_id":"s1","vars":[["arg_a","??","1"]]}"#,
        );
        let t = s.table();
        let ids: Vec<&str> = t.routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["inherits", "own"]);
        let own = &t.routes[1];
        assert_eq!(own.hosts[0].to_string(), "own.example.com");
        assert!(!own.enable_websocket && own.vars.is_some() && own.remote_addrs.len() == 1);
        let inherits = &t.routes[0];
        assert_eq!(inherits.hosts[0].to_string(), "svc.example.com");
        assert!(inherits.enable_websocket, "the service's");
        assert_eq!(t.skipped.len(), 1, "{:?}", t.skipped);
        assert!(
            t.skipped[0]
                .reason
                .contains("`vars[0]`: invalid operator \"??\""),
            "{:?}",
            t.skipped
        );
    }

    #[test]
    fn deeply_nested_values_are_skipped_not_a_stack_overflow() {
        let mut s = Store::new("/apisix");
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let route = format!(r#"{{"uri":"/a","upstream_id":"u1","desc":{deep}}}"#);
        s.put(b"/apisix/routes/1", route.as_bytes());
        s.put(
            b"/apisix/upstreams/u1",
            format!(r#"{{"nodes":{deep}}}"#).as_bytes(),
        );
        s.put(
            b"/apisix/services/s1",
            format!(r#"{{"labels":{deep}}}"#).as_bytes(),
        );
        let t = s.table();
        assert!(t.routes.is_empty());
        // The service's `labels` are skipped over (ignored, without
        // recursion); the route and the upstream are refused.
        assert_eq!(t.skipped.len(), 2, "{:?}", t.skipped);
        for skipped in &t.skipped {
            assert!(skipped.reason.contains("recursion limit"), "{skipped:?}");
        }
    }

    #[test]
    fn a_bad_upstream_is_skipped_with_its_key_and_so_are_its_routes() {
        let mut s = Store::new("/apisix");
        s.put(b"/apisix/upstreams/u1", br#"{"nodes":{"nohost":1}}"#);
        s.put(b"/apisix/routes/1", br#"{"uri":"/a","upstream_id":"u1"}"#);
        s.put(
            b"/apisix/routes/2",
            br#"{"uri":"/b","upstream":{"nodes":{"127.0.0.1:1":1}},"filter_func":"x"}"#,
        );
        let t = s.table();
        assert!(t.routes.is_empty());
        let got: Vec<(&str, ErrorKind)> =
            t.skipped.iter().map(|s| (s.key.as_str(), s.kind)).collect();
        assert_eq!(
            got,
            [
                ("/apisix/upstreams/u1", ErrorKind::Upstream),
                ("/apisix/routes/1", ErrorKind::Route),
                ("/apisix/routes/2", ErrorKind::Route)
            ]
        );
        assert!(
            t.skipped[0].reason.contains("is not host:port"),
            "{:?}",
            t.skipped
        );
        assert!(
            t.skipped[2]
                .reason
                .contains("at `filter_func`: not supported by extplug"),
            "{:?}",
            t.skipped
        );
    }
}
