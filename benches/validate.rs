//! How much does parsing + validating a session body cost? (v3/v5, valid and invalid)

#[path = "support/alloc.rs"]
mod alloc;

use std::hint::black_box;

use amity_gateway::session::{validate, ApiVersion, Rules};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const VALID: &[u8] = br#"{"userId":"user-123","deviceId":"device-abc-0001","deviceInfo":{"kind":"ios","model":"iPhone15,2","sdkVersion":"6.35.3"},"displayName":"Alice","authToken":"tok-xyz"}"#;
const INVALID: &[u8] =
    br#"{"userId":"","deviceId":7,"deviceInfo":{"kind":"toaster","model":"m"},"displayName":null,"authToken":"tok"}"#;

fn bench(c: &mut Criterion) {
    let rules = Rules::default();
    let mut g = c.benchmark_group("validate");
    for (name, version, body) in [
        ("v3_valid", ApiVersion::V3, VALID),
        ("v5_valid", ApiVersion::V5, VALID),
        ("v3_invalid", ApiVersion::V3, INVALID),
        ("v5_invalid", ApiVersion::V5, INVALID),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| validate(version, black_box(body), &rules))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
