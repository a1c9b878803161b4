//! ipam-svc: pools, per-node blocks, handles, reservations, release, check and GC (filled by the ipam-svc issue).
