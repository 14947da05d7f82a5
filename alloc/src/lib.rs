//! fledge's global allocator: mimalloc, called the way its C users call it.
//!
//! The `mimalloc` crate's `GlobalAlloc` asks for every block with
//! `mi_malloc_aligned`, passing the type's alignment even when it is 8. In
//! mimalloc 3 that call takes the plain path only while the size class's
//! current page has a free block at hand, or when the block size is a power
//! of two; otherwise it over-allocates (a larger block, shifted into
//! alignment). On fledge's request path 13 of the ~53 allocations per
//! request took that road, among them the request's future, the sessions'
//! buffers and their header maps (callgrind: `_at_generic` and
//! `_at_overalloc`, ~185 instructions each against ~80).
//!
//! Every mimalloc block is already aligned to 16 bytes once it is at least
//! 16 bytes long, and to 8 otherwise (`MI_MAX_ALIGN_SIZE`; size classes are
//! multiples of 16 above 8 bytes and a page's first block is 16-aligned).
//! So a layout whose alignment is at most 16 and at most its size, as for
//! every Rust type up to 16-byte alignment, goes to `mi_malloc`,
//! `mi_zalloc` and `mi_realloc`, the same test the standard library's
//! `System` allocator makes before calling `malloc`; larger alignments keep
//! the aligned calls. Upstream: purpleprotocol/mimalloc_rust#170 (open)
//! proposes the same. Drop this crate for `mimalloc::MiMalloc` once a
//! release does it.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every block of at least this size has (`MI_MAX_ALIGN_SIZE`).
const BLOCK_ALIGN: usize = 16;

/// mimalloc as the global allocator (`#[global_allocator]`).
pub struct Mimalloc;

/// Whether any block mimalloc returns for `size` bytes is aligned enough.
#[inline]
fn block_is_aligned(size: usize, align: usize) -> bool {
    align <= BLOCK_ALIGN && align <= size
}

// SAFETY: each method hands the layout's size (and, where a block's own
// alignment may not do, its alignment) to the mimalloc call documented for
// it: `mi_malloc`/`mi_zalloc`/`mi_realloc` return blocks aligned to
// `BLOCK_ALIGN` when at least that long and to 8 otherwise, or null on
// failure, as `GlobalAlloc` expects; `mi_free` takes any block either family
// returned.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the calls have no preconditions beyond a power-of-two
        // alignment, which `Layout` guarantees.
        unsafe {
            if block_is_aligned(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if block_is_aligned(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of this allocator's calls (the
        // caller's promise), all of which `mi_free` takes.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a live block of this allocator with `layout`
        // (the caller's promise); a block that needed the aligned calls is
        // moved with the aligned call, so it keeps its alignment.
        unsafe {
            if block_is_aligned(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 8 KiB and a few large ones, at every alignment from
    /// 1 to 4 KiB that the size allows a type to have: the block is aligned,
    /// writable to its end, zeroed when asked, and keeps its bytes and
    /// alignment when it grows or shrinks.
    #[test]
    fn blocks_are_aligned_and_usable_in_every_size_class() {
        let a = Mimalloc;
        let sizes = (1usize..=8192).chain([12_000, 65_536, 100_003, 1 << 20, (4 << 20) + 8]);
        for size in sizes {
            for shift in 0..=12 {
                let align = 1usize << shift;
                if align > size.next_power_of_two() {
                    break;
                }
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                // SAFETY: a non-zero size; each block is used within its
                // size and freed once with the layout it was made with.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "size {size} align {align}");
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let grown = a.realloc(p, layout, size * 2 + 1);
                    assert_eq!(grown as usize % align, 0, "grown: size {size} align {align}");
                    assert_eq!(*grown.add(size - 1), 0xA5);
                    let shrunk =
                        a.realloc(grown, Layout::from_size_align(size * 2 + 1, align).unwrap(), size);
                    assert_eq!(shrunk as usize % align, 0, "shrunk: size {size} align {align}");
                    assert_eq!(*shrunk, 0xA5);
                    a.dealloc(shrunk, layout);

                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed: size {size} align {align}");
                    assert!(core::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn alignments_a_block_lacks_are_asked_for() {
        assert!(block_is_aligned(8, 8));
        assert!(block_is_aligned(24, 16));
        assert!(!block_is_aligned(8, 16), "an 8-byte block is only 8-aligned");
        assert!(!block_is_aligned(64, 32));
        assert!(!block_is_aligned(4096, 4096));
    }
}
