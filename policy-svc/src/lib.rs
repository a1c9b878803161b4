//! policy-svc: selectors, policies and per-node policy views (filled by the policy-svc issue).
