//! Per-site retention archives: expired rows to Parquet, verified, then deleted. Not implemented yet; the
//! retention-archives issue fills it in.
//!
//! What this crate will not do: talk to object storage except through hitkeep-storage, or read settings
//! from the environment.

#![deny(missing_docs)]
