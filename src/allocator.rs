//! The global allocator of the binary (and of the benches, so they measure what runs):
//! mimalloc, called the way its own `malloc` is fastest.
//!
//! The `mimalloc` crate hands every allocation to `mi_malloc_aligned`, whatever its alignment.
//! In mimalloc 3 that path is quick only while the size class's page has a free block at hand
//! and its block size is a power of two; otherwise it over-allocates (a block of a larger class,
//! aligned by hand), which under callgrind was nine allocations of every proxied pass request.
//! Every mimalloc block is aligned to at least a machine word, so a layout asking no more than
//! that goes to `mi_malloc` / `mi_realloc`, as Rust's own system allocator does with `malloc`;
//! larger alignments keep the aligned calls.
//!
//! Built with the `no_thp` feature (Cargo.toml): mimalloc would otherwise `madvise` its arenas
//! for transparent huge pages, and where THP is in `madvise` mode every 2 MiB of an arena it
//! touched became resident whole, about 10 MiB of the idle gateway's 26 MiB.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment every mimalloc block has: a machine word (8 bytes on 64-bit targets).
const BLOCK_ALIGN: usize = std::mem::size_of::<usize>();

pub struct Mimalloc;

// SAFETY: each method forwards to the mimalloc call of the same contract; the plain calls are
// used only for layouts whose alignment every mimalloc block satisfies.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            unsafe { mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            unsafe { mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            unsafe { mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            unsafe { mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8 }
        }
    }
}
