//! Timeouts on the request path, on Pingora's timer thread (`fast_timeout`, 10 ms
//! resolution): arming one is an insert into a map of this thread's timers. A tokio timer
//! that ends before the runtime's next wake-up makes tokio unpark its driver (an eventfd
//! write) when it is armed, and a streamed request arms several: two to three writes each.

use std::future::Future;
use std::time::Duration;

use pingora::time::fast_timeout::{fast_timeout, FastOrTokioTimeout};
use pingora::time::Timeout;

/// `fut` within `limit`.
pub(super) fn within<F: Future>(limit: Duration, fut: F) -> Timeout<F, FastOrTokioTimeout> {
    fast_timeout(limit, fut)
}

/// [`within`] until `deadline`.
pub(super) fn until<F: Future>(
    deadline: tokio::time::Instant,
    fut: F,
) -> Timeout<F, FastOrTokioTimeout> {
    within(
        deadline.saturating_duration_since(tokio::time::Instant::now()),
        fut,
    )
}
