//! The stand-in's HTTP side: the API's URL layout (`/api/v1/…`, `/apis/<group>/<version>/…`,
//! cluster-wide and per namespace), list pages, single objects, and watch streams of
//! newline-delimited JSON events.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use k8s_openapi::api::authentication::v1::TokenReview;

use crate::store::{Kind, Objects, Watch, WatchStart, status};
use crate::token_review::Tokens;

type Body = BoxBody<Bytes, Infallible>;

/// Where TokenReviews are created.
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// Serves requests until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    objects: Arc<Mutex<Objects>>,
    tokens: Arc<Mutex<Tokens>>,
    bookmark_every: Duration,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (objects, tokens) = (objects.clone(), tokens.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (objects, tokens) = (objects.clone(), tokens.clone());
                async move {
                    let response = match request.method() {
                        &Method::POST if request.uri().path() == TOKEN_REVIEWS => {
                            token_review(&tokens, request).await
                        }
                        &Method::POST | &Method::PUT => write(&objects, request).await,
                        _ => respond(&objects, &request, bookmark_every),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "stand-in connection ended");
            }
        });
    }
}

fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Creates a TokenReview: answers it (201 Created, as the API server does).
async fn token_review(tokens: &Mutex<Tokens>, request: Request<Incoming>) -> Response<Body> {
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return failure(StatusCode::BAD_REQUEST, "BadRequest", error.to_string()),
    };
    match serde_json::from_slice::<TokenReview>(&body) {
        Ok(review) => {
            let reviewed = lock(tokens).review(review);
            json_response(
                StatusCode::CREATED,
                serde_json::to_string(&reviewed).unwrap_or_default(),
            )
        }
        Err(error) => failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("not a TokenReview: {error}"),
        ),
    }
}

fn json_response(code: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn failure(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    json_response(code, status(code.as_u16(), reason, message))
}

/// What a URL names.
struct Target {
    kind: Kind,
    namespace: String,
    name: Option<String>,
}

fn target(objects: &Objects, path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (plural, namespace, name) = match rest {
        [plural] => (*plural, "", None),
        ["namespaces", namespace, plural] => (*plural, *namespace, None),
        ["namespaces", namespace, plural, name] => (*plural, *namespace, Some(*name)),
        [plural, name] => (*plural, "", Some(*name)),
        _ => return None,
    };
    Some(Target {
        kind: objects.kind(&api_version, plural)?,
        namespace: namespace.to_owned(),
        name: name.map(str::to_owned),
    })
}

/// The query's parameters (values are not percent-decoded: the ones used never need it).
fn query(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_owned())
    })
}

/// Creates (`POST` to a collection: 201, or 409 when the name is taken) or replaces (`PUT` to
/// an object: 200, or 404 when there is none) an object, as the API server does.
async fn write(objects: &Mutex<Objects>, request: Request<Incoming>) -> Response<Body> {
    let creating = request.method() == Method::POST;
    let Some(target) = target(&lock(objects), request.uri().path()) else {
        let path = request.uri().path().to_owned();
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the stand-in serves no {path}"),
        );
    };
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return failure(StatusCode::BAD_REQUEST, "BadRequest", error.to_string()),
    };
    let mut object: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(object) => object,
        Err(error) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("not JSON: {error}"),
            );
        }
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    if name.is_empty()
        || target.name.as_ref().is_some_and(|n| *n != name)
        || creating == target.name.is_some()
    {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "POST to a collection or PUT to the object's own name, with metadata.name".into(),
        );
    }
    if !target.namespace.is_empty() {
        object["metadata"]["namespace"] = json!(target.namespace);
    }
    let mut locked = lock(objects);
    let exists = locked.get(&target.kind, &target.namespace, &name).is_some();
    if creating && exists {
        return failure(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} {name:?} already exists", target.kind.plural),
        );
    }
    if !creating && !exists {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} {name:?} not found", target.kind.plural),
        );
    }
    locked.put(target.kind.clone(), object);
    let stored = locked
        .get(&target.kind, &target.namespace, &name)
        .unwrap_or_default();
    let code = if creating {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(code, stored.to_string())
}

fn respond(
    objects: &Arc<Mutex<Objects>>,
    request: &Request<Incoming>,
    bookmark_every: Duration,
) -> Response<Body> {
    if request.method() != Method::GET {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the stand-in serves GET (list, get, watch), POST (create), PUT (replace) and the creation of TokenReviews"
                .into(),
        );
    }
    let path = request.uri().path();
    let Some(target) = target(&lock(objects), path) else {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the stand-in serves no {path}"),
        );
    };
    if let Some(name) = &target.name {
        return match lock(objects).get(&target.kind, &target.namespace, name) {
            Some(object) => json_response(StatusCode::OK, object.to_string()),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} {name:?} not found", target.kind.plural),
            ),
        };
    }
    if matches!(query(request, "watch").as_deref(), Some("true" | "1")) {
        let from = query(request, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query(request, "allowWatchBookmarks").as_deref() == Some("true");
        let timeout = query(request, "timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        return watch(
            objects,
            target,
            from,
            bookmarks.then_some(bookmark_every),
            timeout,
        );
    }
    let limit = query(request, "limit")
        .and_then(|v| v.parse().ok())
        .filter(|&l| l > 0);
    let token = query(request, "continue");
    let page = lock(objects).list(&target.kind, &target.namespace, limit, token.as_deref());
    match page {
        Ok(page) => {
            let mut metadata = json!({"resourceVersion": page.revision.to_string()});
            if let Some(next) = page.next {
                metadata["continue"] = json!(next);
            }
            let body = json!({
                "apiVersion": target.kind.api_version,
                "kind": target.kind.list_kind,
                "metadata": metadata,
                "items": page.items,
            });
            json_response(StatusCode::OK, body.to_string())
        }
        Err(status) => json_response(StatusCode::GONE, status),
    }
}

fn watch(
    objects: &Arc<Mutex<Objects>>,
    target: Target,
    from: u64,
    bookmark_every: Option<Duration>,
    timeout: Duration,
) -> Response<Body> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let mut locked = lock(objects);
    let id = locked.next_watch_id();
    let start = locked.watch(
        Watch {
            id,
            kind: target.kind,
            namespace: target.namespace,
            lines: sender,
        },
        from,
    );
    drop(locked);
    let first = match start {
        WatchStart::Gone(status) => {
            let line = format!("{{\"type\":\"ERROR\",\"object\":{status}}}\n");
            return json_response(StatusCode::OK, line);
        }
        WatchStart::Events(lines) => lines,
    };
    if let Some(every) = bookmark_every {
        let objects = Arc::downgrade(objects);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(objects) = objects.upgrade() else { return };
                if !lock(&objects).bookmark(id) {
                    return;
                }
            }
        });
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let live = futures_util::stream::unfold(receiver, move |mut receiver| async move {
        let line = tokio::time::timeout_at(deadline, receiver.recv()).await.ok()??;
        Some((line, receiver))
    });
    let lines = futures_util::stream::iter(first)
        .chain(live)
        .map(|line| Ok::<_, Infallible>(Frame::data(Bytes::from(line + "\n"))));
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(lines)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
