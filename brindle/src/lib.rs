//! The `brindle` command's library side: the multi-node network-namespace lab and the small PKI
//! behind `brindle certs`.

pub mod certs;
pub mod lab;
