//! # introvisor-ept
//!
//! The introvisor backend for a hypervisor that owns Intel EPT. This crate is a
//! placeholder that builds: the backend itself (EPT hierarchies, views, VM exits turned
//! into events) is planned in a later issue.

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use introvisor;

/// The crate's README, its example compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
