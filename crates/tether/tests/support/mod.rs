//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod chaos_proxy;
pub(crate) mod numbered;
pub(crate) mod pki;
pub(crate) mod proxies;
pub(crate) mod redis;
pub(crate) mod session_client;
