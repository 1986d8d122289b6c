//! The durable commit path (S5): messages per second through the group committer into a store
//! on disk, with 1, 16 and 128 tasks committing at once (one per concurrent session). The
//! engine is `TLSGATE_BENCH_ENGINE` (`redb`, the default, or `sled`; issue 16 item 2).
//! Each commit returns only after the data is synced, so with one task every message pays a
//! whole sync; with many, the committer shares one sync between all messages waiting.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tlsgate::config::Role;
use tlsgate::queue::message::{BodyType, DsnNotify, Reception, Recipient};
use tlsgate::queue::{Committer, MessageMeta, NewMessage, QueueEngine, QueueId};

/// Messages committed per measured iteration.
const MESSAGES: usize = 128;
const BODY_SIZE: usize = 10 * 1024;
const CONCURRENCY: [usize; 3] = [1, 16, 128];

fn message(body: &[u8]) -> NewMessage {
    let id = QueueId::generate();
    NewMessage {
        meta: MessageMeta {
            id: id.clone(),
            sender: Some("alice@example.org".into()),
            recipients: vec![Recipient {
                address: "bob@example.no".into(),
                notify: DsnNotify::default(),
                orcpt: None,
            }],
            ret: None,
            envid: None,
            body_type: BodyType::EightBitMime,
            smtputf8: false,
            requiretls: false,
            reception: Reception {
                client_ip: [192, 0, 2, 1].into(),
                helo: "client.example.org".into(),
                role: Role::Inbound,
                tls: None,
                received_at: 0,
            },
            received_header: format!(
                "Received: from client.example.org ([192.0.2.1]) by mx.example.no with ESMTP \
                 id {id}\r\n"
            ),
            size: body.len() as u64,
        },
        body: body.to_vec(),
    }
}

/// Commits `MESSAGES` messages from `tasks` concurrent tasks.
async fn commit_all(committer: &Committer, body: &Arc<Vec<u8>>, tasks: usize) {
    let per_task = MESSAGES / tasks;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let committer = committer.clone();
            let body = body.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    committer.commit(message(&body)).await.expect("commit");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("committing task panicked");
    }
}

/// Sync and message counts summed over every store a benchmark used.
#[derive(Default)]
struct Totals {
    messages: AtomicU64,
    syncs: AtomicU64,
}

/// The engine from `TLSGATE_BENCH_ENGINE` (default redb).
fn engine() -> QueueEngine {
    match std::env::var("TLSGATE_BENCH_ENGINE").as_deref() {
        Ok("sled") => QueueEngine::Sled,
        Ok("redb") | Err(_) => QueueEngine::Redb,
        Ok(other) => panic!("TLSGATE_BENCH_ENGINE={other}: write redb or sled"),
    }
}

fn queue_commit(c: &mut Criterion) {
    let engine = engine();
    eprintln!("queue engine: {}", engine.name());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let body: Arc<Vec<u8>> = Arc::new(
        (0..BODY_SIZE)
            .map(|i| {
                if i % 78 == 77 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect(),
    );

    let mut group = c.benchmark_group(format!("queue_commit_128x10KiB_{}", engine.name()));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(MESSAGES as u64));
    for tasks in CONCURRENCY {
        assert_eq!(MESSAGES % tasks, 0);
        let totals = Arc::new(Totals::default());
        group.bench_with_input(BenchmarkId::new("tasks", tasks), &tasks, |b, &tasks| {
            b.to_async(&rt).iter_custom(|iters| {
                let body = body.clone();
                let totals = totals.clone();
                async move {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        // Not measured: a fresh, empty queue per iteration, under TMPDIR (point
                        // TMPDIR at the disk the queue would live on; on a tmpfs fsync is free).
                        // Emptying one store between iterations instead (remove every message)
                        // is not an option: with sled 0.34.7 that pattern deadlocks inside sled
                        // (file truncation queued behind its blocked I/O threads).
                        let dir = tempfile::tempdir().expect("temporary directory");
                        let store = tlsgate::queue::engine::open_with(dir.path(), engine, None)
                            .expect("open the store");
                        let (committer, _announced) =
                            Committer::start(store).expect("start the committer");

                        let start = Instant::now();
                        commit_all(&committer, &body, tasks).await;
                        measured += start.elapsed();

                        let stats = committer.stats();
                        totals
                            .messages
                            .fetch_add(stats.messages.load(Ordering::Relaxed), Ordering::Relaxed);
                        totals
                            .syncs
                            .fetch_add(stats.syncs.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    measured
                }
            })
        });
        let messages = totals.messages.load(Ordering::Relaxed);
        let syncs = totals.syncs.load(Ordering::Relaxed);
        if syncs > 0 {
            eprintln!(
                "tasks={tasks}: {messages} messages in {syncs} syncs, {:.1} messages per sync",
                messages as f64 / syncs as f64
            );
        }
    }
    group.finish();
}

criterion_group!(benches, queue_commit);
criterion_main!(benches);
