//! Helpers shared by the integration tests. Each test binary uses a part of them.
#![allow(dead_code, unreachable_pub)]

#[macro_use]
pub mod ledgers;
pub mod receiver;
pub mod redis;
pub mod rig;
pub mod webdriver;
