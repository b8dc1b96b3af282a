//! Response body: either a full buffer or a channel fed by a stream writer task.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Counts a response as active while it exists.
pub struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    pub fn new(counter: Arc<AtomicUsize>) -> ActiveGuard {
        counter.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(counter)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Inner {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<io::Result<Bytes>>),
}

pub struct MockBody {
    inner: Inner,
    _guard: Option<ActiveGuard>,
}

impl MockBody {
    pub fn full(b: impl Into<Bytes>) -> MockBody {
        let b = b.into();
        MockBody {
            inner: Inner::Full(if b.is_empty() { None } else { Some(b) }),
            _guard: None,
        }
    }

    /// A streamed body; an `Err` item aborts the response (no chunked terminator).
    pub fn channel(rx: mpsc::Receiver<io::Result<Bytes>>, guard: ActiveGuard) -> MockBody {
        MockBody {
            inner: Inner::Channel(rx),
            _guard: Some(guard),
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Channel(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.inner, Inner::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Channel(_) => SizeHint::default(),
        }
    }
}
