//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does: take the Lease when it is free or expired (a
//! compare-and-swap on its resourceVersion), renew it every [`RETRY`], and give
//! the work up as soon as a renewal fails — so several `sextant server`s can run
//! and exactly one schedules at a time.

use std::{future::Future, time::Duration};

use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

/// How long a Lease stays valid without renewal (upstream's default 15 s).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often a leader renews, and a candidate retries (upstream's 2 s).
pub const RETRY: Duration = Duration::from_secs(2);

/// Runs `work` while holding the Lease `kube-system/<name>` as `identity`,
/// forever: when leadership is lost the work is dropped and the election starts
/// again.
pub async fn run_as_leader<F, Fut>(client: Client, name: &str, identity: &str, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    loop {
        // Candidate: try until the Lease is ours.
        loop {
            match try_acquire_or_renew(&leases, name, identity).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(lease = name, error = %e, "leader election attempt failed")
                }
            }
            tokio::time::sleep(RETRY).await;
        }
        tracing::info!(lease = name, identity, "became the leader");
        // Leader: work until a renewal fails.
        let renew = async {
            loop {
                tokio::time::sleep(RETRY).await;
                match try_acquire_or_renew(&leases, name, identity).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(lease = name, error = %e, "renewing the lease failed");
                        return;
                    }
                }
            }
        };
        tokio::select! {
            () = work() => return,
            () = renew => tracing::warn!(lease = name, identity, "lost the leadership"),
        }
    }
}

/// Takes or renews the Lease; `Ok(false)` when someone else holds it validly.
async fn try_acquire_or_renew(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let seconds = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15);
    let Some(mut lease) = leases.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("kube-system".to_owned()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let ours = spec.holder_identity.as_deref() == Some(identity);
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let valid = jiff::SignedDuration::from_secs(i64::from(
            spec.lease_duration_seconds.unwrap_or(seconds),
        ));
        t.0.checked_add(valid).is_ok_and(|until| until < now)
    });
    if !ours && !expired {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(identity.to_owned());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(MicroTime(now));
    // The resourceVersion in the object makes this a compare-and-swap.
    match leases.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
