//! hitkeep-service through its public API.

mod doctor;
mod notify;
mod restore;
mod jobs;
mod scheduler;
