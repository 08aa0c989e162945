//! Progress reporting (in progress).
