//! Token pool cost per request: one lease and one outcome report, the pool's whole share of
//! an upstream attempt, alone and with threads contending for the same pool.
//!
//! cargo bench --bench pool            (add `-- --quick` for a short run)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use k2proxy::pool::{Outcome, Pool, PoolSettings, Source};
use k2proxy::secret::Secret;

fn pool(n: usize) -> Pool {
    let p = Pool::new(PoolSettings::default());
    p.set_tokens(
        (0..n)
            .map(|i| {
                (
                    Secret::new(format!("eyJhbGciOiJIUzI1NiJ9.token-{i:04}.sig")),
                    Source::Inline,
                )
            })
            .collect(),
    );
    p
}

/// One request's pool work: lease a token not yet tried, report success.
fn request(p: &Pool, now: Instant) {
    if let Ok(l) = p.lease(&[], now) {
        black_box(p.report(l.id, &Outcome::Success, now));
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_request");
    for size in [3usize, 100] {
        let p = pool(size);
        g.bench_with_input(BenchmarkId::new("single_thread", size), &p, |b, p| {
            let now = Instant::now();
            b.iter(|| request(p, now))
        });
        for threads in [2usize, 8] {
            g.bench_function(
                BenchmarkId::new(format!("contended_{threads}_threads"), size),
                |b| {
                    b.iter_custom(|iters| {
                        let per = iters.div_ceil(threads as u64);
                        let now = Instant::now();
                        let start = Instant::now();
                        std::thread::scope(|s| {
                            for _ in 0..threads {
                                s.spawn(|| {
                                    for _ in 0..per {
                                        request(&p, now);
                                    }
                                });
                            }
                        });
                        // time per request across all threads
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per * threads as u64) as f64)
                    })
                },
            );
        }
    }
    // a retry: three leases with a growing tried list, two failures and a success
    // (strikes never disable here, so every iteration does the same work)
    let p = pool(100);
    p.set_settings(PoolSettings {
        max_failures: u32::MAX,
        ..PoolSettings::default()
    });
    g.bench_function("retry_three_attempts_100", |b| {
        let now = Instant::now();
        b.iter(|| {
            let mut tried = Vec::with_capacity(3);
            for outcome in [
                Outcome::ServerError(502),
                Outcome::Timeout,
                Outcome::Success,
            ] {
                if let Ok(l) = p.lease(&tried, now) {
                    tried.push(l.id);
                    black_box(p.report(l.id, &outcome, now));
                }
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
