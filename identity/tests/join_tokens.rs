//! Join tokens on the embedded store: one is usable by its own node until it expires, never by
//! another node or with another secret; an expired one is refused and removed; malformed ones and
//! bad requests are refused naming what is wrong.

use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::{Store, Txn};
use brindle_grpc_server::testing::embedded_store;
use brindle_identity::{IdentityError, JoinTokens, MAX_TOKEN_TTL};

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_token_serves_its_node_until_it_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = embedded_store(dir.path()).await;
    let tokens = JoinTokens::new(Arc::clone(&store));

    let (token, _) = tokens.create("node-a", None).await.expect("token");
    tokens.redeem(&token, "node-a").await.expect("its node");
    tokens
        .redeem(&token, "node-a")
        .await
        .expect("again, until it expires");
    let refused = tokens.redeem(&token, "node-b").await.expect_err("another node");
    assert!(
        refused.to_string().contains("made for node \"node-a\""),
        "{refused}"
    );
    let (id, secret) = token.split_once('.').expect("id.secret");
    let wrong_secret = format!("{id}.{}", secret.chars().rev().collect::<String>());
    assert!(matches!(
        tokens.redeem(&wrong_secret, "node-a").await,
        Err(IdentityError::TokenRefused(_))
    ));
    for malformed in ["", "nodot", "ABCDEF.0123456789abcdef", "abc.def", "abcdef.short"] {
        assert!(
            matches!(
                tokens.redeem(malformed, "node-a").await,
                Err(IdentityError::TokenRefused(_))
            ),
            "{malformed:?}"
        );
    }

    // An expired token is refused, and gone.
    let key = "/brindle/v1/identity/join-tokens/abcdef";
    let expired = format!(
        r#"{{"node":"node-a","secret_sha256":"{}","expires_unix":1}}"#,
        sha256_hex("0123456789abcdef")
    );
    store
        .txn(Txn::new().put(key, expired.into_bytes()))
        .await
        .expect("an expired token");
    let refused = tokens
        .redeem("abcdef.0123456789abcdef", "node-a")
        .await
        .expect_err("expired");
    assert!(refused.to_string().contains("expired"), "{refused}");
    assert!(
        store.get(key).await.expect("get").is_none(),
        "the expired token stayed"
    );

    // Requests that cannot be: a node name that is not one, a lifetime past the limit.
    let invalid = tokens.create("Not A Node", None).await.expect_err("bad name");
    assert!(
        matches!(invalid, IdentityError::Invalid { field: "node", .. }),
        "{invalid}"
    );
    let invalid = tokens
        .create("node-a", Some(MAX_TOKEN_TTL + Duration::from_secs(1)))
        .await
        .expect_err("too long");
    assert!(
        matches!(
            invalid,
            IdentityError::Invalid {
                field: "ttl_seconds",
                ..
            }
        ),
        "{invalid}"
    );
}
