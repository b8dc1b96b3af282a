//! Idle upstream HTTP/1 connections, kept by the proxy itself.
//!
//! Pingora's connection pool parks every idle connection with a watcher task and hands it
//! back through that task: taking one costs a task wake-up, which on a busy two-core machine
//! was the largest part of the proxy's added time to first token (p50 ~70 µs, p90 ~0.8 ms
//! measured with `cargo bench --bench load -- --only paced`). Here an idle connection is a
//! plain entry in a list: take and put are a lock and a push or pop.
//!
//! Each connection remembers its [`Home`], the worker thread that opened it. Without work
//! stealing every worker thread runs a runtime of its own, and a socket stays registered
//! with the runtime it was opened on: used from another thread, each of its reads wakes the
//! home thread first, which then wakes the user (an eventfd write and a second wake-up per
//! read). So a request takes a connection opened on its own thread when there is one, and
//! another thread's only when that saves a new connection.
//!
//! Nothing watches an idle connection, so one the upstream closed meanwhile is found out on
//! use; the exchange then retries once on a fresh connection before anything reached the
//! client (`attempt.rs`). Entries older than `upstream.keepalive` are closed by the next take
//! for their peer, and the pool holds at most `server.upstream_keepalive_pool_size`
//! connections. HTTP/2 sessions stay with Pingora's connector, which multiplexes them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pingora::protocols::Stream;

/// The worker thread an upstream connection was opened on (whose runtime its socket is
/// registered with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Home(u32);

impl Home {
    /// The calling thread's.
    pub fn here() -> Home {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        thread_local! {
            static HERE: u32 = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        Home(HERE.with(|h| *h))
    }
}

/// Idle connections by peer ([`pingora::upstreams::peer::Peer::reuse_hash`]); the most
/// recently used first out.
pub struct IdleConns {
    slots: Mutex<Slots>,
    max: usize,
}

struct Idle {
    stream: Stream,
    since: Instant,
    home: Home,
}

#[derive(Default)]
struct Slots {
    /// Per peer, oldest first.
    by_peer: HashMap<u64, Vec<Idle>>,
    count: usize,
}

impl IdleConns {
    pub fn new(max: usize) -> IdleConns {
        IdleConns {
            slots: Mutex::new(Slots::default()),
            max,
        }
    }

    /// The most recently parked connection to `peer` opened on `here`'s thread, else the
    /// most recently parked one from any thread, with its home; connections idle for
    /// `max_idle` or longer are closed on the way.
    pub fn take(&self, peer: u64, max_idle: Duration, here: Home) -> Option<(Stream, Home)> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let Slots { by_peer, count } = &mut *s;
            let list = by_peer.get_mut(&peer)?;
            let fresh = list
                .iter()
                .position(|c| now.saturating_duration_since(c.since) < max_idle)
                .unwrap_or(list.len());
            stale.extend(list.drain(..fresh));
            *count -= stale.len();
            let pick = list
                .iter()
                .rposition(|c| c.home == here)
                .or_else(|| list.len().checked_sub(1));
            pick.map(|i| {
                *count -= 1;
                let c = list.remove(i);
                (c.stream, c.home)
            })
        };
        drop(stale); // closed outside the lock
        found
    }

    /// Park a connection whose exchange completed; closed instead when the pool is full.
    pub fn put(&self, peer: u64, stream: Stream, home: Home) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if s.count >= self.max {
            drop(s);
            drop(stream);
            return;
        }
        s.count += 1;
        s.by_peer.entry(peer).or_default().push(Idle {
            stream,
            since: Instant::now(),
            home,
        });
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
            let here = Home::here();
            let (a, pa) = stream(&l).await;
            let (b, pb) = stream(&l).await;
            let (c, pc) = stream(&l).await;
            pool.put(1, a, here);
            pool.put(1, b, here);
            pool.put(2, c, here);
            assert_eq!(pool.len(), 3);
            // Full: a fourth is closed, not kept.
            let (d, _) = stream(&l).await;
            pool.put(1, d, here);
            assert_eq!(pool.len(), 3);
            let long = Duration::from_secs(60);
            assert!(pool.take(9, long, here).is_none(), "unknown peer");
            let (got, home) = pool.take(1, long, here).unwrap();
            assert_eq!((got.id(), home), (pb, here), "newest first");
            assert_eq!(pool.take(2, long, here).unwrap().0.id(), pc);
            assert_eq!(pool.len(), 1);
            // Idle longer than allowed: closed and not handed out.
            std::thread::sleep(Duration::from_millis(20));
            assert!(pool.take(1, Duration::from_millis(10), here).is_none());
            assert_eq!(pool.len(), 0);
            let _ = pa;
        });
    }

    #[test]
    fn a_connection_from_this_thread_comes_first_and_another_threads_serves_when_none_is() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let pool = IdleConns::new(8);
            let here = Home::here();
            let there = std::thread::spawn(Home::here).join().unwrap();
            assert_ne!(here, there, "each thread has a home of its own");
            assert_eq!(Home::here(), here, "and keeps it");
            let (mine, p_mine) = stream(&l).await;
            let (theirs, p_theirs) = stream(&l).await;
            pool.put(1, mine, here);
            pool.put(1, theirs, there);
            let long = Duration::from_secs(60);
            // The newest is the other thread's, but this thread's own comes first.
            let (got, home) = pool.take(1, long, here).unwrap();
            assert_eq!((got.id(), home), (p_mine, here));
            // None of this thread's left: the other thread's is better than a new one,
            // and keeps its home.
            let (got, home) = pool.take(1, long, here).unwrap();
            assert_eq!((got.id(), home), (p_theirs, there));
            assert!(pool.take(1, long, here).is_none());
        });
    }
}
