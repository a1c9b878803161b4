//! Records stored under earlier rules: a brindle policy whose id reads as another kind's (written
//! before such names were refused) is not enforced — the other policy keeps its rules — and stays
//! listable and deletable through the API.

use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::Txn;
use brindle_fanout::FanoutConfig;
use brindle_grpc_server::testing::embedded_store;
use policy_api::model::{Origin, PolicyId};
use policy_svc::core::PolicyError;
use policy_svc::core::objects::{Kind, Objects};
use policy_svc::core::records::{Record, decode_enforced, encode};
use policy_svc::core::resource::{Resource, parse_documents};
use policy_svc::grpc::PolicyService;

const GLOBAL_X: &str =
    "apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\nspec: {order: 1}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_brindle_policy_with_another_kinds_id_is_not_enforced_but_stays_deletable() {
    let dir = tempfile::tempdir().expect("dir");
    let store = embedded_store(dir.path()).await;
    let objects = Objects::new(Arc::clone(&store));
    objects.apply(GLOBAL_X, "", Origin::Apply).await.expect("apply");
    // The NetworkPolicy `x` in the namespace `global` as an earlier policy-svc stored it: its id
    // reads `global/x`, the GlobalNetworkPolicy's.
    let resources = parse_documents(GLOBAL_X, "").expect("parse");
    let [Resource::Policy(policy)] = resources.as_slice() else {
        panic!("{resources:?}");
    };
    let mut legacy = policy.clone();
    legacy.id = PolicyId::Namespaced {
        namespace: "global".into(),
        name: "x".into(),
    };
    legacy.order = Some(7.0);
    let legacy_id = legacy.id.clone();
    let (key, value) = encode(&Record::Policy(legacy, None));
    // Read back for the calculation, it is refused as not enforced (it decodes: not corrupt).
    match decode_enforced(&key, &value) {
        Err(error @ PolicyError::NotEnforced { .. }) => {
            assert!(error.to_string().contains("is not enforced"), "{error}");
        }
        other => panic!("expected NotEnforced, got {other:?}"),
    }
    store.txn(Txn::new().put(key, value)).await.expect("stored");

    // On start-up (a full list) and when written again (a watch event), the global policy keeps
    // its rules and the stored one is left out.
    let service = PolicyService::start(Arc::clone(&store), FanoutConfig::default());
    let enforced = |service: &PolicyService| {
        service.hub().with_state(|state, _| {
            (
                state
                    .policy(&PolicyId::Global { name: "x".into() })
                    .map(|p| p.order),
                state.policy(&legacy_id).is_some(),
            )
        })
    };
    until(|| enforced(&service) == (Some(Some(1.0)), false)).await;
    let revision = store.revision().await.expect("revision");
    let (key, value) = store
        .get(&policy_svc::core::records::policy_key(&legacy_id))
        .await
        .expect("get")
        .map(|kv| (kv.key, kv.value))
        .expect("stored");
    store.txn(Txn::new().put(key, value)).await.expect("rewritten");
    until(|| service.hub().revision() > revision).await;
    assert_eq!(enforced(&service), (Some(Some(1.0)), false));

    // The API still shows it, and deletes it.
    let listed = objects
        .list(Some(Kind::NetworkPolicy), "global", None)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    objects
        .delete(Kind::NetworkPolicy, "global", "x", None)
        .await
        .expect("delete");
    let listed = objects.list(None, "", None).await.expect("list");
    assert_eq!(listed.len(), 1, "only the GlobalNetworkPolicy: {listed:?}");
    until(|| service.hub().revision() > revision + 1).await;
    assert_eq!(enforced(&service), (Some(Some(1.0)), false));
}

async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(done(), "not reached in 5 s");
}
