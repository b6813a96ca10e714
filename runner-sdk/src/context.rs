//! A per-request context: a value a filter keeps in the request phase and
//! takes back in the response phase of the same request.

use crate::{PluginError, Request, Response};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The variable that names a request in both of its phases: the gateway's
/// unique id of the request (extplug: 32 hex digits; APISIX: its
/// `$request_id`). The protocol's call ids ([`Request::id`],
/// [`Response::id`]) name calls, not requests: the request call and the
/// response call of one request have different ids.
pub const REQUEST_ID_VAR: &str = "request_id";

/// Values kept from the request phase to the response phase of the same
/// request, keyed by the gateway's request id ([`REQUEST_ID_VAR`]).
///
/// The request phase (`ext-plugin-pre-req`) and the response phase
/// (`ext-plugin-post-resp`) are two configurations of a route, so two
/// chains, with filters of their own: keep the store in the [`Plugin`],
/// behind an [`Arc`](std::sync::Arc), and give each filter it configures a
/// clone. [`put`] a value in [`Filter::request`] and [`take`] it in
/// [`Filter::response`]; taking it removes it. A value that is never taken
/// (the request was answered by a stop, the upstream failed, the route has
/// no response phase for this plugin) is dropped after `ttl`, or when the
/// store is full (the oldest first): the store holds at most `capacity`
/// values.
///
/// Declare [`REQUEST_ID_VAR`] in [`Filter::needs`] so that the gateway sends
/// it with each call instead of being asked for it (one round trip less).
///
/// [`put`]: RequestContext::put
/// [`take`]: RequestContext::take
/// [`Plugin`]: crate::Plugin
/// [`Filter::request`]: crate::Filter::request
/// [`Filter::response`]: crate::Filter::response
/// [`Filter::needs`]: crate::Filter::needs
///
/// ```
/// use runner_sdk::context::{RequestContext, REQUEST_ID_VAR};
/// use runner_sdk::{async_trait, ConfError, Filter, Needs, Plugin, PluginError, Request, Response};
/// use std::sync::Arc;
/// use std::time::{Duration, Instant};
///
/// /// `timing`: adds `x-upstream-ms` to the answer, the time from the
/// /// request phase to the response phase.
/// struct Timing {
///     started: Arc<RequestContext<Instant>>,
/// }
///
/// impl Plugin for Timing {
///     fn name(&self) -> &str {
///         "timing"
///     }
///     fn configure(&self, _conf: &str) -> Result<Box<dyn Filter>, ConfError> {
///         Ok(Box::new(TimingFilter { started: self.started.clone() }))
///     }
/// }
///
/// struct TimingFilter {
///     started: Arc<RequestContext<Instant>>,
/// }
///
/// #[async_trait]
/// impl Filter for TimingFilter {
///     fn needs(&self) -> Needs {
///         Needs { vars: vec![REQUEST_ID_VAR.to_string()], ..Needs::default() }
///     }
///
///     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
///         self.started.put(req, Instant::now()).await
///     }
///
///     async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
///         if let Some(started) = self.started.take(resp).await? {
///             resp.set_header("x-upstream-ms", started.elapsed().as_millis() as u64);
///         }
///         Ok(())
///     }
/// }
///
/// // In `main`: 10,000 requests in flight at most, none longer than a minute.
/// let timing = Timing { started: Arc::new(RequestContext::new(10_000, Duration::from_secs(60))) };
///
/// // In a test: the two phases of one request, each its own chain.
/// use runner_sdk::testing::{TestRequest, TestResponse};
/// use runner_sdk::{Chain, Registry};
/// # futures::executor::block_on(async {
/// let plugins = Registry::new().plugin(timing);
/// let pre_req = Chain::prepare(&plugins, [("timing", "{}")]).unwrap();
/// let post_resp = Chain::prepare(&plugins, [("timing", "{}")]).unwrap();
/// TestRequest::get("/").var("request_id", "0af3").run_chain(&pre_req).await.unwrap();
/// let (outcome, _) = TestResponse::new(200).var("request_id", "0af3").run_chain(&post_resp).await.unwrap();
/// assert!(outcome.headers.unwrap().iter().any(|(name, _)| name == "x-upstream-ms"));
/// // Taken: a second answer for the same id finds nothing.
/// let (outcome, _) = TestResponse::new(200).var("request_id", "0af3").run_chain(&post_resp).await.unwrap();
/// assert_eq!(outcome.headers, None);
/// # });
/// ```
pub struct RequestContext<T> {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner<T>>,
}

/// The values by request id, and their order of insertion (for expiry and
/// for dropping the oldest when full).
struct Inner<T> {
    values: HashMap<String, (u64, Instant, T)>,
    order: BTreeMap<u64, String>,
    next: u64,
}

impl<T> std::fmt::Debug for RequestContext<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .finish()
    }
}

impl<T> RequestContext<T> {
    /// An empty store that keeps at most `capacity` values (at least 1),
    /// each for at most `ttl` after it was put.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        RequestContext {
            capacity: capacity.max(1),
            ttl,
            inner: Mutex::new(Inner {
                values: HashMap::new(),
                order: BTreeMap::new(),
                next: 0,
            }),
        }
    }

    /// Keeps `value` for the request `req` (its [`REQUEST_ID_VAR`]),
    /// replacing a value kept for it before.
    ///
    /// # Errors
    /// The gateway sent no request id (or asking for it failed).
    pub async fn put(&self, req: &mut Request<'_>, value: T) -> Result<(), PluginError> {
        let id = req
            .var_str(REQUEST_ID_VAR)
            .await?
            .ok_or("the gateway sent no `request_id`")?;
        self.insert(id, value);
        Ok(())
    }

    /// Takes (removes) the value kept for the request this response answers;
    /// `None` when none was kept, or it expired or was dropped.
    ///
    /// # Errors
    /// The gateway sent no request id, or one that is not UTF-8 (or asking
    /// for it failed).
    pub async fn take(&self, resp: &mut Response<'_>) -> Result<Option<T>, PluginError> {
        let id = resp
            .var(REQUEST_ID_VAR)
            .await?
            .ok_or("the gateway sent no `request_id`")?;
        let id = std::str::from_utf8(id).map_err(|_| "the gateway's `request_id` is not UTF-8")?;
        Ok(self.remove(id))
    }

    /// Keeps `value` under `request_id` (what [`RequestContext::put`] does
    /// with the request's id), replacing one kept under it before. Expired
    /// values are dropped first; when the store is still full, the oldest.
    ///
    /// ```
    /// use runner_sdk::context::RequestContext;
    /// use std::time::Duration;
    ///
    /// let store = RequestContext::new(2, Duration::from_secs(60));
    /// store.insert("a", 1);
    /// store.insert("b", 2);
    /// store.insert("c", 3); // full: "a", the oldest, is dropped
    /// assert_eq!((store.remove("a"), store.remove("b")), (None, Some(2)));
    /// assert_eq!(store.remove("b"), None); // taken once
    /// assert_eq!(store.len(), 1);
    /// ```
    pub fn insert(&self, request_id: impl Into<String>, value: T) {
        let now = Instant::now();
        let mut inner = self.lock();
        let id = request_id.into();
        if let Some((seq, _, _)) = inner.values.remove(&id) {
            inner.order.remove(&seq);
        }
        while let Some((&seq, oldest)) = inner.order.first_key_value() {
            let expired = inner
                .values
                .get(oldest)
                .is_none_or(|(_, at, _)| now.duration_since(*at) >= self.ttl);
            if !expired && inner.values.len() < self.capacity {
                break;
            }
            let oldest = oldest.clone();
            inner.order.remove(&seq);
            inner.values.remove(&oldest);
        }
        let seq = inner.next;
        inner.next += 1;
        inner.order.insert(seq, id.clone());
        inner.values.insert(id, (seq, now, value));
    }

    /// Removes and returns the value kept under `request_id` (what
    /// [`RequestContext::take`] does with the response's request id);
    /// `None` when there is none, or it is older than the store's `ttl`.
    pub fn remove(&self, request_id: &str) -> Option<T> {
        let mut inner = self.lock();
        let (seq, at, value) = inner.values.remove(request_id)?;
        inner.order.remove(&seq);
        (at.elapsed() < self.ttl).then_some(value)
    }

    /// How many values are kept (expired ones included until the next
    /// [`RequestContext::insert`] drops them).
    pub fn len(&self) -> usize {
        self.lock().values.len()
    }

    /// True when no value is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters: at worst an order entry without its value,
        // which `insert` skips.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_taken_once_and_replaced_by_a_later_put() {
        let store = RequestContext::new(10, Duration::from_secs(60));
        assert!(store.is_empty());
        store.insert("a", 1);
        store.insert("a", 2);
        assert_eq!(store.len(), 1);
        assert_eq!(store.remove("a"), Some(2));
        assert_eq!(store.remove("a"), None);
        assert!(store.is_empty());
    }

    #[test]
    fn an_expired_value_is_not_returned_and_is_dropped_by_the_next_insert() {
        let store = RequestContext::new(10, Duration::ZERO);
        store.insert("a", 1);
        assert_eq!(store.remove("a"), None);
        store.insert("b", 2);
        store.insert("c", 3);
        assert_eq!(store.len(), 1, "b expired when c came");
    }

    #[test]
    fn the_store_never_holds_more_than_its_capacity() {
        let store = RequestContext::new(3, Duration::from_secs(60));
        for i in 0..100 {
            store.insert(i.to_string(), i);
            if i % 2 == 0 {
                store.remove(&i.to_string());
            }
        }
        assert_eq!(store.len(), 3);
        // The newest odd ones are kept.
        assert_eq!(store.remove("99"), Some(99));
        assert_eq!(store.remove("97"), Some(97));
        assert_eq!(store.remove("95"), Some(95));
        assert_eq!(store.remove("93"), None);
        let inner = store.lock();
        assert!(inner.order.is_empty(), "no order entry outlives its value");
    }

    #[test]
    fn a_capacity_of_zero_keeps_one() {
        let store = RequestContext::new(0, Duration::from_secs(60));
        store.insert("a", 1);
        store.insert("b", 2);
        assert_eq!((store.remove("a"), store.remove("b")), (None, Some(2)));
    }
}

#[cfg(test)]
mod phase_tests {
    use super::*;
    use crate::testing::{TestRequest, TestResponse};
    use crate::{async_trait, Chain, ConfError, Filter, Plugin, Registry};
    use std::sync::Arc;

    /// Keeps the request's path; adds it to the answer as `x-path`.
    struct Keep(Arc<RequestContext<String>>);

    impl Plugin for Keep {
        fn name(&self) -> &str {
            "keep"
        }
        fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> {
            Ok(Box::new(Keep(self.0.clone())))
        }
    }

    #[async_trait]
    impl Filter for Keep {
        async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
            let path = req.path().to_owned();
            self.0.put(req, path).await
        }
        async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
            if let Some(path) = self.0.take(resp).await? {
                resp.set_header("x-path", path);
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn two_requests_in_flight_each_get_their_own_value_in_their_response() {
        let store = Arc::new(RequestContext::new(100, Duration::from_secs(60)));
        let plugins = Registry::new().plugin(Keep(store.clone()));
        let pre = Chain::prepare(&plugins, [("keep", "")]).unwrap();
        let post = Chain::prepare(&plugins, [("keep", "")]).unwrap();
        for (id, path) in [("1", "/one"), ("2", "/two")] {
            let req = TestRequest::get(path).var(REQUEST_ID_VAR, id);
            req.run_chain(&pre).await.unwrap();
        }
        assert_eq!(store.len(), 2);
        for (id, path) in [("2", "/two"), ("1", "/one")] {
            let (outcome, _) = TestResponse::new(200)
                .var(REQUEST_ID_VAR, id)
                .run_chain(&post)
                .await
                .unwrap();
            let headers = outcome.headers.unwrap();
            assert_eq!(headers, vec![("x-path".to_string(), path.to_string())]);
        }
        assert!(store.is_empty(), "dropped after the response phase");
    }

    #[tokio::test]
    async fn without_a_request_id_the_call_fails_naming_the_plugin() {
        let store = Arc::new(RequestContext::new(100, Duration::from_secs(60)));
        let plugins = Registry::new().plugin(Keep(store));
        let conf = [("keep", "")];
        let in_request = TestRequest::get("/").run(&plugins, &conf).await;
        let in_response = TestResponse::new(200).run(&plugins, &conf).await;
        for err in [in_request.unwrap_err(), in_response.unwrap_err()] {
            let message = "plugin `keep` failed: the gateway sent no `request_id`";
            assert_eq!(err.to_string(), message);
        }
    }
}
