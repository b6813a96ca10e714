//! Routes from etcd, as an APISIX cluster keeps them: one range read of
//! the prefix, then a watch from the next revision; every change makes a
//! new route table, swapped in through [`RouteSink::apply_routes`].
//!
//! When etcd cannot be reached or the watch breaks, the last table keeps
//! serving while this reconnects with backoff and resumes the watch from
//! the last revision seen; when that revision was compacted meanwhile, it
//! reads everything again. Before the first read succeeds, the proxy
//! serves no route and `/readyz` says why.

use super::apisix::Store;
use super::table::{RouteSink, RouteSource, RouteTable, Skipped};
use crate::host::config::{ConfigError, EtcdConf};
use crate::host::metrics;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions, WatchResponse};
use futures::FutureExt as _;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// The first wait before reconnecting; doubled at each failure in a row.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The routes of an etcd cluster (`"etcd"` in the configuration file).
#[derive(Debug, Clone)]
pub struct EtcdRoutes {
    /// The cluster and prefix.
    pub conf: EtcdConf,
}

#[async_trait::async_trait]
impl RouteSource for EtcdRoutes {
    fn describe(&self) -> String {
        format!(
            "etcd {} prefix {}",
            self.conf.endpoints.join(","),
            self.conf.prefix
        )
    }

    async fn load(&self) -> Result<RouteTable, ConfigError> {
        let fail = |e: String| ConfigError(format!("{}: {e}", self.describe()));
        let mut client = connect(&self.conf).await.map_err(fail)?;
        let (store, _) = read_all(&mut client, &self.conf).await.map_err(fail)?;
        Ok(store.table())
    }
}

/// etcd's client options: the connection's time limit, keep-alive pings
/// (a member that vanished without closing the connection is noticed),
/// and the user.
fn options(conf: &EtcdConf) -> ConnectOptions {
    let options = ConnectOptions::new()
        .with_connect_timeout(conf.timeout)
        .with_keep_alive(Duration::from_secs(5), conf.timeout)
        .with_keep_alive_while_idle(true);
    match &conf.auth {
        Some((user, password)) => options.with_user(user.clone(), password.clone()),
        None => options,
    }
}

/// Connects to the cluster, within `conf.timeout`.
async fn connect(conf: &EtcdConf) -> Result<Client, String> {
    match tokio::time::timeout(
        conf.timeout,
        Client::connect(&conf.endpoints, Some(options(conf))),
    )
    .await
    {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err(format!("cannot connect within {:?}", conf.timeout)),
    }
}

/// The key every object's key starts with: the prefix and a `/`.
fn key_prefix(conf: &EtcdConf) -> String {
    format!("{}/", conf.prefix)
}

/// Keys asked for in one range request: a page stays well under the gRPC
/// message limit however many objects there are.
const PAGE: i64 = 64;

/// The most watch responses already received that go into one new table.
const MAX_COALESCED: usize = 10_000;

/// The largest message taken from etcd: a page of [`PAGE`] values or one
/// watch response may hold values up to etcd's request limit (1.5 MiB by
/// default, more when raised), far above gRPC's default of 4 MiB.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// The key just past every key starting with `prefix` (etcd's range end
/// for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the key space.
    vec![0]
}

/// Reads every key under the prefix, as of one revision: the objects, and
/// that revision. Page by page (each page at the revision of the first),
/// so that many or large objects never make one message too large.
async fn read_all(client: &mut Client, conf: &EtcdConf) -> Result<(Store, i64), String> {
    let prefix = key_prefix(conf);
    let end = prefix_end(prefix.as_bytes());
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut store = Store::with_keyring(&conf.prefix, conf.keyring.clone());
    let mut from = prefix.clone().into_bytes();
    // 0: the newest revision; then the first page's, for every other page.
    let mut revision = 0;
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_revision(revision);
        let get = kv.get(from.clone(), Some(options));
        let resp = match tokio::time::timeout(conf.timeout, get).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(format!("cannot read {prefix}: {e}")),
            Err(_) => return Err(format!("cannot read {prefix} within {:?}", conf.timeout)),
        };
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            store.put(kv.key(), kv.value());
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                // The next page starts just after the last key read.
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((store, revision)),
        }
    }
}

/// The cluster's revision now, by a linearizable read (one key at most).
async fn cluster_revision(client: &mut Client, conf: &EtcdConf) -> Result<i64, String> {
    let options = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_limit(1);
    let get = client.get(key_prefix(conf), Some(options));
    match tokio::time::timeout(conf.timeout, get).await {
        Ok(Ok(resp)) => Ok(resp.header().map_or(0, |h| h.revision())),
        Ok(Err(e)) => Err(format!("cannot read etcd's revision: {e}")),
        Err(_) => Err(format!(
            "cannot read etcd's revision within {:?}",
            conf.timeout
        )),
    }
}

/// Follows the routes in etcd for `gateway` until `shutdown`: reads them,
/// applies them, watches, applies every change; reconnects with backoff.
pub async fn follow(conf: EtcdConf, gateway: Arc<dyn RouteSink>, shutdown: CancellationToken) {
    metrics::etcd_up(false);
    let mut follower = Follower {
        store: Store::with_keyring(&conf.prefix, conf.keyring.clone()),
        conf,
        gateway,
        revision: None,
        newest: 0,
        behind: None,
        reread: false,
        loaded: false,
        reported: BTreeSet::new(),
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        let ended = tokio::select! {
            ended = follower.session(&mut backoff) => ended,
            _ = shutdown.cancelled() => return,
        };
        metrics::etcd_up(false);
        let why = match ended {
            // The watch fell behind a compaction, or the cluster is behind
            // the revision applied (restored, new): read everything now;
            // again and again without a watch in between, with backoff.
            Ok(()) if !std::mem::replace(&mut follower.reread, true) => continue,
            Ok(()) => "everything was read again twice in a row without a watch".to_owned(),
            Err(why) => why,
        };
        if follower.loaded {
            warn!(retry_in = ?backoff, "etcd: {why}; the last routes keep serving");
        } else {
            warn!(retry_in = ?backoff, "etcd: {why}; no routes are served until the first load");
            follower
                .gateway
                .routes_pending(format!("the routes are not loaded from etcd yet: {why}"));
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The state kept across connections.
struct Follower {
    conf: EtcdConf,
    gateway: Arc<dyn RouteSink>,
    /// The objects as of `revision`.
    store: Store,
    /// The last revision applied; `None`: read everything at the next
    /// connection.
    revision: Option<i64>,
    /// The newest revision whose events were taken (what the table being
    /// published is at, for the log).
    newest: i64,
    /// The revision of the member watched when it answered the watch
    /// behind the revision applied (checked against the cluster's).
    behind: Option<i64>,
    /// Whether the last session ended asking for everything to be read
    /// again, with no watch since (a second time waits with backoff).
    reread: bool,
    /// Whether a table from etcd was applied once.
    loaded: bool,
    /// The objects skipped in the table being served: each is logged and
    /// counted once, when it appears.
    reported: BTreeSet<Skipped>,
}

impl Follower {
    /// One connection: reads everything (or resumes from the last
    /// revision), then applies the watch's changes until it breaks.
    /// `Ok(())`: the watch fell behind a compaction, or the cluster is
    /// behind the revision applied (read again at once);
    /// `Err`: why the connection ended.
    async fn session(&mut self, backoff: &mut Duration) -> Result<(), String> {
        self.behind = None;
        let mut client = connect(&self.conf).await?;
        let start = match self.revision {
            Some(revision) => revision + 1,
            None => {
                let (store, revision) = read_all(&mut client, &self.conf).await?;
                info!(
                    revision,
                    routes = store.route_count(),
                    "read the routes from etcd"
                );
                self.store = store;
                self.revision = Some(revision);
                self.newest = revision;
                self.publish().await;
                revision + 1
            }
        };
        let mut watcher = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let watch = watcher.watch(
            key_prefix(&self.conf),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start)
                    .with_progress_notify()
                    .with_fragment(),
            ),
        );
        let mut stream = match tokio::time::timeout(self.conf.timeout, watch).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("cannot watch: {e}")),
            Err(_) => return Err(format!("cannot watch within {:?}", self.conf.timeout)),
        };
        loop {
            let mut got = Some(stream.message().await);
            let mut changed = false;
            let mut ended = None;
            let mut taken = 0;
            while let Some(next) = got.take() {
                match self.absorb(next, start, backoff) {
                    Ok(c) => changed |= c,
                    Err(end) => {
                        ended = Some(end);
                        break;
                    }
                }
                // Every response already received goes into the same new
                // table: a storm of puts makes a few rebuilds, not one per
                // put, each of them over all the routes.
                taken += 1;
                if taken < MAX_COALESCED {
                    got = stream.message().now_or_never();
                }
            }
            // Published before the session ends too: the revision of
            // what was absorbed is recorded, so a resumed watch would not
            // send it again.
            if changed {
                self.publish().await;
            }
            if let Some(end) = ended {
                return end;
            }
            if let Some(member) = self.behind.take() {
                // A linearizable read answers with the cluster's revision.
                let cluster = cluster_revision(&mut client, &self.conf).await?;
                if cluster < start - 1 {
                    // Restored or new: a watch from there would miss every
                    // write until it caught up with the revision applied.
                    warn!(
                        applied = start - 1,
                        etcd = cluster,
                        "etcd's revision is behind the last one applied (restored or new cluster): reading all the routes again"
                    );
                    self.revision = None;
                    return Ok(());
                }
                // One member lagging: its watch sends the changes from
                // `start` once it catches up.
                info!(
                    from_revision = start,
                    member_revision = member,
                    cluster_revision = cluster,
                    "watching etcd (the member watched is catching up)"
                );
                metrics::etcd_up(true);
                *backoff = MIN_BACKOFF;
                self.reread = false;
            }
        }
    }

    /// Takes one watch response into the store. `Ok`: whether an object
    /// changed; `Err`: the session ends (as [`Follower::session`] says).
    fn absorb(
        &mut self,
        got: Result<Option<WatchResponse>, etcd_client::Error>,
        start: i64,
        backoff: &mut Duration,
    ) -> Result<bool, Result<(), String>> {
        let resp = match got {
            Ok(Some(resp)) => resp,
            Ok(None) => return Err(Err("etcd ended the watch".into())),
            Err(e) => return Err(Err(format!("the watch broke: {e}"))),
        };
        if resp.compact_revision() > 0 {
            warn!(
                from_revision = start,
                compacted_to = resp.compact_revision(),
                "the etcd watch was compacted past the last revision seen: reading all the routes again"
            );
            self.revision = None;
            return Err(Ok(()));
        }
        if resp.canceled() {
            return Err(Err(format!(
                "etcd cancelled the watch: {}",
                resp.cancel_reason()
            )));
        }
        if resp.created() {
            let now = resp.header().map_or(start - 1, |h| h.revision());
            if now < start - 1 {
                // Behind the revision applied: a cluster restored from a
                // backup, a new one, or only this member lagging behind
                // the others; the session asks the cluster which.
                self.behind = Some(now);
                return Ok(false);
            }
            metrics::etcd_up(true);
            *backoff = MIN_BACKOFF;
            self.reread = false;
            info!(from_revision = start, "watching etcd");
            return Ok(false);
        }
        let mut changed = false;
        let mut last = None;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            last = Some(kv.mod_revision());
            changed |= match event.event_type() {
                EventType::Put => self.store.put(kv.key(), kv.value()),
                EventType::Delete => self.store.delete(kv.key()),
            };
        }
        // A large revision (a transaction) may come in fragments: its
        // events are complete only with the next response, so the last
        // revision counts as seen only up to the one before it; a watch
        // resumed from there applies its events again (the same values).
        // A progress notification (no events) says every event up to its
        // header's revision was sent.
        if let Some(last) = last {
            self.newest = self.newest.max(last);
        }
        let seen = match last {
            Some(last) => Some(last - 1),
            None => resp.header().map(|h| h.revision()),
        };
        if let Some(revision) = seen {
            if self.revision.is_none_or(|r| revision > r) {
                self.revision = Some(revision);
            }
        }
        Ok(changed)
    }

    /// Makes the table of the objects held and swaps it in; logs and counts
    /// what was skipped anew.
    async fn publish(&mut self) {
        let table = self.store.table();
        let mut skipped: BTreeSet<Skipped> = table.skipped.into_iter().collect();
        self.gateway.apply_ssls(table.ssls);
        let offered = table.routes.len();
        let left_out = match self.gateway.apply_routes(table.routes).await {
            Ok(left_out) => left_out,
            Err(e) => {
                error!("the routes from etcd could not be applied; the previous ones keep serving: {e}");
                return;
            }
        };
        let served = offered - left_out.len();
        for l in left_out {
            skipped.insert(Skipped {
                key: self.store.route_key(&l.route),
                kind: l.kind,
                reason: l.reason,
            });
        }
        for s in skipped.difference(&self.reported) {
            warn!(key = %s.key, kind = s.kind.name(), "skipped from etcd: {}", s.reason);
            metrics::config_error(s.kind.name());
        }
        metrics::routes_skipped(skipped.len());
        info!(
            revision = self.newest,
            routes = served,
            skipped = skipped.len(),
            "routes from etcd applied"
        );
        self.reported = skipped;
        if !self.loaded {
            self.loaded = true;
            self.gateway.routes_loaded();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_range_end_of_a_prefix_is_the_next_key_after_all_of_it() {
        assert_eq!(prefix_end(b"/apisix/"), b"/apisix0");
        assert_eq!(prefix_end(b"/a\xff"), b"/b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
