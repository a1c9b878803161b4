//! `authentication.k8s.io/v1` TokenReviews of the ServiceAccount tokens the stand-in issued, as
//! the API server answers them for bound, projected tokens: the service account as user, the pod
//! it is bound to in `extra`, and the audiences it is valid for (none in common: not
//! authenticated, with the API server's error).

use std::collections::HashMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};

/// What a token the stand-in issued stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundToken {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The pod the token is bound to.
    pub pod: String,
    /// That pod's uid.
    pub pod_uid: String,
    /// Who may accept it.
    pub audiences: Vec<String>,
}

/// The tokens issued so far.
#[derive(Debug, Default)]
pub struct Tokens(HashMap<String, BoundToken>);

impl Tokens {
    /// Issues a token for `bound`.
    pub fn issue(&mut self, bound: BoundToken) -> String {
        let token = format!("standin-sa-token-{}-{}", self.0.len() + 1, bound.pod_uid);
        self.0.insert(token.clone(), bound);
        token
    }

    /// Revokes `token` (as deleting its pod does).
    pub fn revoke(&mut self, token: &str) {
        self.0.remove(token);
    }

    /// The review of `review.spec.token` for `review.spec.audiences`.
    pub fn review(&self, mut review: TokenReview) -> TokenReview {
        let token = review.spec.token.clone().unwrap_or_default();
        let asked = review.spec.audiences.clone().unwrap_or_default();
        review.status = Some(match self.0.get(&token) {
            None => refused("invalid bearer token".to_owned()),
            Some(bound) => {
                let common: Vec<String> = if asked.is_empty() {
                    bound.audiences.clone()
                } else {
                    asked
                        .iter()
                        .filter(|a| bound.audiences.contains(a))
                        .cloned()
                        .collect()
                };
                if common.is_empty() {
                    refused(format!(
                        "[invalid bearer token, token audiences {:?} is invalid for the target audiences {asked:?}]",
                        bound.audiences
                    ))
                } else {
                    authenticated(bound, common)
                }
            }
        });
        review
    }
}

fn refused(error: String) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: Some(false),
        error: Some(error),
        ..TokenReviewStatus::default()
    }
}

fn authenticated(bound: &BoundToken, audiences: Vec<String>) -> TokenReviewStatus {
    let extra = [
        (
            "authentication.kubernetes.io/pod-name".to_owned(),
            vec![bound.pod.clone()],
        ),
        (
            "authentication.kubernetes.io/pod-uid".to_owned(),
            vec![bound.pod_uid.clone()],
        ),
    ]
    .into();
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(audiences),
        user: Some(UserInfo {
            username: Some(format!(
                "system:serviceaccount:{}:{}",
                bound.namespace, bound.service_account
            )),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{}", bound.namespace),
                "system:authenticated".to_owned(),
            ]),
            extra: Some(extra),
            uid: Some(format!("sa-uid-{}", bound.service_account)),
        }),
        error: None,
    }
}
