//! Restore (in progress).
