//! Tests of promises the README makes that no other test checked.
