//! Operating-system helpers that every room may use: owner-only sockets,
//! the wall clock, fault injection, giving memory back, mountinfo fields. Depends on nothing
//! in the crate.

pub mod fault;
pub mod limits;
pub mod memory;
pub mod mountinfo;
pub mod socket;
pub mod time;
