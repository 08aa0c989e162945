//! Repository format (in progress).
