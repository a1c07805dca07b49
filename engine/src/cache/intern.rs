//! Topic-name interning: each distinct topic name is stored once per cache, however many
//! groups commit offsets for it.
//!
//! The interner itself is writer-only (a `HashMap` keyed by the interned text, without a
//! second copy of it); readers only ever follow a topic node's pointer to its [`Interned`]
//! name. A name whose last topic node goes away is handed back for retirement through the
//! epoch scheme, because a pinned reader may still be comparing against it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;

use crate::sync::Canary;

/// An interned name, immutable once published.
pub(crate) struct Interned {
    pub(crate) canary: Canary,
    pub(crate) text: Box<str>,
}

/// A map key that borrows its text from the interned allocation, so the name is stored once.
struct Key(NonNull<Interned>);

impl Key {
    fn text(&self) -> &str {
        // SAFETY: the interner owns every allocation its keys point at and frees one only
        // after removing its key.
        unsafe { &self.0.as_ref().text }
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.text()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must agree with `str`'s `Hash`, as `Borrow<str>` requires.
        self.text().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl Eq for Key {}

/// Writer-side interner: name → (allocation, number of topic nodes using it).
#[derive(Default)]
pub(crate) struct Interner {
    map: HashMap<Key, usize>,
}

// SAFETY: the raw pointers are owned allocations of immutable text; the interner moves
// between threads only with the writer (or, on teardown, to the last owner of the cache).
unsafe impl Send for Interner {}

impl Interner {
    /// The interned copy of `name`, counting one more user.
    pub(crate) fn acquire(&mut self, name: &str) -> NonNull<Interned> {
        if let Some(ptr) = self.map.get_key_value(name).map(|(key, _)| key.0) {
            if let Some(refs) = self.map.get_mut(name) {
                *refs += 1;
            }
            return ptr;
        }
        let boxed = Box::new(Interned {
            canary: Canary::new(),
            text: name.into(),
        });
        let ptr = NonNull::from(Box::leak(boxed));
        self.map.insert(Key(ptr), 1);
        ptr
    }

    /// Drops one user of `ptr`; returns the allocation when it was the last, for the caller
    /// to retire (readers may still hold it).
    pub(crate) fn release(&mut self, ptr: NonNull<Interned>) -> Option<Box<Interned>> {
        // SAFETY: `ptr` came from `acquire` and has users, so it is alive.
        let text: &str = unsafe { &ptr.as_ref().text };
        let refs = self.map.get_mut(text)?;
        *refs -= 1;
        if *refs > 0 {
            return None;
        }
        self.map.remove(text);
        // SAFETY: allocated by `Box` in `acquire`; its key is gone, so this is the only owner.
        Some(unsafe { Box::from_raw(ptr.as_ptr()) })
    }

    /// Distinct names held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Heap bytes: the names, their headers and the map's table (approximate: one control
    /// byte per bucket, as in `hashbrown`).
    pub(crate) fn heap_bytes(&self) -> usize {
        let names: usize = self
            .map
            .keys()
            .map(|k| std::mem::size_of::<Interned>() + k.text().len())
            .sum();
        names + self.map.capacity() * (std::mem::size_of::<(Key, usize)>() + 1)
    }
}

impl Drop for Interner {
    fn drop(&mut self) {
        for (key, _) in self.map.drain() {
            // SAFETY: owned by the interner (see `Key::text`); dropped exactly once here.
            drop(unsafe { Box::from_raw(key.0.as_ptr()) });
        }
    }
}
