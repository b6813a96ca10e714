//! The token cache: one entry per route phase's chain ([`PhaseSlot`]),
//! holding the runner's token for it ([`Ticket`]) or its refusal, each for
//! the runner generation that gave it.

use super::error::CallError;
use crate::wire::Needs;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// What the host knows about a prepared chain.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The conf token.
    pub token: u32,
    /// What the chain will read (sent with every call).
    pub needs: Arc<Needs>,
    /// The runner generation that issued it.
    pub(super) generation: u64,
    /// When it is prepared again rather than used (before the runner
    /// forgets it).
    pub(super) expires: Instant,
}

impl Ticket {
    /// The runner generation that issued the token: the token means nothing
    /// to any other.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// One route phase's cached token (or the runner's refusal of its chain,
/// with the runner generation that refused), and a lock that makes
/// concurrent requests share one PREPARE_CONF.
///
/// The ticket is read by every call and written once per PREPARE_CONF:
/// an `ArcSwapOption`, so that reading takes no lock that calls on other
/// threads contend for.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) ticket: arc_swap::ArcSwapOption<Ticket>,
    pub(super) refused: Mutex<Option<(u64, String)>>,
    pub(super) preparing: tokio::sync::Mutex<()>,
}

/// A route phase's entry in a client's token cache, looked up once (when
/// the proxy is built, [`ExtClient::phase_slot`](super::ExtClient::phase_slot)) rather than by name on
/// every call. Entries are kept for the client's life, so a proxy rebuilt
/// by a reload finds the tokens its routes' phases already had.
#[derive(Clone)]
pub struct PhaseSlot(pub(super) Arc<Slot>);

/// The cache: every route phase's entry, by chain key.
pub(super) struct Tokens {
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    /// How long a token is used before the chain is prepared again.
    pub(super) lifetime: Duration,
}

impl Tokens {
    /// An empty cache whose tokens live `lifetime`.
    pub(super) fn new(lifetime: Duration) -> Tokens {
        Tokens {
            slots: RwLock::default(),
            lifetime,
        }
    }

    /// The entry of `key` (a route phase's chain key), made on first use.
    pub(super) fn slot(&self, key: &str) -> Arc<Slot> {
        if let Some(slot) = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return slot.clone();
        }
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// The cached ticket, if it is for the running runner (`current`: its
    /// generation, when one is ready) and not too old.
    pub(super) fn valid(slot: &Slot, current: Option<u64>) -> Option<Ticket> {
        let guard = slot.ticket.load();
        let ticket = guard.as_deref()?;
        let current = current?;
        (ticket.generation == current && Instant::now() < ticket.expires).then(|| ticket.clone())
    }

    /// The current runner's refusal of the slot's chain (`current`: its
    /// generation), if it refused it.
    pub(super) fn refusal(slot: &Slot, current: Option<u64>) -> Option<CallError> {
        let refused = slot.refused.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, message) = refused.as_ref()?;
        (current == Some(*generation)).then(|| CallError::ChainRefused(message.clone()))
    }

    /// Drops the token-cache entries that no route phase holds any more
    /// (only the cache refers to them): the chains of routes that a reload
    /// or an etcd change removed or changed. Without this the cache would
    /// grow with every distinct chain a long-lived host has ever served (a
    /// route that flaps in etcd makes a new chain key each time). Returns
    /// how many entries were dropped.
    pub(super) fn prune(&self) -> usize {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let before = slots.len();
        slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        before - slots.len()
    }

    /// Drops every cached token, as PROTOCOL.md asks on `confTokenNotFound`:
    /// a runner that lost one token (restarted behind our back, or expired
    /// it) has most likely lost them all. At worst a chain is prepared once
    /// more than needed.
    pub(super) fn forget_all(&self) {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        for slot in slots.values() {
            slot.ticket.store(None);
        }
    }
}
