//! Fleet mode (issue 19, `../shared/fleet-design.md`): instances behind one load balancer
//! share one token pool through Redis. Each instance keeps a local mirror that leases
//! without a Redis round trip; changes go to Redis in the background through one script
//! that applies the pool's rules, and come back to every mirror as events; a periodic
//! resync closes any gap. Redis trouble never fails a request: the instance serves on its
//! own state and catches up when Redis returns.

pub mod admission;
pub mod link;
pub mod record;
pub mod scripts;
pub mod seal;
pub mod signin;
