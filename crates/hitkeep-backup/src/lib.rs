//! Snapshots of HitKeep's DuckDB databases: export, upload with manifests, listing, verification, pruning
//! and restore. Not implemented yet; the snapshots and restore issues fill it in.
//!
//! What this crate will not do: talk to object storage except through hitkeep-storage, or read settings
//! from the environment.

#![deny(missing_docs)]
