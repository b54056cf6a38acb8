//! IQs pushgate sent and is waiting to hear back about (UnifiedPush pushes to a distributor):
//! an answer the stream reads is handed to whoever waits for its id.
//!
//! Bounded: at most [`MAX_PENDING`] at once (beyond, a sender is told to try later rather than
//! the map growing with a slow or silent peer), and an answer counts only if it comes from the
//! JID the request went to, so nobody else can answer for a distributor.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::stanza_error::DefinedCondition;

/// Most requests waiting for an answer at once.
pub const MAX_PENDING: usize = 10_000;

/// What the peer answered: `result`, or an error's condition.
pub type IqAnswer = Result<(), DefinedCondition>;

#[derive(Default)]
pub struct PendingIqs {
    waiting: Mutex<HashMap<String, (Jid, oneshot::Sender<IqAnswer>)>>,
}

/// A request's place in the map; dropping it (answered, timed out or abandoned) frees it.
pub struct Waiting<'a> {
    pending: &'a PendingIqs,
    id: String,
    pub answer: oneshot::Receiver<IqAnswer>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

impl PendingIqs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Jid, oneshot::Sender<IqAnswer>)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the answer to request `id` sent to `to`; `None` when too many wait already.
    pub fn wait(&self, id: String, to: Jid) -> Option<Waiting<'_>> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        if waiting.len() >= MAX_PENDING {
            return None;
        }
        waiting.insert(id.clone(), (to, tx));
        Some(Waiting {
            pending: self,
            id,
            answer: rx,
        })
    }

    /// Hands an answer from `from` to its waiter; whether one waited for it.
    pub fn answer(&self, id: &str, from: Option<&Jid>, answer: IqAnswer) -> bool {
        let mut waiting = self.lock();
        match waiting.get(id) {
            Some((to, _)) if Some(to) == from => {}
            _ => return false,
        }
        match waiting.remove(id) {
            Some((_, tx)) => tx.send(answer).is_ok(),
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_addressee_answers_and_a_dropped_wait_frees_its_place() {
        let pending = PendingIqs::default();
        let to: Jid = "user@example.org/phone".parse().unwrap();
        let other: Jid = "mallory@example.org/x".parse().unwrap();
        let mut w = pending.wait("a".into(), to.clone()).unwrap();
        assert!(!pending.answer("a", Some(&other), Ok(())));
        assert!(!pending.answer("a", None, Ok(())));
        assert!(pending.answer("a", Some(&to), Err(DefinedCondition::ItemNotFound)));
        assert_eq!(
            (&mut w.answer).await.unwrap(),
            Err(DefinedCondition::ItemNotFound)
        );
        let w = pending.wait("b".into(), to.clone()).unwrap();
        assert_eq!(pending.len(), 1);
        drop(w);
        assert!(pending.is_empty());
        assert!(!pending.answer("b", Some(&to), Ok(())));
    }
}
