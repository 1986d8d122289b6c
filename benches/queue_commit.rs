//! The durable commit path (S5): messages per second through the group committer into a sled
//! store on disk, with 1, 16 and 128 tasks committing at once (one per concurrent session).
//! Each commit returns only after the data is synced, so with one task every message pays a
//! whole sync; with many, the committer shares one sync between all messages waiting.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tlsgate::config::Role;
use tlsgate::queue::message::{BodyType, DsnNotify, Reception, Recipient};
use tlsgate::queue::{Committer, MessageMeta, NewMessage, QueueId, SledStore, Store};

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

/// Commits `MESSAGES` messages from `tasks` concurrent tasks; returns the ids committed.
async fn commit_all(committer: &Committer, body: &Arc<Vec<u8>>, tasks: usize) -> Vec<QueueId> {
    let per_task = MESSAGES / tasks;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let committer = committer.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let msg = message(&body);
                    ids.push(msg.meta.id.clone());
                    committer.commit(msg).await.expect("commit");
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(MESSAGES);
    for handle in handles {
        ids.extend(handle.await.expect("committing task panicked"));
    }
    ids
}

fn queue_commit(c: &mut Criterion) {
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

    let mut group = c.benchmark_group("queue_commit_128x10KiB");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(MESSAGES as u64));
    for tasks in CONCURRENCY {
        assert_eq!(MESSAGES % tasks, 0);
        // A fresh store per concurrency level, under TMPDIR: point TMPDIR at the disk the queue
        // would live on (on a tmpfs, fsync costs nothing and the numbers mean little).
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Arc::new(SledStore::open(dir.path()).expect("open the store"));
        let (committer, _announced) =
            Committer::start(store.clone() as Arc<dyn Store>).expect("start the committer");
        let syncs_before = committer.stats().syncs.load(Ordering::Relaxed);
        let messages_before = committer.stats().messages.load(Ordering::Relaxed);

        group.bench_with_input(BenchmarkId::new("tasks", tasks), &tasks, |b, &tasks| {
            b.to_async(&rt).iter_custom(|iters| {
                let committer = committer.clone();
                let store = store.clone();
                let body = body.clone();
                async move {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let ids = commit_all(&committer, &body, tasks).await;
                        measured += start.elapsed();
                        // Not measured: take the messages out again so that the store stays
                        // the same size whatever the number of iterations.
                        let store = store.clone();
                        tokio::task::spawn_blocking(move || {
                            for id in &ids {
                                store.remove_message(id).expect("remove");
                            }
                            store.sync().expect("sync after removal");
                        })
                        .await
                        .expect("cleanup task panicked");
                    }
                    measured
                }
            })
        });

        let stats = committer.stats();
        let syncs = stats.syncs.load(Ordering::Relaxed) - syncs_before;
        let messages = stats.messages.load(Ordering::Relaxed) - messages_before;
        if syncs > 0 {
            eprintln!(
                "tasks={tasks}: {messages} messages in {syncs} syncs, {:.1} messages per sync",
                messages as f64 / syncs as f64
            );
        }
        drop(committer);
        drop(store);
    }
    group.finish();
}

criterion_group!(benches, queue_commit);
criterion_main!(benches);
