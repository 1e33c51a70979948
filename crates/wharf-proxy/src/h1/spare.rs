//! Buffers a busy period gives back when it ends, kept for the next busy
//! period on the same thread (HAProxy keeps its buffers in pools the same
//! way). An idle connection holds no buffer (docs/benchmarks.md, memory per
//! idle connection); without these, each busy period would take its read,
//! backend and output buffers and its field lists from the allocator again
//! (its slow path, for blocks freed a moment before) and grow them.
//!
//! Bounded: at most [`KEEP`] of each kind per thread, a byte buffer only up
//! to [`KEEP_BYTES`] of capacity, so what the threads keep is at most
//! 2 MiB each, and in steady load a few buffers of 4 KiB.

use std::cell::RefCell;

use super::wire::Field;

/// How many of each kind a thread keeps.
const KEEP: usize = 32;
/// A byte buffer with more capacity than this goes back to the allocator.
const KEEP_BYTES: usize = 64 * 1024;

thread_local! {
    static BYTES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FIELDS: RefCell<Vec<Vec<Field>>> = const { RefCell::new(Vec::new()) };
}

/// An empty byte buffer: a kept one, else a new one without an allocation.
pub(super) fn bytes() -> Vec<u8> {
    BYTES
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// An empty field list: a kept one, else a new one without an allocation.
pub(super) fn fields() -> Vec<Field> {
    FIELDS
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps `v`'s allocation for another busy period, or frees it.
pub(super) fn give_bytes(mut v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > KEEP_BYTES {
        return;
    }
    v.clear();
    keep(&BYTES, v);
}

/// Keeps `v`'s allocation for another busy period, or frees it.
pub(super) fn give_fields(mut v: Vec<Field>) {
    if v.capacity() == 0 {
        return;
    }
    v.clear();
    keep(&FIELDS, v);
}

fn keep<T: 'static>(pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>, v: T) {
    // At thread exit the pool may be gone: `v` is then freed.
    let _ = pool.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_number_of_bounded_buffers() {
        // A thread of its own: the pools are per thread.
        std::thread::spawn(|| {
            assert_eq!(bytes().capacity(), 0);
            let mut v = Vec::with_capacity(4096);
            v.extend_from_slice(b"left over");
            give_bytes(v);
            let v = bytes();
            assert!(v.is_empty() && v.capacity() >= 4096);
            give_bytes(Vec::with_capacity(KEEP_BYTES + 1));
            assert_eq!(bytes().capacity(), 0, "too large to keep");
            for _ in 0..KEEP + 5 {
                give_bytes(Vec::with_capacity(16));
                give_fields(Vec::with_capacity(16));
            }
            let kept = std::iter::from_fn(|| Some(bytes()))
                .take_while(|v| v.capacity() > 0)
                .count();
            assert_eq!(kept, KEEP);
            let kept = std::iter::from_fn(|| Some(fields()))
                .take_while(|v| v.capacity() > 0)
                .count();
            assert_eq!(kept, KEEP);
        })
        .join()
        .unwrap();
    }
}
