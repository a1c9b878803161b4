//! route-svc: node registry and the routing-state `Sync` stream (filled by the route-svc issue).
