//! Deliveries encoded but held until the store has recorded their packet
//! ids: a QoS 2 PUBLISH to a persistent session must not reach the client
//! before its id is on disk (see `Session::record_sent`). Held batches leave
//! in order, and once one is held every later batch waits behind it, so
//! deliveries keep their order; acknowledgements do not wait. The session
//! keeps running meanwhile, so the client's PUBRECs and PUBCOMPs of many
//! batches share one fsync.

use std::collections::VecDeque;

use bytes::BytesMut;
use tokio::sync::oneshot::{self, error::TryRecvError};

use crate::types::Routed;

#[derive(Debug, Default)]
pub struct GatedOut {
    queue: VecDeque<Gated>,
}

#[derive(Debug)]
struct Gated {
    bytes: BytesMut,
    /// `None`: free to go once it is at the front.
    released: Option<oneshot::Receiver<Routed>>,
}

impl GatedOut {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Holds `bytes` behind what is held already, until `released`
    /// resolves (if given).
    pub fn push(&mut self, bytes: BytesMut, released: Option<oneshot::Receiver<Routed>>) {
        if !bytes.is_empty() || released.is_some() {
            self.queue.push_back(Gated { bytes, released });
        }
    }

    /// Resolves when the front batch may go; never when nothing is held.
    /// Cancel-safe: a resolved receiver is dropped, never polled again.
    pub async fn front_released(&mut self) {
        match self.queue.front_mut() {
            Some(Gated {
                released: Some(released),
                ..
            }) => {
                let _ = released.await;
                if let Some(front) = self.queue.front_mut() {
                    front.released = None;
                }
            }
            Some(_) => {}
            None => std::future::pending().await,
        }
    }

    /// Appends to `out`, in order, every batch at the front that may go.
    pub fn pop_released(&mut self, out: &mut BytesMut) {
        while let Some(front) = self.queue.front_mut() {
            if let Some(released) = front.released.as_mut() {
                match released.try_recv() {
                    Err(TryRecvError::Empty) => return,
                    Ok(_) | Err(TryRecvError::Closed) => front.released = None,
                }
            }
            if let Some(front) = self.queue.pop_front() {
                out.extend_from_slice(&front.bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Receipt;

    #[test]
    fn held_batches_leave_in_order_once_their_gate_opens() {
        let mut gated = GatedOut::default();
        let (first, first_rx) = Receipt::new();
        gated.push(BytesMut::from(&b"a"[..]), Some(first_rx));
        gated.push(BytesMut::from(&b"b"[..]), None);
        let mut out = BytesMut::new();
        gated.pop_released(&mut out);
        assert!(out.is_empty(), "b waits behind a");
        drop(first);
        gated.pop_released(&mut out);
        assert_eq!(&out[..], b"ab");
        assert!(gated.is_empty());
    }
}
