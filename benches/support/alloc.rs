//! The allocator the binary ships with (`src/main.rs`), so that the benches measure what runs:
//! allocation costs on the request path, and the rate-limit sketch on transparent huge pages.

#[path = "../../src/allocator.rs"]
mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;
