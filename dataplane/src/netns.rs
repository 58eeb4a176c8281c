//! Running netlink work inside another network namespace: a thread enters it
//! (`setns` changes only the calling thread) and drives the work on a runtime of
//! its own, since a netlink socket belongs to the namespace it was opened in.

use std::{fs::File, future::Future};

use nix::sched::CloneFlags;

use crate::veth::LinkError;

/// Runs `work` on a thread inside the network namespace `ns`, and returns its output.
pub async fn run_in<F, Fut, T>(ns: &File, work: F) -> Result<T, LinkError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let ns = ns.try_clone().map_err(|source| LinkError::Io {
        what: "duplicating the namespace handle".into(),
        source,
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sextant-netns".into())
        .spawn(move || {
            let result = (|| {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| LinkError::Io {
                    what: "entering the pod's network namespace".into(),
                    source: e.into(),
                })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| LinkError::Io {
                        what: "starting a runtime in the pod's namespace".into(),
                        source,
                    })?;
                Ok(rt.block_on(work()))
            })();
            // The receiver only goes away when the caller was cancelled.
            let _ = tx.send(result);
        })
        .map_err(|source| LinkError::Io {
            what: "spawning the namespace thread".into(),
            source,
        })?;
    rx.await.map_err(|_| LinkError::Io {
        what: "the namespace thread".into(),
        source: std::io::Error::other("it stopped without an answer"),
    })?
}
