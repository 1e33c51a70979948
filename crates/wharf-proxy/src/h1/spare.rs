//! Buffers a busy period gives back when it ends, kept for the next busy
//! period on the same thread (HAProxy keeps its buffers in pools the same
//! way). An idle connection holds no buffer (docs/benchmarks.md, memory per
//! idle connection); without these, each busy period would take its read,
//! backend and output buffers and its field lists from the allocator again
//! (its slow path, for blocks freed a moment before) and grow them.
//!
//! Bounded: at most [`KEEP`] of each kind per thread, and a byte buffer only
//! up to [`KEEP_BYTES`] of capacity (one that grew past it relaying a body
//! goes back to the allocator), so a thread keeps at most ~0.7 MiB, and in
//! steady load a few buffers of 4 KiB.

use std::cell::RefCell;
use std::thread::LocalKey;

use super::wire::Field;

/// How many of each kind a thread keeps.
const KEEP: usize = 32;
/// A byte buffer with more capacity than this goes back to the allocator: a
/// head's read buffer (4 KiB) and a body's piece (16 KiB) fit.
const KEEP_BYTES: usize = super::READ_CHUNK + super::BODY_CHUNK;

type Pool<T> = RefCell<Vec<Vec<T>>>;

thread_local! {
    static BYTES: Pool<u8> = const { RefCell::new(Vec::new()) };
    static FIELDS: Pool<Field> = const { RefCell::new(Vec::new()) };
}

/// What a thread keeps lists of.
pub(crate) trait Spare: Sized + 'static {
    fn pool() -> &'static LocalKey<Pool<Self>>;
    /// Kept only up to this capacity.
    const MAX: usize;
}

impl Spare for u8 {
    fn pool() -> &'static LocalKey<Pool<u8>> {
        &BYTES
    }
    const MAX: usize = KEEP_BYTES;
}

impl Spare for Field {
    fn pool() -> &'static LocalKey<Pool<Field>> {
        &FIELDS
    }
    const MAX: usize = super::wire::MAX_FIELDS;
}

/// Gives `v` a kept allocation if it has none (it is empty then).
pub(crate) fn ensure<T: Spare>(v: &mut Vec<T>) {
    if v.capacity() == 0 {
        if let Ok(Some(kept)) = T::pool().try_with(|s| s.borrow_mut().pop()) {
            *v = kept;
        }
    }
}

/// Keeps `v`'s allocation for another busy period, emptied, or frees it.
pub(crate) fn give<T: Spare>(mut v: Vec<T>) {
    if v.capacity() == 0 || v.capacity() > T::MAX {
        return;
    }
    v.clear();
    // At thread exit the pool may be gone: `v` is then freed.
    let _ = T::pool().try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken<T: Spare>() -> Vec<T> {
        let mut v = Vec::new();
        ensure(&mut v);
        v
    }

    #[test]
    fn keeps_a_bounded_number_of_bounded_buffers_emptied() {
        // A thread of its own: the pools are per thread.
        std::thread::spawn(|| {
            assert_eq!(taken::<u8>().capacity(), 0);
            let mut v = Vec::with_capacity(4096);
            v.extend_from_slice(b"another connection's bytes");
            give(v);
            let v = taken::<u8>();
            assert!(v.is_empty() && v.capacity() >= 4096);
            // One that has an allocation keeps it.
            let mut own = Vec::with_capacity(10);
            own.push(1u8);
            ensure(&mut own);
            assert_eq!(own, [1]);
            give(Vec::<u8>::with_capacity(KEEP_BYTES + 1));
            assert_eq!(taken::<u8>().capacity(), 0, "too large to keep");
            for _ in 0..KEEP + 5 {
                give(Vec::<u8>::with_capacity(16));
                give(Vec::<Field>::with_capacity(16));
            }
            let kept = std::iter::from_fn(|| Some(taken::<u8>()))
                .take_while(|v| v.capacity() > 0)
                .count();
            assert_eq!(kept, KEEP);
            let kept = std::iter::from_fn(|| Some(taken::<Field>()))
                .take_while(|v| v.capacity() > 0)
                .count();
            assert_eq!(kept, KEEP);
        })
        .join()
        .unwrap();
    }
}
