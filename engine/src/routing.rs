//! Group id → offsets partition mapping.
