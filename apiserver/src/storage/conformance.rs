//! One test suite every [`Store`] backend must pass, so the embedded store and etcd
//! cannot drift apart. Each case panics with its name on failure. Run with
//! [`run_all`] against a fresh store (compaction is last because it affects the
//! whole store). Compiled only with the `conformance` feature.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;

use super::{Error, Event, EventStream, ListOptions, Revision, Store};

const WAIT: Duration = Duration::from_secs(10);

/// Runs every case, in order, against `store`.
pub async fn run_all(store: Arc<dyn Store>) {
    create_and_get(store.as_ref()).await;
    update_is_compare_and_swap(store.as_ref()).await;
    delete_with_and_without_precondition(store.as_ref()).await;
    revisions_are_global_and_increase(store.as_ref()).await;
    list_pages_read_one_snapshot(store.as_ref()).await;
    list_at_a_past_revision(store.as_ref()).await;
    watch_replays_history_then_follows(store.as_ref()).await;
    watch_only_sees_its_prefix(store.as_ref()).await;
    concurrent_compare_and_swap_loses_nothing(store.clone()).await;
    large_lists_come_back_whole(store.as_ref()).await;
    compaction_expires_old_revisions(store.as_ref()).await;
}

/// Create returns the new revisions; a second create is refused; get reads it back.
pub async fn create_and_get(s: &dyn Store) {
    let before = s.current_revision().await.expect("current_revision");
    let kv = s
        .create("/c/create/a", b"one".to_vec())
        .await
        .expect("create");
    assert!(
        kv.mod_revision > before,
        "create_and_get: revision must grow"
    );
    assert_eq!(kv.create_revision, kv.mod_revision, "create_and_get");
    let got = s
        .get("/c/create/a")
        .await
        .expect("get")
        .expect("create_and_get: key present");
    assert_eq!(got, kv, "create_and_get");
    match s.create("/c/create/a", b"two".to_vec()).await {
        Err(Error::AlreadyExists { key }) => assert_eq!(key, "/c/create/a"),
        other => panic!("create_and_get: second create gave {other:?}"),
    }
    assert_eq!(
        s.get("/c/create/a").await.expect("get").map(|k| k.value),
        Some(b"one".to_vec())
    );
    assert_eq!(
        s.get("/c/create/missing").await.expect("get"),
        None,
        "create_and_get"
    );
}

/// Update succeeds only at the expected mod revision.
pub async fn update_is_compare_and_swap(s: &dyn Store) {
    let kv = s
        .create("/c/update/a", b"v1".to_vec())
        .await
        .expect("create");
    let v2 = s
        .update("/c/update/a", b"v2".to_vec(), kv.mod_revision)
        .await
        .expect("update at current revision");
    assert!(
        v2.mod_revision > kv.mod_revision,
        "update_is_compare_and_swap"
    );
    assert_eq!(
        v2.create_revision, kv.create_revision,
        "update keeps the create revision"
    );
    match s
        .update("/c/update/a", b"v3".to_vec(), kv.mod_revision)
        .await
    {
        Err(Error::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!(expected, kv.mod_revision);
            assert_eq!(actual, v2.mod_revision);
        }
        other => panic!("update_is_compare_and_swap: stale update gave {other:?}"),
    }
    match s.update("/c/update/missing", b"x".to_vec(), 1).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("update_is_compare_and_swap: update of a missing key gave {other:?}"),
    }
    assert_eq!(
        s.get("/c/update/a").await.expect("get").map(|k| k.value),
        Some(b"v2".to_vec())
    );
}

/// Delete honours a precondition and returns the deleted value.
pub async fn delete_with_and_without_precondition(s: &dyn Store) {
    let kv = s
        .create("/c/delete/a", b"gone".to_vec())
        .await
        .expect("create");
    match s.delete("/c/delete/a", Some(kv.mod_revision - 1)).await {
        Err(Error::Conflict { .. }) => {}
        other => panic!("delete: wrong precondition gave {other:?}"),
    }
    let (prev, rev) = s
        .delete("/c/delete/a", Some(kv.mod_revision))
        .await
        .expect("delete");
    assert_eq!(prev, kv, "delete returns the last value");
    assert!(rev > kv.mod_revision, "delete has its own revision");
    assert_eq!(s.get("/c/delete/a").await.expect("get"), None);
    match s.delete("/c/delete/a", None).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("delete: second delete gave {other:?}"),
    }
    s.create("/c/delete/b", b"x".to_vec())
        .await
        .expect("create");
    s.delete("/c/delete/b", None)
        .await
        .expect("delete without precondition");
    // A deleted key can be created again, with a new create revision.
    let again = s
        .create("/c/delete/a", b"back".to_vec())
        .await
        .expect("recreate");
    assert!(again.create_revision > kv.create_revision);
}

/// Every write moves the one global revision forward by one.
pub async fn revisions_are_global_and_increase(s: &dyn Store) {
    let r0 = s.current_revision().await.expect("current_revision");
    let a = s.create("/c/rev/a", b"1".to_vec()).await.expect("create");
    let b = s.create("/c/rev/b", b"1".to_vec()).await.expect("create");
    assert_eq!(a.mod_revision, r0 + 1, "revisions_are_global_and_increase");
    assert_eq!(b.mod_revision, r0 + 2, "revisions_are_global_and_increase");
    assert_eq!(
        s.current_revision().await.expect("current_revision"),
        r0 + 2
    );
    // A failed write does not move it.
    let _ = s.create("/c/rev/a", b"dup".to_vec()).await;
    assert_eq!(
        s.current_revision().await.expect("current_revision"),
        r0 + 2
    );
}

/// Paging with a limit and a start key, every page at the first page's revision,
/// sees one snapshot even while the prefix changes between pages.
pub async fn list_pages_read_one_snapshot(s: &dyn Store) {
    for i in 1..=5 {
        s.create(&format!("/c/list/a/{i}"), format!("v{i}").into_bytes())
            .await
            .expect("create");
    }
    // Same leading characters, different prefix: must not show up.
    s.create("/c/list/ab/x", b"other".to_vec())
        .await
        .expect("create");

    let all = s
        .list(&ListOptions {
            prefix: "/c/list/a/".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    let keys: Vec<&str> = all.items.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/c/list/a/1",
            "/c/list/a/2",
            "/c/list/a/3",
            "/c/list/a/4",
            "/c/list/a/5"
        ]
    );
    assert!(!all.more);
    assert_eq!(s.count("/c/list/a/").await.expect("count"), 5);
    assert_eq!(s.count("/c/list/").await.expect("count"), 6);

    let first = s
        .list(&ListOptions {
            prefix: "/c/list/a/".into(),
            limit: Some(2),
            ..Default::default()
        })
        .await;
    let first = first.expect("first page");
    assert_eq!(first.items.len(), 2);
    assert!(first.more, "list_pages: more after the first page");
    // The prefix changes between pages.
    s.create("/c/list/a/0", b"new".to_vec())
        .await
        .expect("create");
    let (last, _) = s.delete("/c/list/a/5", None).await.expect("delete");
    let mut seen: Vec<String> = first.items.iter().map(|k| k.key.clone()).collect();
    let mut start = format!("{}\0", seen[seen.len() - 1]);
    loop {
        let page = s
            .list(&ListOptions {
                prefix: "/c/list/a/".into(),
                start_key: Some(start.clone()),
                limit: Some(2),
                revision: Some(first.revision),
                any_revision: false,
            })
            .await
            .expect("next page");
        assert_eq!(
            page.revision, first.revision,
            "pages are read at the first page's revision"
        );
        seen.extend(page.items.iter().map(|k| k.key.clone()));
        if !page.more {
            break;
        }
        start = format!("{}\0", seen[seen.len() - 1]);
    }
    assert_eq!(
        seen,
        [
            "/c/list/a/1",
            "/c/list/a/2",
            "/c/list/a/3",
            "/c/list/a/4",
            "/c/list/a/5"
        ]
    );
    assert_eq!(last.key, "/c/list/a/5");
}

/// A list at a past revision shows the values of then.
pub async fn list_at_a_past_revision(s: &dyn Store) {
    let v1 = s
        .create("/c/past/k", b"old".to_vec())
        .await
        .expect("create");
    s.update("/c/past/k", b"new".to_vec(), v1.mod_revision)
        .await
        .expect("update");
    s.create("/c/past/later", b"x".to_vec())
        .await
        .expect("create");
    let then = s
        .list(&ListOptions {
            prefix: "/c/past/".into(),
            revision: Some(v1.mod_revision),
            ..Default::default()
        })
        .await
        .expect("list at a past revision");
    assert_eq!(
        then.items.len(),
        1,
        "list_at_a_past_revision: {:?}",
        then.items
    );
    assert_eq!(then.items[0].value, b"old");
    assert_eq!(then.items[0].mod_revision, v1.mod_revision);
    let now = s
        .list(&ListOptions {
            prefix: "/c/past/".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(now.items.len(), 2);
}

async fn next(stream: &mut EventStream, case: &str) -> Event {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("{case}: watch error {e}"),
        Ok(None) => panic!("{case}: watch ended"),
        Err(_) => panic!("{case}: no event within {WAIT:?}"),
    }
}

/// A watch from a past revision replays what happened since, in order, with
/// previous values, then delivers new events as they happen.
pub async fn watch_replays_history_then_follows(s: &dyn Store) {
    let case = "watch_replays_history_then_follows";
    let start: Revision = s.current_revision().await.expect("current_revision");
    let a = s.create("/c/watch/a", b"1".to_vec()).await.expect("create");
    let a2 = s
        .update("/c/watch/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update");
    let (_, del_rev) = s.delete("/c/watch/a", None).await.expect("delete");

    let mut w = s.watch("/c/watch/", start).await.expect("watch");
    match next(&mut w, case).await {
        Event::Put { kv, prev } => {
            assert_eq!(kv, a, "{case}");
            assert_eq!(prev, None, "{case}");
        }
        other => panic!("{case}: {other:?}"),
    }
    match next(&mut w, case).await {
        Event::Put { kv, prev } => {
            assert_eq!(kv, a2, "{case}");
            assert_eq!(prev, Some(a.clone()), "{case}");
        }
        other => panic!("{case}: {other:?}"),
    }
    match next(&mut w, case).await {
        Event::Delete {
            key,
            revision,
            prev,
        } => {
            assert_eq!(key, "/c/watch/a");
            assert_eq!(revision, del_rev);
            assert_eq!(prev, Some(a2.clone()), "{case}");
        }
        other => panic!("{case}: {other:?}"),
    }
    // Live events after the replay.
    let b = s
        .create("/c/watch/b", b"live".to_vec())
        .await
        .expect("create");
    match next(&mut w, case).await {
        Event::Put { kv, .. } => assert_eq!(kv, b, "{case}"),
        other => panic!("{case}: {other:?}"),
    }
    // A watch from "now" sees only later events.
    let now = s.current_revision().await.expect("current_revision");
    let mut w2 = s.watch("/c/watch/", now).await.expect("watch");
    let c = s.create("/c/watch/c", b"x".to_vec()).await.expect("create");
    assert_eq!(
        next(&mut w2, case).await.revision(),
        c.mod_revision,
        "{case}"
    );
    assert_eq!(
        next(&mut w, case).await.revision(),
        c.mod_revision,
        "{case}"
    );
}

/// Events under other prefixes are not delivered.
pub async fn watch_only_sees_its_prefix(s: &dyn Store) {
    let case = "watch_only_sees_its_prefix";
    let now = s.current_revision().await.expect("current_revision");
    let mut w = s.watch("/c/prefix/a/", now).await.expect("watch");
    s.create("/c/prefix/ab", b"no".to_vec())
        .await
        .expect("create");
    s.create("/c/prefix/b/x", b"no".to_vec())
        .await
        .expect("create");
    let yes = s
        .create("/c/prefix/a/x", b"yes".to_vec())
        .await
        .expect("create");
    match next(&mut w, case).await {
        Event::Put { kv, .. } => assert_eq!(kv, yes, "{case}"),
        other => panic!("{case}: {other:?}"),
    }
}

/// Many writers incrementing one counter with compare-and-swap lose no update.
pub async fn concurrent_compare_and_swap_loses_nothing(s: Arc<dyn Store>) {
    const WRITERS: u64 = 8;
    const EACH: u64 = 10;
    s.create("/c/cas/counter", b"0".to_vec())
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let cur = s
                        .get("/c/cas/counter")
                        .await
                        .expect("get")
                        .expect("counter exists");
                    let n: u64 = String::from_utf8_lossy(&cur.value)
                        .parse()
                        .expect("a number");
                    match s
                        .update(
                            "/c/cas/counter",
                            (n + 1).to_string().into_bytes(),
                            cur.mod_revision,
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("concurrent_compare_and_swap: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let end = s
        .get("/c/cas/counter")
        .await
        .expect("get")
        .expect("counter");
    assert_eq!(
        String::from_utf8_lossy(&end.value),
        (WRITERS * EACH).to_string(),
        "no lost update"
    );
}

/// A list larger than any single backend request (etcd reads in chunks of 1000,
/// and a gRPC message holds 4 MiB) comes back whole, in order, at one revision.
pub async fn large_lists_come_back_whole(s: &dyn Store) {
    const N: usize = 1100;
    // 6 KiB each: a 1000-key etcd chunk is over 4 MiB, so the halving retry runs too.
    let value = vec![b'v'; 6 * 1024];
    for i in 0..N {
        s.create(&format!("/c/large/{i:05}"), value.clone())
            .await
            .expect("create");
    }
    let all = s
        .list(&ListOptions {
            prefix: "/c/large/".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(all.items.len(), N, "large_lists_come_back_whole");
    assert!(!all.more);
    assert!(
        all.items.windows(2).all(|w| w[0].key < w[1].key),
        "large_lists_come_back_whole: key order"
    );
    let some = s
        .list(&ListOptions {
            prefix: "/c/large/".into(),
            limit: Some(1050),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(some.items.len(), 1050);
    assert!(some.more);
    assert_eq!(s.count("/c/large/").await.expect("count"), N);
}

/// After compaction, reads and watches before the compacted revision fail with
/// `Compacted`; current reads still see every live key.
pub async fn compaction_expires_old_revisions(s: &dyn Store) {
    let case = "compaction_expires_old_revisions";
    let k = s
        .create("/c/compact/k", b"1".to_vec())
        .await
        .expect("create");
    let k2 = s
        .update("/c/compact/k", b"2".to_vec(), k.mod_revision)
        .await
        .expect("update");
    s.create("/c/compact/other", b"x".to_vec())
        .await
        .expect("create");
    let at = s.current_revision().await.expect("current_revision");
    s.compact(at).await.expect("compact");

    match s
        .list(&ListOptions {
            prefix: "/c/compact/".into(),
            revision: Some(k.mod_revision),
            ..Default::default()
        })
        .await
    {
        Err(Error::Compacted { .. }) => {}
        other => panic!("{case}: list at a compacted revision gave {other:?}"),
    }
    // Watch errors may come from the call or as the stream's first item.
    match s.watch("/c/compact/", k.mod_revision - 1).await {
        Err(Error::Compacted { .. }) => {}
        Ok(mut w) => match tokio::time::timeout(WAIT, w.next()).await {
            Ok(Some(Err(Error::Compacted { .. }))) => {}
            other => panic!("{case}: watch from a compacted revision gave {other:?}"),
        },
        Err(e) => panic!("{case}: watch from a compacted revision gave {e}"),
    }
    let now = s
        .list(&ListOptions {
            prefix: "/c/compact/".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(now.items.len(), 2, "{case}");
    assert_eq!(now.items[0], k2, "{case}");
    // Reading at exactly the compaction revision still works.
    let at_c = s
        .list(&ListOptions {
            prefix: "/c/compact/".into(),
            revision: Some(at),
            ..Default::default()
        })
        .await
        .expect("list at the compaction revision");
    assert_eq!(at_c.items.len(), 2, "{case}");
    let mut w = s
        .watch("/c/compact/", at)
        .await
        .expect("watch from the compaction revision");
    let n = s
        .create("/c/compact/new", b"y".to_vec())
        .await
        .expect("create");
    assert_eq!(
        next(&mut w, case).await.revision(),
        n.mod_revision,
        "{case}"
    );
}
