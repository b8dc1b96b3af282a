//! The access log's writer: a request hands its line to a bounded queue and goes on; a
//! thread of its own takes the lines in batches and writes each batch with one `write`, at
//! least every [`FLUSH_EVERY`] and at shutdown ([`AccessLog::close`]). A worker thread never
//! makes a syscall for a log line, and never waits on a slow terminal or pipe.
//!
//! The queue holds at most `capacity` lines: when the writer falls behind, a line that does
//! not fit is dropped and counted (`k2proxy_access_log_dropped_total`), so memory stays
//! bounded. The thread starts with the first line, after Pingora's fork into a daemon (a
//! thread started before a fork does not survive it). After `close`, lines are written
//! straight away, so that nothing logged late in a shutdown is lost.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest a line waits in the queue.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Lines the queue holds by default (a few MB at most).
pub const DEFAULT_CAPACITY: usize = 16_384;

/// Where the lines go (stdout in the server; a buffer in tests).
pub type Sink = Box<dyn Write + Send>;

pub struct AccessLog {
    writer: OnceLock<Writer>,
    make_sink: Box<dyn Fn() -> Sink + Send + Sync>,
    capacity: usize,
    dropped: prometheus::IntCounter,
    closed: AtomicBool,
}

struct Writer {
    tx: SyncSender<String>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// Lines to stdout; `dropped` counts the lines a full queue refused.
    pub fn stdout(dropped: prometheus::IntCounter) -> AccessLog {
        AccessLog::new(
            DEFAULT_CAPACITY,
            Box::new(|| Box::new(std::io::stdout())),
            dropped,
        )
    }

    pub fn new(
        capacity: usize,
        make_sink: Box<dyn Fn() -> Sink + Send + Sync>,
        dropped: prometheus::IntCounter,
    ) -> AccessLog {
        AccessLog {
            writer: OnceLock::new(),
            make_sink,
            capacity: capacity.max(1),
            dropped,
            closed: AtomicBool::new(false),
        }
    }

    /// Queue one line (with its newline). Never blocks and never writes on this thread,
    /// except after [`AccessLog::close`].
    pub fn log(&self, line: String) {
        if self.closed.load(Ordering::Acquire) {
            let mut sink = (self.make_sink)();
            let _ = sink.write_all(line.as_bytes());
            let _ = sink.flush();
            return;
        }
        let Some(writer) = self.writer() else {
            self.dropped.inc();
            return;
        };
        match writer.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Write every queued line and stop the thread; later lines are written at once. Called
    /// when the server has stopped (after the grace period), and safe to call twice.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let Some(writer) = self.writer.get() else {
            return;
        };
        if let Some(t) = writer.stop() {
            let _ = t.join();
        }
    }

    fn writer(&self) -> Option<&Writer> {
        if let Some(w) = self.writer.get() {
            return Some(w);
        }
        let (tx, rx) = sync_channel(self.capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let sink = (self.make_sink)();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_batches(rx, sink, &stop))
                .ok()?
        };
        let candidate = Writer {
            tx,
            stop,
            thread: Mutex::new(Some(thread)),
        };
        // Two first lines at once: one writer wins, the other's thread ends with its queue.
        if let Err(lost) = self.writer.set(candidate) {
            lost.stop();
        }
        self.writer.get()
    }
}

impl Writer {
    /// Tell the thread to write what is queued and end; its handle, to wait for it.
    fn stop(&self) -> Option<JoinHandle<()>> {
        self.stop.store(true, Ordering::Release);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        thread.thread().unpark();
        Some(thread)
    }
}

/// The writer thread: every [`FLUSH_EVERY`] (or when woken to stop), take what is queued
/// and write it in one go.
fn write_batches(rx: Receiver<String>, mut sink: Sink, stop: &AtomicBool) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        // Parked, not blocked in `recv`: a sender never has a sleeping receiver to wake,
        // so queueing a line costs the request no syscall.
        std::thread::park_timeout(FLUSH_EVERY);
        let stopping = stop.load(Ordering::Acquire);
        while let Ok(line) = rx.try_recv() {
            batch.extend_from_slice(line.as_bytes());
        }
        if !batch.is_empty() {
            let _ = sink.write_all(&batch);
            let _ = sink.flush();
            batch.clear();
            if batch.capacity() > 1 << 20 {
                batch.shrink_to(64 * 1024);
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A sink that records what was written and how many writes it took.
    #[derive(Clone, Default)]
    struct Recorder {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
    }

    impl Recorder {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_into(rec: &Recorder, capacity: usize) -> AccessLog {
        let rec = rec.clone();
        AccessLog::new(
            capacity,
            Box::new(move || Box::new(rec.clone())),
            prometheus::IntCounter::new("dropped", "dropped").unwrap(),
        )
    }

    #[test]
    fn lines_are_written_in_batches_off_the_caller_and_all_of_them_at_close() {
        let rec = Recorder::default();
        let log = log_into(&rec, 10_000);
        for i in 0..1000 {
            log.log(format!("line {i}\n"));
        }
        // Nothing is written on this thread: the writer's first batch comes later.
        assert!(rec.writes.load(Ordering::Relaxed) <= 1);
        log.close();
        let text = rec.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "line 999");
        // A thousand lines queued at once leave in a batch or two, not a thousand writes.
        assert!(rec.writes.load(Ordering::Relaxed) <= 2, "{:?}", rec.writes);
        assert_eq!(log.dropped(), 0);
        // After close, a line is written at once.
        log.log("late\n".into());
        assert!(rec.text().ends_with("late\n"));
        log.close();
    }

    #[test]
    fn a_writer_that_falls_behind_drops_and_counts_lines_within_bounded_memory() {
        let rec = Recorder::default();
        let log = log_into(&rec, 100);
        for i in 0..1000 {
            log.log(format!("line {i}\n"));
        }
        let dropped = log.dropped();
        assert!(dropped >= 800, "dropped {dropped}");
        log.close();
        let written = rec.text().lines().count() as u64;
        assert_eq!(written + dropped, 1000);
    }

    #[test]
    fn a_line_reaches_the_sink_within_the_flush_interval() {
        let rec = Recorder::default();
        let log = log_into(&rec, 100);
        log.log("one\n".into());
        let t0 = std::time::Instant::now();
        while rec.bytes.lock().unwrap().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*rec.bytes.lock().unwrap(), b"one\n");
        log.close();
    }
}
