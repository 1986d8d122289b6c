//! Throughput of the pure protocol code on the hot path of every session: the command parser
//! (one call per command line) and the DATA decoder (every octet of every message).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tlsgate::smtp::command::parse_command;
use tlsgate::smtp::data::{DataDecoder, DataOutcome, Feed};

/// Typical command lines, without CRLF (as the session hands them to the parser).
const LINES: &[(&str, &str)] = &[
    ("ehlo", "EHLO mail-relay01.client.example.org"),
    ("mail_plain", "MAIL FROM:<alice@example.org>"),
    (
        "mail_esmtp",
        "MAIL FROM:<alice.sender+tag@sub.example.org> SIZE=1048576 BODY=8BITMIME RET=HDRS \
         ENVID=QQ314159+2Bx",
    ),
    ("rcpt_plain", "RCPT TO:<bob@example.no>"),
    (
        "rcpt_dsn",
        "RCPT TO:<bob@example.no> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;bob+2Bx@example.no",
    ),
    ("data", "DATA"),
    ("quit", "QUIT"),
];

fn command_parser(c: &mut Criterion) {
    // Every line must parse: the benchmark measures the accepting path.
    for (name, line) in LINES {
        if let Err(e) = parse_command(line.as_bytes()) {
            panic!("benchmark line {name} does not parse: {e}");
        }
    }
    let mut group = c.benchmark_group("parse_command");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (name, line) in LINES {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(name), line, |b, line| {
            b.iter(|| parse_command(black_box(line.as_bytes())))
        });
    }
    // One whole transaction's worth of commands.
    group.throughput(Throughput::Elements(LINES.len() as u64));
    group.bench_function("transaction", |b| {
        b.iter(|| {
            for (_, line) in LINES {
                let _ = black_box(parse_command(black_box(line.as_bytes())));
            }
        })
    });
    group.finish();
}

const BODY_SIZE: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// About `BODY_SIZE` octets of message data on the wire (dot-stuffed, CRLF lines, ending with
/// the `.<CRLF>` marker). `line` builds the n-th line (without CRLF).
fn wire_body(line: impl Fn(usize) -> String) -> Vec<u8> {
    let mut wire =
        b"From: <alice@example.org>\r\nTo: <bob@example.no>\r\nSubject: bench\r\n\r\n".to_vec();
    let mut n = 0;
    while wire.len() < BODY_SIZE {
        let text = line(n);
        if text.starts_with('.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(text.as_bytes());
        wire.extend_from_slice(b"\r\n");
        n += 1;
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

/// Feeds `wire` in `CHUNK`-sized pieces as the session does; returns the decoded body.
fn decode(wire: &[u8]) -> (Vec<u8>, DataOutcome) {
    let mut decoder = DataDecoder::new(2 * BODY_SIZE);
    let mut out = Vec::with_capacity(wire.len());
    for chunk in wire.chunks(CHUNK) {
        if let Feed::Done { .. } = decoder.feed(chunk, &mut out) {
            return (out, decoder.outcome());
        }
    }
    panic!("end of data not found");
}

fn data_decoder(c: &mut Criterion) {
    let bodies = [
        // Plain text, 72-character lines.
        (
            "text_lines",
            wire_body(|n| {
                format!("{n:08} {}", "lorem ipsum dolor sit amet ".repeat(3))
                    .chars()
                    .take(72)
                    .collect()
            }),
        ),
        // Every line dot-stuffed: the slow path of the state machine.
        (
            "dot_stuffed",
            wire_body(|n| format!(".{n:08} {}", "x".repeat(60))),
        ),
        // Short lines: many line ends per octet (e.g. base64 with short lines, lists).
        ("short_lines", wire_body(|n| format!("{n}"))),
        // Long 8-bit lines, as in 8BITMIME text with few line breaks.
        (
            "long_8bit_lines",
            wire_body(|n| format!("{n} {}", "blåbærsyltetøy ".repeat(60))),
        ),
    ];
    let mut group = c.benchmark_group("data_decoder_1MiB_in_64KiB_chunks");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, wire) in &bodies {
        let (body, outcome) = decode(wire);
        assert_eq!(outcome, DataOutcome::Ok, "{name}");
        assert!(
            body.len() >= BODY_SIZE - 128 * 1024,
            "{name}: {}",
            body.len()
        );
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), wire, |b, wire| {
            b.iter(|| decode(black_box(wire)))
        });
    }
    group.finish();
}

criterion_group!(benches, command_parser, data_decoder);
criterion_main!(benches);
