//! Between policy-svc's stored objects and traces and `brindle.policy.v1` messages (the view and
//! endpoint messages are `policy_api::convert`'s).

use brindle_proto::policy::v1 as pb;
use policy_api::model::Direction;

use crate::core::objects::Object;
use crate::core::trace::{Step, Trace, Verdict};

/// A stored object as a message.
pub fn object_to_proto(object: Object) -> pb::Object {
    pb::Object {
        kind: object.kind.as_str().to_owned(),
        namespace: object.namespace,
        name: object.name,
        manifest: object.manifest,
        revision: object.revision,
        origin: object.origin.as_str().to_owned(),
    }
}

fn verdict_to_proto(verdict: Verdict) -> pb::Verdict {
    match verdict {
        Verdict::Allow => pb::Verdict::Allow,
        Verdict::Deny => pb::Verdict::Deny,
    }
}

fn step_to_proto(step: &Step) -> pb::TraceStep {
    pb::TraceStep {
        direction: match step.direction {
            Direction::Ingress => pb::Direction::Ingress,
            Direction::Egress => pb::Direction::Egress,
        }
        .into(),
        endpoint: step.endpoint.clone(),
        policy: step.policy.as_ref().map(ToString::to_string).unwrap_or_default(),
        rule_index: step.rule.and_then(|r| i32::try_from(r).ok()).unwrap_or(-1),
        verdict: verdict_to_proto(step.verdict).into(),
        explanation: step.explanation.clone(),
        logged: step
            .logged
            .iter()
            .map(|(policy, index)| format!("{policy}/{index}"))
            .collect(),
    }
}

/// A trace as a message.
pub fn trace_to_proto(
    trace: &Trace,
    staged: Option<&Trace>,
    source_ip: String,
    destination_ip: String,
) -> pb::TraceResponse {
    pb::TraceResponse {
        verdict: verdict_to_proto(trace.verdict).into(),
        steps: trace.steps.iter().map(step_to_proto).collect(),
        source_ip,
        destination_ip,
        staged_verdict: staged.map(|s| verdict_to_proto(s.verdict).into()),
        staged_steps: staged
            .map(|s| s.steps.iter().map(step_to_proto).collect())
            .unwrap_or_default(),
    }
}
