//! Join tokens: `<id>.<secret>` made by an administrator for one node and usable until they
//! expire (as kubeadm's bootstrap tokens). Only a SHA-256 of the secret is stored, under
//! `/brindle/v1/identity/join-tokens/<id>`; redeeming one compares in constant time, and checks
//! the node and the expiry.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brindle_datastore::{Store, Txn};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::IdentityError;

/// Prefix of the stored tokens.
const PREFIX: &str = "/brindle/v1/identity/join-tokens/";
/// Longest a token may be usable.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A token's lifetime when none is asked for.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Characters of a token's id and secret.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;

/// A token as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredToken {
    node: String,
    secret_sha256: String,
    expires_unix: i64,
}

/// The join tokens in the datastore.
#[derive(Clone)]
pub struct JoinTokens {
    store: Arc<dyn Store>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether two digests are equal, in time independent of where they differ.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_text(random: &SystemRandom, len: usize) -> Result<String, IdentityError> {
    let mut bytes = vec![0u8; len];
    random
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Signing("the system's random source failed".to_owned()))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

impl JoinTokens {
    /// The tokens of `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Makes a token for `node`, usable for `ttl` (default one hour, at most [`MAX_TOKEN_TTL`]);
    /// returns it and when it expires.
    pub async fn create(&self, node: &str, ttl: Option<Duration>) -> Result<(String, i64), IdentityError> {
        if !route_api::model::valid_node_name(node) {
            return Err(IdentityError::Invalid {
                field: "node",
                reason: format!("{node:?} is not a DNS-1123 subdomain"),
            });
        }
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        if ttl > MAX_TOKEN_TTL {
            return Err(IdentityError::Invalid {
                field: "ttl_seconds",
                reason: format!("{} s is longer than {} s", ttl.as_secs(), MAX_TOKEN_TTL.as_secs()),
            });
        }
        let random = SystemRandom::new();
        let (id, secret) = (random_text(&random, ID_LEN)?, random_text(&random, SECRET_LEN)?);
        let expires_unix = now_unix() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let stored = StoredToken {
            node: node.to_owned(),
            secret_sha256: sha256_hex(&secret),
            expires_unix,
        };
        let key = format!("{PREFIX}{id}");
        let value = serde_json::to_vec(&stored).unwrap_or_default();
        self.store
            .txn(Txn::new().if_absent(&key).put(&key, value))
            .await?;
        Ok((format!("{id}.{secret}"), expires_unix))
    }

    /// Checks that `token` was made for `node` and has not expired (an expired one is deleted).
    pub async fn redeem(&self, token: &str, node: &str) -> Result<(), IdentityError> {
        let refused = |reason: &str| IdentityError::TokenRefused(reason.to_owned());
        let (id, secret) = token
            .split_once('.')
            .filter(|(id, secret)| id.len() == ID_LEN && secret.len() == SECRET_LEN)
            .ok_or_else(|| refused("not of the form <id>.<secret>"))?;
        if !id.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(refused("not of the form <id>.<secret>"));
        }
        let key = format!("{PREFIX}{id}");
        let Some(kv) = self.store.get(&key).await? else {
            return Err(refused("unknown or expired"));
        };
        let stored: StoredToken = serde_json::from_slice(&kv.value).map_err(|e| IdentityError::Corrupt {
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
        if stored.expires_unix <= now_unix() {
            // Gone for good: a failed delete only leaves it for the next attempt to find expired.
            let _ = self
                .store
                .txn(Txn::new().if_mod_revision(&key, kv.mod_revision).delete(&key))
                .await;
            return Err(refused("unknown or expired"));
        }
        if !same_digest(&stored.secret_sha256, &sha256_hex(secret)) {
            return Err(refused("unknown or expired"));
        }
        if stored.node != node {
            return Err(IdentityError::TokenRefused(format!(
                "it was made for node {:?}, not {node:?}",
                stored.node
            )));
        }
        Ok(())
    }
}
