//! Audit log (S1): being written.
