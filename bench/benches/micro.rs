//! Micro-benchmarks of tether's hot paths: masking, UTF-8 validation, frame encoding and
//! decoding. Run with `cargo bench -p bench`; the main harness (`cargo run --release -p
//! bench --bin bench`) runs them too and puts a summary in docs/benchmarks.md.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tether_proto::frame::encode_frame;
use tether_proto::mask::{apply_mask, apply_mask_scalar};
use tether_proto::{Config, Connection, OpCode, Role};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const SIZES: [(&str, usize); 3] = [("1 KiB", 1 << 10), ("64 KiB", 64 << 10), ("1 MiB", 1 << 20)];

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for (label, n) in SIZES {
        let mut buf = pattern(n);
        group.throughput(Throughput::Bytes(n as u64));
        group.bench_function(BenchmarkId::new("apply_mask", label), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), 0))
        });
    }
    let mut buf = pattern(64 << 10);
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function(BenchmarkId::new("apply_mask_scalar", "64 KiB"), |b| {
        b.iter(|| apply_mask_scalar(black_box(&mut buf), black_box(KEY)))
    });
    group.finish();
}

/// Text of `n` bytes: English prose, or a mix of 1- to 4-byte characters.
fn text(n: usize, mixed: bool) -> Vec<u8> {
    let unit = if mixed {
        "Grüße, мир! 你好，世界。 🙂 naïve café — ok. "
    } else {
        "The quick brown fox jumps over the lazy dog, again and again. "
    };
    let mut s = String::with_capacity(n);
    'fill: loop {
        for ch in unit.chars() {
            if s.len() + ch.len_utf8() > n {
                break 'fill;
            }
            s.push(ch);
        }
    }
    while s.len() < n {
        s.push(' ');
    }
    s.into_bytes()
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    for (kind, mixed) in [("ascii", false), ("mixed", true)] {
        for (label, n) in [("1 KiB", 1 << 10), ("64 KiB", 64 << 10)] {
            let data = text(n, mixed);
            assert!(std::str::from_utf8(&data).is_ok());
            let input = format!("{kind} {label}");
            group.throughput(Throughput::Bytes(n as u64));
            group.bench_function(BenchmarkId::new("std::str::from_utf8", &input), |b| {
                b.iter(|| std::str::from_utf8(black_box(&data)).is_ok())
            });
            group.bench_function(BenchmarkId::new("String::from_utf8", &input), |b| {
                b.iter_batched(
                    || data.clone(),
                    |v| String::from_utf8(black_box(v)).is_ok(),
                    BatchSize::LargeInput,
                )
            });
            group.bench_function(BenchmarkId::new("simdutf8::compat", &input), |b| {
                b.iter(|| simdutf8::compat::from_utf8(black_box(&data)).is_ok())
            });
            group.bench_function(BenchmarkId::new("simdutf8::basic", &input), |b| {
                b.iter(|| simdutf8::basic::from_utf8(black_box(&data)).is_ok())
            });
        }
    }
    group.finish();
}

fn frame_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_encode");
    for (label, n) in [("20 B", 20), ("1 KiB", 1 << 10), ("64 KiB", 64 << 10)] {
        let payload = pattern(n);
        let mut out = Vec::with_capacity(n + 14);
        group.throughput(Throughput::Bytes(n as u64));
        for (role, mask) in [("server (unmasked)", None), ("client (masked)", Some(KEY))] {
            group.bench_function(BenchmarkId::new(role, label), |b| {
                b.iter(|| {
                    out.clear();
                    encode_frame(
                        &mut out,
                        true,
                        false,
                        OpCode::Binary,
                        mask,
                        black_box(&payload),
                    );
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

fn frame_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_decode");
    let cases = [
        ("binary", OpCode::Binary, 20, 1000),
        ("binary", OpCode::Binary, 1 << 10, 256),
        ("text", OpCode::Text, 1 << 10, 256),
        ("binary", OpCode::Binary, 64 << 10, 16),
        ("binary", OpCode::Binary, 1 << 20, 1),
    ];
    for (kind, opcode, size, count) in cases {
        let payload = pattern(size);
        let mut input = Vec::new();
        for _ in 0..count {
            encode_frame(&mut input, true, false, opcode, Some(KEY), &payload);
        }
        let config = Config::default().ping_interval(None).ping_timeout(None);
        let mut conn = Connection::new(Role::Server, config, Instant::now());
        let now = Instant::now();
        let label = match size {
            20 => "20 B".to_owned(),
            s if s >= 1 << 20 => format!("{} MiB", s >> 20),
            s => format!("{} KiB", s >> 10),
        };
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(
            BenchmarkId::new(format!("{kind} messages"), format!("{label} × {count}")),
            |b| {
                b.iter(|| {
                    conn.receive(black_box(&input), now);
                    let mut n = 0;
                    while let Some(event) = conn.poll_event() {
                        black_box(&event);
                        n += 1;
                    }
                    assert_eq!(n, count);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, mask, utf8, frame_encode, frame_decode);
criterion_main!(benches);
