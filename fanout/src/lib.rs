//! Snapshot + delta streaming of keyed state to many subscribers (filled by the route-svc issue).
