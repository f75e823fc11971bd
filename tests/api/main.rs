//! Integration tests: one binary, one module per area of the API.

mod helpers;

mod auth;
mod bad_input;
mod enqueue;
mod health;
mod jobs;
mod limits;
