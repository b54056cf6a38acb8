//! The open HTTP connections and what each is doing, so that stalled ones are closed in time and,
//! at `http.max_connections`, the connection least likely to be a working client makes room.
//!
//! A connection is in one phase at a time:
//!
//! | phase | from | bound |
//! |---|---|---|
//! | `Head` | accept, or the first byte after `Idle` | `http.header_timeout_secs` |
//! | `Busy` | request head complete, handler running | none here (the body read is bounded by `http.body_timeout_secs` in the handler) |
//! | `Idle` | answer handed to hyper, waiting for the next request | `http.idle_timeout_secs` |
//!
//! A sweep closes connections past their bound; [`ConnTable::admit`] evicts when full. Neither
//! touches a `Busy` connection: that would cut off an answer the client is owed. The table
//! only decides; the connection's own task closes the socket when told (see `server.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::metrics::METRICS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Head = 0,
    Busy = 1,
    Idle = 2,
}

/// Why the server closed a connection (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    HeaderTimeout,
    IdleTimeout,
    /// Made room for a new connection at the cap.
    Evicted,
    /// At the cap with every connection busy: the new connection was closed at once.
    Refused,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::Evicted => "evicted",
            Closed::Refused => "refused",
        }
    }
}

fn count(reason: Closed) {
    METRICS
        .http_connections_closed
        .with_label_values(&[reason.label()])
        .inc();
}

/// One connection's phase and since when, shared by its I/O, its service and the table.
pub(crate) struct ConnState {
    epoch: Instant,
    /// `millis since epoch << 2 | phase`: one atomic, so a sweep never sees a torn pair.
    packed: AtomicU64,
    close: Notify,
}

impl ConnState {
    fn new(epoch: Instant, now: Instant) -> Self {
        let state = ConnState {
            epoch,
            packed: AtomicU64::new(0),
            close: Notify::new(),
        };
        state.set(Phase::Head, now);
        state
    }

    pub(crate) fn set(&self, phase: Phase, now: Instant) {
        let millis = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.packed
            .store(millis << 2 | phase as u64, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> (Phase, Instant) {
        let packed = self.packed.load(Ordering::Relaxed);
        let phase = match packed & 3 {
            0 => Phase::Head,
            1 => Phase::Busy,
            _ => Phase::Idle,
        };
        (phase, self.epoch + Duration::from_millis(packed >> 2))
    }

    /// Bytes arrived: on an idle connection that is the start of the next request head.
    pub(crate) fn on_read(&self) {
        if self.get().0 == Phase::Idle {
            self.set(Phase::Head, Instant::now());
        }
    }

    /// Resolves once the table has decided to close this connection.
    pub(crate) async fn closed(&self) {
        self.close.notified().await
    }
}

/// Whether a connection in `phase` since `since` has outstayed its bound at `now`.
pub(crate) fn expired(
    phase: Phase,
    since: Instant,
    now: Instant,
    header: Duration,
    idle: Duration,
) -> Option<Closed> {
    let waited = now.saturating_duration_since(since);
    match phase {
        Phase::Head if waited >= header => Some(Closed::HeaderTimeout),
        Phase::Idle if waited >= idle => Some(Closed::IdleTimeout),
        _ => None,
    }
}

/// Which connection gives way at the cap: the longest-stalled unfinished head (the slowloris
/// signature; a working client sends its head in one go), else the longest-idle kept-alive
/// connection (its client just reconnects). Busy connections are never chosen.
pub(crate) fn victim(conns: impl Iterator<Item = (u64, Phase, Instant)>) -> Option<u64> {
    conns
        .filter(|(_, phase, _)| *phase != Phase::Busy)
        .min_by_key(|(_, phase, since)| (*phase != Phase::Head, *since))
        .map(|(id, _, _)| id)
}

pub(crate) struct ConnTable {
    epoch: Instant,
    max: usize,
    header: Duration,
    idle: Duration,
    open: Mutex<Open>,
}

struct Open {
    next_id: u64,
    conns: HashMap<u64, Arc<ConnState>>,
}

impl ConnTable {
    pub(crate) fn new(max: usize, header: Duration, idle: Duration) -> Arc<Self> {
        Arc::new(ConnTable {
            epoch: Instant::now(),
            max,
            header,
            idle,
            open: Mutex::new(Open {
                next_id: 0,
                conns: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Every update leaves the map consistent; a panic elsewhere cannot poison its meaning.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a new connection, evicting one if the table is full; `None` when every open
    /// connection is busy (the caller closes the new one at once).
    pub(crate) fn admit(self: &Arc<Self>, now: Instant) -> Option<Conn> {
        let mut open = self.lock();
        if open.conns.len() >= self.max {
            let id = victim(open.conns.iter().map(|(id, c)| {
                let (phase, since) = c.get();
                (*id, phase, since)
            }));
            let Some(id) = id else {
                count(Closed::Refused);
                return None;
            };
            close(&mut open, id, Closed::Evicted);
        }
        let id = open.next_id;
        open.next_id += 1;
        let state = Arc::new(ConnState::new(self.epoch, now));
        open.conns.insert(id, state.clone());
        METRICS.http_connections.inc();
        Some(Conn {
            id,
            state,
            table: self.clone(),
        })
    }

    /// Closes every connection past its bound.
    pub(crate) fn sweep(&self, now: Instant) {
        let mut open = self.lock();
        let due: Vec<(u64, Closed)> = open
            .conns
            .iter()
            .filter_map(|(id, c)| {
                let (phase, since) = c.get();
                expired(phase, since, now, self.header, self.idle).map(|why| (*id, why))
            })
            .collect();
        for (id, why) in due {
            close(&mut open, id, why);
        }
    }
}

/// Forgets `id` and tells its task to close the socket.
fn close(open: &mut Open, id: u64, why: Closed) {
    if let Some(c) = forget(open, id) {
        count(why);
        c.close.notify_one();
    }
}

fn forget(open: &mut Open, id: u64) -> Option<Arc<ConnState>> {
    let c = open.conns.remove(&id)?;
    METRICS.http_connections.dec();
    Some(c)
}

/// A connection's place in the table, given up when the connection ends.
pub(crate) struct Conn {
    id: u64,
    pub(crate) state: Arc<ConnState>,
    table: Arc<ConnTable>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        forget(&mut self.table.lock(), self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn each_phase_has_its_own_bound() {
        let t0 = Instant::now();
        let (header, idle) = (10 * S, 60 * S);
        assert_eq!(expired(Phase::Head, t0, t0 + 9 * S, header, idle), None);
        assert_eq!(
            expired(Phase::Head, t0, t0 + 10 * S, header, idle),
            Some(Closed::HeaderTimeout)
        );
        assert_eq!(expired(Phase::Idle, t0, t0 + 59 * S, header, idle), None);
        assert_eq!(
            expired(Phase::Idle, t0, t0 + 60 * S, header, idle),
            Some(Closed::IdleTimeout)
        );
        assert_eq!(expired(Phase::Busy, t0, t0 + 3600 * S, header, idle), None);
    }

    #[test]
    fn the_oldest_stalled_head_gives_way_first_then_the_oldest_idle_never_a_busy_one() {
        let t0 = Instant::now();
        let conns = [
            (1, Phase::Busy, t0),
            (2, Phase::Idle, t0 + S),
            (3, Phase::Head, t0 + 3 * S),
            (4, Phase::Head, t0 + 2 * S),
        ];
        assert_eq!(victim(conns.into_iter()), Some(4));
        assert_eq!(victim(conns[..2].iter().copied()), Some(2));
        assert_eq!(victim(conns[..1].iter().copied()), None);
    }

    #[test]
    fn phase_and_time_survive_packing_and_idle_turns_into_head_on_bytes() {
        let t0 = Instant::now();
        let s = ConnState::new(t0, t0 + 5 * S);
        assert_eq!(s.get(), (Phase::Head, t0 + 5 * S));
        s.set(Phase::Busy, t0 + 6 * S);
        s.on_read();
        assert_eq!(
            s.get(),
            (Phase::Busy, t0 + 6 * S),
            "body bytes of a busy request"
        );
        s.set(Phase::Idle, t0 + 7 * S);
        assert_eq!(s.get(), (Phase::Idle, t0 + 7 * S));
        s.on_read();
        assert_eq!(s.get().0, Phase::Head);
    }

    #[test]
    fn a_full_table_evicts_or_refuses_and_forgets_ended_connections() {
        let table = ConnTable::new(2, 10 * S, 60 * S);
        let t0 = Instant::now();
        let a = table.admit(t0).unwrap();
        let b = table.admit(t0 + S).unwrap();
        b.state.set(Phase::Busy, t0 + S);
        // Full: `a` (a stalled head) gives way.
        let c = table.admit(t0 + 2 * S).unwrap();
        assert_eq!(table.lock().conns.len(), 2);
        assert!(!table.lock().conns.contains_key(&a.id));
        c.state.set(Phase::Busy, t0 + 2 * S);
        // Full of busy connections: refused.
        assert!(table.admit(t0 + 3 * S).is_none());
        drop(c);
        assert!(table.admit(t0 + 4 * S).is_some());
        drop(a);
        assert_eq!(table.lock().conns.len(), 1, "only b is left");
    }

    #[test]
    fn sweep_closes_what_is_past_its_bound() {
        let table = ConnTable::new(8, 10 * S, 60 * S);
        let t0 = Instant::now();
        let head = table.admit(t0).unwrap();
        let idle = table.admit(t0).unwrap();
        idle.state.set(Phase::Idle, t0);
        table.sweep(t0 + 11 * S);
        let open = table.lock();
        assert!(!open.conns.contains_key(&head.id));
        assert!(open.conns.contains_key(&idle.id));
    }
}
