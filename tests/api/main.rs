//! Integration tests: one binary, one module per area of the API.

mod helpers;

mod auth;
mod bad_input;
mod callbacks;
mod drain;
mod enqueue;
mod health;
mod jobs;
mod leases;
mod limits;
mod process;
mod security;
mod stress;
