//! Idle upstream HTTP/1 connections, kept by the proxy itself.
//!
//! Pingora's connection pool parks every idle connection with a watcher task and hands it
//! back through that task: taking one costs a task wake-up, which on a busy two-core machine
//! was the largest part of the proxy's added time to first token (p50 ~70 µs, p90 ~0.8 ms
//! measured with `cargo bench --bench load -- --only paced`). Here an idle connection is a
//! plain entry in a list: take and put are a lock and a push or pop.
//!
//! Nothing watches an idle connection, so one the upstream closed meanwhile is found out on
//! use; the exchange then retries once on a fresh connection before anything reached the
//! client (`chat.rs`). Entries older than `upstream.keepalive` are dropped when met, and the
//! pool holds at most `server.upstream_keepalive_pool_size` connections. HTTP/2 sessions
//! stay with Pingora's connector, which multiplexes them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pingora::protocols::Stream;

/// Idle connections by peer ([`pingora::upstreams::peer::Peer::reuse_hash`]); the most
/// recently used first out.
pub struct IdleConns {
    slots: Mutex<Slots>,
    max: usize,
}

#[derive(Default)]
struct Slots {
    by_peer: HashMap<u64, Vec<(Stream, Instant)>>,
    count: usize,
}

impl IdleConns {
    pub fn new(max: usize) -> IdleConns {
        IdleConns {
            slots: Mutex::new(Slots::default()),
            max,
        }
    }

    /// The most recently parked connection to `peer` that has been idle less than
    /// `max_idle`; older ones met on the way are closed.
    pub fn take(&self, peer: u64, max_idle: Duration) -> Option<Stream> {
        let mut stale = Vec::new();
        let found = {
            let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let Slots { by_peer, count } = &mut *s;
            let list = by_peer.get_mut(&peer)?;
            let mut found = None;
            while let Some((stream, at)) = list.pop() {
                *count -= 1;
                if at.elapsed() < max_idle {
                    found = Some(stream);
                    break;
                }
                stale.push(stream);
            }
            found
        };
        drop(stale); // closed outside the lock
        found
    }

    /// Park a connection whose exchange completed; closed instead when the pool is full.
    pub fn put(&self, peer: u64, stream: Stream) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if s.count >= self.max {
            drop(s);
            drop(stream);
            return;
        }
        s.count += 1;
        s.by_peer
            .entry(peer)
            .or_default()
            .push((stream, Instant::now()));
    }

    /// Connections parked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected loopback stream and its descriptor (what tells streams apart).
    async fn stream(listener: &tokio::net::TcpListener) -> (Stream, i32) {
        let addr = listener.local_addr().unwrap();
        let (c, _) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let s: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(c.unwrap()));
        let id = s.id();
        (s, id)
    }

    #[test]
    fn last_in_first_out_per_peer_expiry_and_bound() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let pool = IdleConns::new(3);
            let (a, pa) = stream(&l).await;
            let (b, pb) = stream(&l).await;
            let (c, pc) = stream(&l).await;
            pool.put(1, a);
            pool.put(1, b);
            pool.put(2, c);
            assert_eq!(pool.len(), 3);
            // Full: a fourth is closed, not kept.
            let (d, _) = stream(&l).await;
            pool.put(1, d);
            assert_eq!(pool.len(), 3);
            let long = Duration::from_secs(60);
            assert!(pool.take(9, long).is_none(), "unknown peer");
            assert_eq!(pool.take(1, long).unwrap().id(), pb, "newest first");
            assert_eq!(pool.take(2, long).unwrap().id(), pc);
            assert_eq!(pool.len(), 1);
            // Idle longer than allowed: closed and not handed out.
            std::thread::sleep(Duration::from_millis(20));
            assert!(pool.take(1, Duration::from_millis(10)).is_none());
            assert_eq!(pool.len(), 0);
            let _ = pa;
        });
    }
}
