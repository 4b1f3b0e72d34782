//! The on-disk record encoding: one format-version byte, then postcard.
//!
//! - `codec/encode_request_record`: `store::encode` of a typical `RequestRecord`
//!   (a `processing` request after a failed attempt).
//! - `codec/decode_request_record`: `store::decode` of the same bytes, including
//!   the version byte check.
//! - `codec/decode_request_record_postcard_only`: `postcard::from_bytes` of the
//!   body without the version byte, to show what the check costs.
//! - `codec/decode_rejects_unknown_version`: `store::decode` of bytes with a
//!   future version byte, which must fail before postcard runs.
//!
//! Throughput is bytes of encoded record per second.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald::domain::{RequestId, Status};
use herald::store::RequestRecord;
use herald::store::embedded::{CodecError, RECORD_VERSION, decode, encode};

fn record() -> RequestRecord {
    RequestRecord {
        id: RequestId::new(),
        notification: common::notification(42),
        status: Status::Processing,
        created_at_ms: 1_760_000_000_000,
        updated_at_ms: 1_760_000_000_450,
        process_requested_at_ms: Some(1_760_000_000_010),
        attempts: 2,
        next_attempt_at_ms: Some(1_760_000_001_450),
        provider_id: None,
        last_error: Some("HTTP 503".into()),
        event_count: 5,
    }
}

fn codec(c: &mut Criterion) {
    let record = record();
    let bytes = encode(&record).expect("encode");
    assert_eq!(bytes[0], RECORD_VERSION);
    assert_eq!(decode::<RequestRecord>(&bytes).expect("decode"), record);
    let mut future = bytes.clone();
    future[0] = RECORD_VERSION + 1;

    let mut group = c.benchmark_group("codec");
    group
        .throughput(Throughput::Bytes(bytes.len() as u64))
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    group.bench_function("encode_request_record", |b| {
        b.iter(|| encode(black_box(&record)).expect("encode"))
    });
    group.bench_function("decode_request_record", |b| {
        b.iter(|| decode::<RequestRecord>(black_box(&bytes)).expect("decode"))
    });
    group.bench_function("decode_request_record_postcard_only", |b| {
        b.iter(|| postcard::from_bytes::<RequestRecord>(black_box(&bytes[1..])).expect("decode"))
    });
    group.bench_function("decode_rejects_unknown_version", |b| {
        b.iter(|| {
            let result = decode::<RequestRecord>(black_box(&future));
            assert!(matches!(result, Err(CodecError::UnsupportedVersion { .. })));
        })
    });
    group.finish();
    println!("codec: an encoded RequestRecord is {} bytes", bytes.len());
}

criterion_group!(benches, codec);
criterion_main!(benches);
