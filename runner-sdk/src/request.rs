//! The request phase: what a filter sees of the request, what it may change,
//! and how the changes of a chain fold into one answer.

use crate::info::{Info, InfoSource};
use crate::{
    InfoKey, IntoHeaderName, IntoHeaderValue, InvalidValue, PluginError, RequestOutcome,
    RequestParts, Rewrite, Stop,
};
use http::{Method, StatusCode};
use std::net::IpAddr;

/// Changes recorded on a request; each list keeps the order of first change.
#[derive(Debug, Default)]
struct Changes {
    path: Option<String>,
    /// Lower-cased name -> new values (`None`: deleted).
    headers: Vec<(String, Option<Vec<String>>)>,
    /// Name -> new values (`None`: deleted).
    args: Vec<(String, Option<Vec<String>>)>,
    resp_headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    stop: Option<Stop>,
    /// The first name or value a setter refused: the call fails with it.
    invalid: Option<InvalidValue>,
}

/// Sets the new values for `name` in a change list.
fn record(
    list: &mut Vec<(String, Option<Vec<String>>)>,
    name: String,
    values: Option<Vec<String>>,
) {
    match list.iter_mut().find(|(n, _)| *n == name) {
        Some(entry) => entry.1 = values,
        None => list.push((name, values)),
    }
}

/// A request in the request phase: read it, record changes, or answer it.
///
/// Reads see earlier writes (after `set_path("/b")`, `path()` is `"/b"`), but
/// only writes are changes: a filter that only reads leaves the request as it
/// was (continue).
pub struct Request<'a> {
    parts: RequestParts<'a>,
    info: Info<'a>,
    changes: Changes,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("parts", &self.parts)
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

impl<'a> Request<'a> {
    /// A request view over `parts`; values not in `parts.extra_info` are
    /// fetched from `source` when first read. For runners and test helpers.
    pub fn new(mut parts: RequestParts<'a>, source: &'a mut dyn InfoSource) -> Self {
        let prefetched = std::mem::take(&mut parts.extra_info);
        Request {
            parts,
            info: Info::new(prefetched, source),
            changes: Changes::default(),
        }
    }

    /// The call's id.
    pub fn id(&self) -> u32 {
        self.parts.id
    }

    /// The client's IP address.
    pub fn src_ip(&self) -> IpAddr {
        self.parts.src_ip
    }

    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    /// The path (decoded, without the query), as changed so far.
    pub fn path(&self) -> &str {
        self.changes.path.as_deref().unwrap_or(self.parts.path)
    }

    /// The first value of header `name` (any case), as changed so far.
    pub fn header(&self, name: impl AsRef<str>) -> Option<&str> {
        let name = name.as_ref();
        // No Vec here: this is the read most plugins make on every call.
        match self
            .changes
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, changed)) => changed.as_ref()?.first().map(String::as_str),
            None => self
                .parts
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v),
        }
    }

    /// Every value of header `name` (any case), as changed so far.
    pub fn header_values(&self, name: impl AsRef<str>) -> Vec<&str> {
        let name = name.as_ref();
        if let Some((_, changed)) = self
            .changes
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return changed.iter().flatten().map(String::as_str).collect();
        }
        self.parts
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    }

    /// The headers as the gateway sent them (names in lower case), before any
    /// change.
    pub fn original_headers(&self) -> &[(&'a str, &'a str)] {
        &self.parts.headers
    }

    /// The first value of query argument `name`, as changed so far: `Some("")`
    /// both for `?name=` and for `?name`; see [`Request::args`] to tell them apart.
    pub fn arg(&self, name: &str) -> Option<&str> {
        if let Some((_, changed)) = self.changes.args.iter().find(|(n, _)| n == name) {
            return changed.as_ref().and_then(|v| v.first()).map(String::as_str);
        }
        self.parts
            .args
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.unwrap_or(""))
    }

    /// The query arguments as the gateway sent them, one entry per value;
    /// `None` for an argument without `=`.
    pub fn args(&self) -> &[(&'a str, Option<&'a str>)] {
        &self.parts.args
    }

    /// A variable from the gateway (`remote_addr`, `http_x_foo`, `arg_page`...):
    /// sent up front when declared in [`crate::Filter::needs`], otherwise asked
    /// for now and kept for the rest of the call. `None` when the gateway has
    /// no such variable. Never a change.
    ///
    /// # Errors
    /// The exchange with the gateway failed.
    pub async fn var(&mut self, name: &str) -> Result<Option<&[u8]>, PluginError> {
        self.info.get(InfoKey::Var(name)).await
    }

    /// [`Request::var`] as text (invalid UTF-8 replaced).
    ///
    /// # Errors
    /// As for [`Request::var`].
    pub async fn var_str(&mut self, name: &str) -> Result<Option<String>, PluginError> {
        Ok(self
            .var(name)
            .await?
            .map(|v| String::from_utf8_lossy(v).into_owned()))
    }

    /// The request body: the one set by an earlier filter, or the client's
    /// (sent up front when declared in [`crate::Filter::needs`], otherwise
    /// fetched now). `None` when the gateway has none. Never a change.
    ///
    /// # Errors
    /// As for [`Request::var`].
    pub async fn body(&mut self) -> Result<Option<&[u8]>, PluginError> {
        if let Some(body) = &self.changes.body {
            return Ok(Some(body));
        }
        self.info.get(InfoKey::RequestBody).await
    }

    /// Replaces the path (decoded, without the query).
    pub fn set_path(&mut self, path: impl Into<String>) {
        self.changes.path = Some(path.into());
    }

    /// Sets header `name` to `value`, replacing every old value. `name` is a
    /// string or an `http::HeaderName`; `value` a string, an
    /// `http::HeaderValue` or an integer.
    ///
    /// An invalid name or value (`"a b"`, `"a\nb"`) changes nothing and fails
    /// the call when the filter returns, naming the plugin and the value.
    ///
    /// ```
    /// # use runner_sdk::{async_trait, Filter, PluginError, Request};
    /// # struct Tag;
    /// #[async_trait]
    /// impl Filter for Tag {
    ///     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
    ///         req.set_header("x-gateway", "extplug");
    ///         req.set_header(runner_sdk::http::header::CACHE_CONTROL, "no-store");
    ///         req.set_header("x-attempt", 1);
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn set_header(&mut self, name: impl IntoHeaderName, value: impl IntoHeaderValue) {
        if let Some((name, value)) = self.checked(name, value) {
            record(&mut self.changes.headers, name, Some(vec![value]));
        }
    }

    /// Adds a value to header `name`, keeping the values it has. Names and
    /// values as for [`Request::set_header`].
    pub fn add_header(&mut self, name: impl IntoHeaderName, value: impl IntoHeaderValue) {
        let Some((name, value)) = self.checked(name, value) else {
            return;
        };
        let mut values: Vec<String> = self
            .header_values(&name)
            .into_iter()
            .map(str::to_owned)
            .collect();
        values.push(value);
        record(&mut self.changes.headers, name, Some(values));
    }

    /// Deletes header `name` (a string or an `http::HeaderName`). An invalid
    /// name fails the call, as for [`Request::set_header`].
    pub fn remove_header(&mut self, name: impl IntoHeaderName) {
        match name.into_header_name() {
            Ok(name) => record(&mut self.changes.headers, name, None),
            Err(e) => self.refuse(e),
        }
    }

    /// The checked, lower-cased name and the checked value; `None` (and the
    /// mistake kept for the call's end) when either is invalid.
    fn checked(
        &mut self,
        name: impl IntoHeaderName,
        value: impl IntoHeaderValue,
    ) -> Option<(String, String)> {
        crate::checked_header(&mut self.changes.invalid, name, value)
    }

    /// Keeps the first refused value: the chain fails the call with it.
    fn refuse(&mut self, invalid: InvalidValue) {
        self.changes.invalid.get_or_insert(invalid);
    }

    /// Sets query argument `name` to `value`, replacing every old value.
    pub fn set_arg(&mut self, name: &str, value: impl Into<String>) {
        record(
            &mut self.changes.args,
            name.to_owned(),
            Some(vec![value.into()]),
        );
    }

    /// Adds a value to query argument `name`, keeping the values it has.
    pub fn add_arg(&mut self, name: &str, value: impl Into<String>) {
        let mut values: Vec<String> = match self.changes.args.iter().find(|(n, _)| n == name) {
            Some((_, changed)) => changed.clone().unwrap_or_default(),
            None => self
                .parts
                .args
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v.unwrap_or("").to_owned())
                .collect(),
        };
        values.push(value.into());
        record(&mut self.changes.args, name.to_owned(), Some(values));
    }

    /// Deletes query argument `name`.
    pub fn remove_arg(&mut self, name: &str) {
        record(&mut self.changes.args, name.to_owned(), None);
    }

    /// Sets a header on the client's response, replacing one set earlier in
    /// the chain. The gateway ignores the protected names (`content-type`,
    /// `content-length`, `location`, `server`...). Names and values as for
    /// [`Request::set_header`].
    pub fn set_resp_header(&mut self, name: impl IntoHeaderName, value: impl IntoHeaderValue) {
        if let Some((name, value)) = self.checked(name, value) {
            self.changes.resp_headers.retain(|(n, _)| *n != name);
            self.changes.resp_headers.push((name, value));
        }
    }

    /// Adds a header to the client's response (names may repeat). Names and
    /// values as for [`Request::set_header`].
    pub fn add_resp_header(&mut self, name: impl IntoHeaderName, value: impl IntoHeaderValue) {
        if let Some(pair) = self.checked(name, value) {
            self.changes.resp_headers.push(pair);
        }
    }

    /// Replaces the request body sent to the upstream.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.changes.body = Some(body.into());
    }

    /// Answers the client with `stop` and ends the chain: the filters after
    /// this one do not run, and earlier changes to the request are dropped.
    ///
    /// The status must be in 200..=599, and the stop must have no mistake
    /// ([`Stop::invalid`], e.g. `Stop::new(1000)`): the runner fails the call
    /// (naming this plugin and the value) otherwise.
    ///
    /// ```
    /// # use runner_sdk::{async_trait, Filter, PluginError, Request, Stop};
    /// # struct Deny;
    /// #[async_trait]
    /// impl Filter for Deny {
    ///     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
    ///         req.stop(Stop::new(403).header("x-reason", "denied").body("no entry\n"));
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn stop(&mut self, stop: Stop) {
        self.changes.stop = Some(stop);
    }

    /// True once a filter called [`Request::stop`].
    pub fn is_stopped(&self) -> bool {
        self.changes.stop.is_some()
    }

    /// The status of the stop recorded so far, if any.
    pub(crate) fn stop_status(&self) -> Option<StatusCode> {
        self.changes.stop.as_ref().map(|s| s.status)
    }

    /// The first status, header name or header value refused so far (by a
    /// setter, or in the recorded stop), taken out: the chain fails the call
    /// with it when the filter returns.
    pub(crate) fn take_invalid(&mut self) -> Option<InvalidValue> {
        self.changes.invalid.take().or_else(|| {
            self.changes
                .stop
                .as_ref()
                .and_then(|stop| stop.invalid().cloned())
        })
    }

    /// The net effect of every change recorded so far. Runners and
    /// [`crate::testing`] call it after [`crate::Chain::run_request`]; plugin
    /// code does not need it.
    pub fn into_outcome(self) -> RequestOutcome {
        let c = self.changes;
        if let Some(stop) = c.stop {
            return RequestOutcome::Stop(stop);
        }
        if c.path.is_none()
            && c.headers.is_empty()
            && c.args.is_empty()
            && c.resp_headers.is_empty()
            && c.body.is_none()
        {
            return RequestOutcome::Continue;
        }
        RequestOutcome::Rewrite(Rewrite {
            path: c.path,
            headers: flatten(c.headers),
            args: flatten(c.args),
            resp_headers: c.resp_headers,
            body: c.body,
        })
    }
}

/// Turns `name -> values | deleted` into the protocol's one pair per value.
fn flatten(list: Vec<(String, Option<Vec<String>>)>) -> Vec<(String, Option<String>)> {
    let mut out = Vec::with_capacity(list.len());
    for (name, values) in list {
        match values {
            // Setting zero values is the same as deleting the name.
            Some(values) if !values.is_empty() => {
                out.extend(values.into_iter().map(|v| (name.clone(), Some(v))))
            }
            _ => out.push((name, None)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::testing::TestRequest;
    use crate::{async_trait, Chain, ConfError, Filter, Plugin, PluginError, Registry, Request};

    /// Reads and writes headers and args, and records what it read.
    struct Probe;

    impl Plugin for Probe {
        fn name(&self) -> &str {
            "probe"
        }
        fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> {
            Ok(Box::new(Probe))
        }
    }

    #[async_trait]
    impl Filter for Probe {
        async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
            assert_eq!(req.header("X-A"), Some("1"));
            assert_eq!(req.header_values("x-a"), vec!["1", "2"]);
            req.add_header("x-a", "3");
            assert_eq!(req.header_values("x-a"), vec!["1", "2", "3"]);
            req.remove_header("x-a");
            assert_eq!(req.header("x-a"), None);
            assert!(req.header_values("x-a").is_empty());
            req.set_header("X-B", "b");
            assert_eq!(req.header("x-b"), Some("b"));
            assert_eq!(req.arg("flag"), Some(""));
            assert_eq!(
                req.args().iter().find(|(n, _)| *n == "flag"),
                Some(&("flag", None))
            );
            req.add_arg("q", "2");
            req.set_path("/new");
            assert_eq!(req.path(), "/new");
            Ok(())
        }
    }

    #[test]
    fn reads_see_writes_and_the_outcome_is_the_net_change() {
        let plugins = Registry::new().plugin(Probe);
        let chain = Chain::prepare(&plugins, [("probe", "{}")]).unwrap();
        let req = TestRequest::get("/old")
            .header("x-a", "1")
            .header("x-a", "2")
            .arg("q", Some("1"))
            .arg("flag", None);
        let (outcome, _) = futures::executor::block_on(req.run_chain(&chain)).unwrap();
        let crate::RequestOutcome::Rewrite(rw) = outcome else {
            panic!("{outcome:?}")
        };
        let s = |v: &str| v.to_string();
        assert_eq!(rw.path.as_deref(), Some("/new"));
        assert_eq!(rw.headers, vec![(s("x-a"), None), (s("x-b"), Some(s("b")))]);
        assert_eq!(
            rw.args,
            vec![(s("q"), Some(s("1"))), (s("q"), Some(s("2")))]
        );
    }

    #[test]
    fn reads_alone_are_no_change() {
        struct Reader;
        impl Plugin for Reader {
            fn name(&self) -> &str {
                "reader"
            }
            fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> {
                Ok(Box::new(Reader))
            }
        }
        #[async_trait]
        impl Filter for Reader {
            async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
                let _ = (
                    req.header("host"),
                    req.path(),
                    req.args().len(),
                    req.src_ip(),
                );
                let _ = req.body().await?;
                let _ = req.var("remote_addr").await?;
                Ok(())
            }
        }
        let plugins = Registry::new().plugin(Reader);
        let req = TestRequest::post("/")
            .header("host", "h")
            .body("x")
            .var("remote_addr", "1.2.3.4");
        let outcome = futures::executor::block_on(req.run(&plugins, &[("reader", "{}")])).unwrap();
        assert_eq!(outcome, crate::RequestOutcome::Continue);
    }
}
