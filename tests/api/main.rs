//! Integration tests: one binary, one module per area of the API.

mod helpers;

mod auth;
mod bad_input;
mod callbacks;
mod drain;
mod enqueue;
mod faults;
mod flow;
mod generated_client;
mod health;
mod healthcheck;
mod hostile;
mod jobs;
mod leases;
mod lifecycle;
mod limits;
mod metrics;
mod openapi;
mod pg_cluster;
mod process;
mod requeue;
mod security;
mod stress;
