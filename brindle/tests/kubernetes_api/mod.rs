//! A Kubernetes API for a lab: kube-standin (the tests' stand-in, never shipped) listening in the
//! lab's control namespace, and the real `kube-sync` binary started there against it.

use std::time::Duration;

use brindle::lab::Lab;
use kube_standin::StandIn;

/// The stand-in and what keeps it running.
pub struct KubernetesApi {
    /// The API.
    pub api: StandIn,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// Starts the stand-in in `lab`'s control namespace (bookmarks every `bookmark_every`) and
/// kube-sync following it.
pub fn start(lab: &Lab, bookmark_every: Duration) -> KubernetesApi {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = lab
        .control_namespace()
        .spawn(|| Ok(std::net::TcpListener::bind("127.0.0.1:0")?))
        .join()
        .expect("thread")
        .expect("a port in the control namespace");
    let api = {
        let _entered = runtime.enter();
        StandIn::start_on(listener, bookmark_every).expect("stand-in")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path()).expect("kubeconfig");
    lab.start_kube_sync(&kubeconfig).expect("kube-sync");
    KubernetesApi {
        api,
        _runtime: runtime,
        _dir: dir,
    }
}
