//! The `brindle` command's library side: the multi-node network-namespace lab.

pub mod lab;
