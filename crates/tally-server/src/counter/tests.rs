//! Actor tests.
