//! What does reading a session answer for the lookup cache cost?
//!
//! Every forwarded session answer (about 1.6 KB: token, dates, the user, roles, files) is read
//! for its token, `expiresAt`, `lastCachePurge` and `users[].userId`. `view` is the gateway's
//! reader; beside it, serde_json merely checking the same bytes (`serde_json_ignored_any`) and
//! building the whole tree (`serde_json_value`) are references for the same work.
//!
//! Run: `cargo bench --bench session_answer -- --warm-up-time 1 --measurement-time 3`

#[path = "support/alloc.rs"]
mod alloc;

use std::hint::black_box;

use amity_gateway::cache::view::SessionAnswer;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

/// A session answer shaped like the upstream's (and the simulator's).
fn answer() -> Vec<u8> {
    let id = "6745a1b2c3d4e5f601234567";
    let body = json!({
        "accessToken": "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VySWQiOiJ1c2VyLTEyMyIsImRldmljZUlkIjoiZGV2aWNlLWFiYy0wMDAxIiwiaWF0IjoxNzMyNTk3MjAwLCJleHAiOjE3MzI2ODM2MDB9.Qm9ndXNTaWduYXR1cmVGb3JCZW5jaG1hcmtPbmx5",
        "refreshToken": "3f1c9e27b5d44e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f",
        "issuedAt": "2024-11-26T05:00:00.000Z",
        "expiresAt": "2024-11-27T05:00:00.000Z",
        "users": [{
            "_id": id, "path": format!("/6745a1b2c3d4e5f600000001/social/users/{id}"),
            "userId": "user-123", "userInternalId": id, "userPublicId": "user-123",
            "roles": ["user"], "permissions": ["MUTE_CHANNEL", "CLOSE_CHANNEL", "EDIT_CHANNEL"],
            "displayName": "Alice Example", "description": "Café lover \u{2615}",
            "avatarFileId": "avatar-0f1e2d3c4b5a69788796a5b4", "avatarCustomUrl": null,
            "flagCount": 0, "hashFlag": null, "metadata": {"team": "blue", "level": 3},
            "isGlobalBan": false, "isBrand": false, "isDeleted": false,
            "createdAt": "2024-11-01T10:00:00.000Z", "updatedAt": "2024-11-26T05:00:00.000Z",
        }],
        "roles": [{"roleId": "user", "permissions": ["MUTE_CHANNEL", "CLOSE_CHANNEL"],
                   "createdAt": "2024-01-01T00:00:00.000Z"}],
        "files": [{
            "fileId": "avatar-0f1e2d3c4b5a69788796a5b4", "type": "image",
            "fileUrl": "https://upload.example/avatar-0f1e2d3c4b5a69788796a5b4",
            "attributes": {"name": "avatar.jpg", "extension": "jpg", "size": 48213,
                           "mimeType": "image/jpeg", "metadata": {"height": 512, "width": 512}},
            "createdAt": "2024-11-01T10:00:00.000Z", "updatedAt": "2024-11-01T10:00:00.000Z",
        }],
        "lastCachePurge": "2024-11-20T00:00:00.000Z",
    });
    serde_json::to_vec(&body).expect("answer")
}

fn bench(c: &mut Criterion) {
    let body = answer();
    let view = SessionAnswer::read(&body).expect("a session answer");
    assert_eq!(view.users.0, vec!["user-123"]);
    assert!(view.access_token.as_str().is_some() && view.last_cache_purge.as_str().is_some());

    let mut g = c.benchmark_group("session_answer");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("view", |b| {
        b.iter(|| SessionAnswer::read(black_box(&body)).map(|v| v.users.0.len()))
    });
    g.bench_function("serde_json_ignored_any", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).is_ok())
    });
    g.bench_function("serde_json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).is_ok())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
