//! # introvisor-ept
//!
//! The introvisor backend for a hypervisor that owns Intel EPT. This crate is a
//! placeholder that builds: the backend itself (EPT hierarchies, views, VM exits turned
//! into events) is planned in a later issue.

#![no_std]

pub use introvisor;
