//! hitkeep-service through its public API.

mod doctor;
mod jobs;
mod notify;
mod restore;
mod scheduler;
