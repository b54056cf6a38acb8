//! SQLite's memory, taken from the process's allocator instead of the C library's `malloc`.
//!
//! Left alone, SQLite allocates through glibc on the sqlx worker threads: each thread grows an
//! arena of its own (2.8–5 MB resident each at a million devices) and lookups that miss the
//! cache spent 18 % of those threads in glibc `malloc`/`free`, plus a global mutex per call for
//! SQLite's memory statistics, which nothing reads. Routing SQLite through Rust's global
//! allocator (mimalloc in the binary) removes the arenas and the mutex (docs/performance.md,
//! "Performance, round two").

use std::alloc::{Layout, alloc, dealloc, realloc};
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::Once;

use libsqlite3_sys as ffi;

/// Each block starts with its size: SQLite asks for it back (`xSize`), and `dealloc` needs it.
/// Eight bytes keep the block after it at SQLite's required 8-byte alignment.
const HEADER: usize = 8;
const ALIGN: usize = 8;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, ALIGN).ok()
}

/// SAFETY (for the callers below): `block` was returned by `x_malloc` or `x_realloc` and not
/// freed since, so `HEADER` bytes before it hold its size.
unsafe fn base_and_size(block: *mut c_void) -> (*mut u8, usize) {
    // SAFETY: see above; the header is 8-byte aligned.
    unsafe {
        let base = block.cast::<u8>().sub(HEADER);
        (base, base.cast::<usize>().read())
    }
}

/// SAFETY: `base` points to a fresh allocation of at least `HEADER + size` bytes.
unsafe fn finish(base: *mut u8, size: usize) -> *mut c_void {
    if base.is_null() {
        return null_mut();
    }
    // SAFETY: see above.
    unsafe {
        base.cast::<usize>().write(size);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Some((size, layout)) = usize::try_from(n).ok().and_then(|s| Some((s, layout(s)?))) else {
        return null_mut();
    };
    // SAFETY: the layout is never zero-sized (it holds the header).
    unsafe { finish(alloc(layout), size) }
}

unsafe extern "C" fn x_free(block: *mut c_void) {
    if block.is_null() {
        return;
    }
    // SAFETY: SQLite frees only what it got from us, once.
    unsafe {
        let (base, size) = base_and_size(block);
        if let Some(layout) = layout(size) {
            dealloc(base, layout);
        }
    }
}

unsafe extern "C" fn x_realloc(block: *mut c_void, n: c_int) -> *mut c_void {
    if block.is_null() {
        // SAFETY: plain allocation.
        return unsafe { x_malloc(n) };
    }
    let Ok(size) = usize::try_from(n) else {
        return null_mut();
    };
    // SAFETY: `block` is ours (SQLite's contract); the new size keeps the same alignment and
    // is not zero; on failure the old block stays valid, as SQLite expects.
    unsafe {
        let (base, old) = base_and_size(block);
        let (Some(old_layout), Some(new_layout)) = (layout(old), layout(size)) else {
            return null_mut();
        };
        finish(realloc(base, old_layout, new_layout.size()), size)
    }
}

unsafe extern "C" fn x_size(block: *mut c_void) -> c_int {
    if block.is_null() {
        return 0;
    }
    // SAFETY: SQLite asks only about blocks it holds.
    let (_, size) = unsafe { base_and_size(block) };
    c_int::try_from(size).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    // Sizes are kept exactly; SQLite only needs them multiples of 8.
    n.checked_add(7).map_or(n, |m| m & !7)
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Installs the allocator and turns SQLite's memory statistics off, once per process, before
/// the first SQLite connection opens (SQLite accepts neither later: it then answers
/// `SQLITE_MISUSE` and keeps its defaults, which work, only slower).
pub fn configure() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: null_mut(),
        };
        // SAFETY: called before SQLite is initialised in this process (the first `Store::open`
        // of a SQLite database), from one thread (`Once`); SQLite copies `methods` before it
        // returns.
        let (malloc, memstatus) = unsafe {
            (
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &raw const methods),
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int),
            )
        };
        if malloc != ffi::SQLITE_OK || memstatus != ffi::SQLITE_OK {
            tracing::debug!(
                malloc,
                memstatus,
                "SQLite was initialised before pushgate configured its memory: defaults kept"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_size_and_contents_through_realloc() {
        // SAFETY: the allocator's own contract, exercised as SQLite uses it.
        unsafe {
            let p = x_malloc(13).cast::<u8>();
            assert!(!p.is_null());
            assert_eq!(p as usize % 8, 0);
            assert_eq!(x_size(p.cast()), 13);
            for i in 0..13 {
                p.add(i).write(i as u8);
            }
            let q = x_realloc(p.cast(), 4096).cast::<u8>();
            assert!(!q.is_null());
            assert_eq!(x_size(q.cast()), 4096);
            assert!((0..13).all(|i| q.add(i).read() == i as u8));
            let r = x_realloc(q.cast(), 5).cast::<u8>();
            assert_eq!(x_size(r.cast()), 5);
            assert!((0..5).all(|i| r.add(i).read() == i as u8));
            x_free(r.cast());
            x_free(null_mut());
            assert!(x_malloc(-1).is_null());
            assert_eq!(x_roundup(13), 16);
            assert_eq!(x_roundup(16), 16);
            assert_eq!(x_roundup(c_int::MAX), c_int::MAX);
        }
    }

    /// Once a store is open, SQLite's blocks are ours: their size is exactly what was asked for
    /// (glibc would report 1,016 usable bytes for this one).
    #[tokio::test]
    async fn sqlite_allocates_through_us_once_a_store_is_open() {
        let _store = crate::storage::Store::open("sqlite::memory:")
            .await
            .unwrap();
        // SAFETY: a block from SQLite's allocator, measured and given back.
        unsafe {
            let p = ffi::sqlite3_malloc(1004);
            assert!(!p.is_null());
            assert_eq!(ffi::sqlite3_msize(p), 1004);
            ffi::sqlite3_free(p);
        }
    }
}
