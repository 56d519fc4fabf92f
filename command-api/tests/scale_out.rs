//! Two instances of the command API on one broker and one database: the writers'
//! partitions split between them, either instance takes a command for any aggregate (it
//! hands the ones it does not write to the instance that does), and when one stops the
//! other writes every partition, with nothing lost and nothing doubled.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use event_store::partitioner::partition_for;
use serde_json::json;
use sqlx::PgPool;
use test_support::TestEnv;

/// The write models the requests below use.
const SERVICES: [&str; 3] = ["users", "user-emails", "orders"];

/// Owner per partition of `service`'s writers, as the instances announced them.
async fn owners(db: &PgPool, app: &App, service: &str) -> anyhow::Result<BTreeMap<i32, String>> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT partition, owner FROM event_store.writer_owners WHERE writers_group = $1",
    )
    .bind(app.topics.writers_group(service))
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Waits until every partition of every service is announced by one of `expected`, and
/// each of them writes some: `expected` may hold one instance or two.
async fn wait_for_owners(db: &PgPool, app: &App, expected: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let wanted: BTreeSet<&str> = expected.iter().copied().collect();
    loop {
        let mut settled = true;
        for service in SERVICES {
            let owners = owners(db, app, service).await?;
            let seen: BTreeSet<&str> = owners.values().map(String::as_str).collect();
            settled &= owners.len() == PARTITIONS as usize && seen == wanted;
        }
        if settled {
            return Ok(());
        }
        if Instant::now() > deadline {
            let mut now = Vec::new();
            for service in SERVICES {
                now.push((service, owners(db, app, service).await?));
            }
            anyhow::bail!("partitions not owned by {expected:?} within 90 s: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_take_any_command_and_survive_each_other()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let a = App::start(&env, &[]).await?;
    let b = App::start(&env, &[]).await?;
    let db = PgPool::connect(&env.database_url).await?;
    wait_for_owners(&db, &a, &[&a.base, &b.base]).await?;
    let user_owners = owners(&db, &a, "users").await?;

    // Registrations through both, alternately: each instance gets users of partitions the
    // other one writes.
    let mut users = Vec::new();
    let mut forwarded = BTreeMap::<&str, usize>::new();
    for i in 0..24 {
        let via = if i % 2 == 0 { &a } else { &b };
        let user = register(via, &format!("user{i}@example.com")).await?;
        if user_owners[&partition_for(&user, PARTITIONS)] != via.base {
            *forwarded.entry(via.base.as_str()).or_default() += 1;
        }
        users.push(user);
    }
    assert_eq!(
        forwarded.len(),
        2,
        "each instance handed some registrations over: {forwarded:?}"
    );

    // Through the other instance: commands that read the user's state first (its writer
    // may be on either side), and orders, which look the user up.
    for (i, user) in users.iter().enumerate() {
        let via = if i % 2 == 0 { &b } else { &a };
        let (status, body) = via
            .send(
                &format!("/v1/users/{user}/email"),
                json!({"email": format!("renamed{i}@example.com")}),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], 2, "{body}");
        let (status, body) = via.send("/v1/orders", order_body(user)).await?;
        assert_eq!(status, 201, "{body}");
    }
    // A registration that claims an email already taken is refused whichever instance
    // gets it: the claim's writer decides.
    let (status, body) = b
        .send("/v1/users", user_body("Copy", "renamed0@example.com"))
        .await?;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (422, Some("email-taken")),
        "{body}"
    );

    // The peers' routes take only the peers' key.
    let internal = format!("{}/internal/writers/users/commands", a.base);
    for key in [None, Some(KEY)] {
        let mut request = a.client.post(&internal).body("{}");
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        assert_eq!(request.send().await?.status(), 401);
    }

    // b stops: a takes its partitions over and answers for every aggregate again.
    b.shutdown().await?;
    let stopped = Instant::now();
    let mut last = Vec::new();
    for i in 0..8 {
        let response = until_decided(|| {
            a.post("/v1/users")
                .json(&user_body("Late", &format!("late{i}@example.com")))
        })
        .await?;
        let (status, body) = answer(response).await?;
        assert_eq!(status, 201, "{body}");
        last.push(body["id"].as_str().expect("an id").to_owned());
    }
    let partitions: BTreeSet<i32> = last.iter().map(|u| partition_for(u, PARTITIONS)).collect();
    println!(
        "a wrote {partitions:?} for new users {:.1} s after b stopped",
        stopped.elapsed().as_secs_f64()
    );
    wait_for_owners(&db, &a, &[&a.base]).await?;

    // Nothing lost, nothing doubled: one registration and one email change per user.
    let events = a.events("users").await?;
    for user in users.iter().chain(&last) {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.subject == *user)
            .map(|e| e.event_type.as_str())
            .collect();
        let expected: &[&str] = if last.contains(user) {
            &["UserRegistered"]
        } else {
            &["UserRegistered", "UserEmailChanged"]
        };
        assert_eq!(mine, expected, "events of user {user}");
    }
    let placed = a
        .events("orders")
        .await?
        .iter()
        .filter(|e| e.event_type == "OrderPlaced")
        .count();
    assert_eq!(placed, users.len());
    a.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_sent_to_two_instances_at_once_runs_once_with_one_answer() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let a = App::start(&env, &[]).await?;
    let b = App::start(&env, &[]).await?;
    let db = PgPool::connect(&env.database_url).await?;
    wait_for_owners(&db, &a, &[&a.base, &b.base]).await?;

    let user = register(&a, "twice@example.com").await?;
    let order = order_body(&user);
    let answers = same_key_at_once(&[&a, &b], "/v1/orders", &order, "order-twice", 20).await?;
    let (status, location, _, body) = one_answer(&answers);
    assert_eq!(*status, 201, "{}", String::from_utf8_lossy(body));
    assert!(location.is_some());
    let placed = a
        .events("orders")
        .await?
        .into_iter()
        .filter(|e| e.event_type == "OrderPlaced")
        .count();
    assert_eq!(placed, 1, "placed once");

    // The key holds its answer, and no instance holds the key any more.
    let (status, owner): (Option<i16>, Option<uuid::Uuid>) = sqlx::query_as(
        "SELECT status, owner FROM command_api.idempotency_keys WHERE key = 'order-twice'",
    )
    .fetch_one(&db)
    .await?;
    assert_eq!((status, owner), (Some(201), None));
    Ok(())
}
