//! Credential verification: bearer tokens (JWT) and Basic passwords, with the byte-bounded
//! caches of verified credentials.

pub mod basic;
pub mod cache;
pub mod introspection;
pub mod jwt;
pub mod keys;
