//! Shared helpers for coffer integration tests.
