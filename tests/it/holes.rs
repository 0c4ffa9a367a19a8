//! Tests for the holes an audit found: each failed before its fix.
