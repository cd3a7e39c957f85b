//! Shared by the bench binaries. Each uses only part of it, hence the `dead_code` allow.
#![allow(dead_code)]

pub mod alloc;
pub mod callgrind;
pub mod redis_server;
pub mod report;
