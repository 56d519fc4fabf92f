//! The built `command-api` binary as an operator runs it: configuration from the
//! environment, JSON logs, graceful stop on SIGTERM, one-line errors. (The lifecycle is
//! shared by all services through service-runtime; `system-tests` covers the other two.)

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use event_store::partitioner::partition_for;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::emails::{ClaimEmail, EmailCommand};
use schemas::users::{RegisterUser, UserCommand};
use schemas::{CommandId, CommandMeta, MessageFamily, UserId};
use service_runtime::personal_data::{EmailIndex, SubjectKey};
use test_support::TestEnv;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_command-api");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The running binary, killed if a test ends (or fails) without stopping it.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the binary on a fresh topic prefix and waits until `/ready` is green.
async fn start(env: &TestEnv, stdout: Stdio, stderr: Stdio) -> anyhow::Result<(Service, u16)> {
    start_with(env, &[], stdout, stderr).await
}

/// [`start`] with more settings.
async fn start_with(
    env: &TestEnv,
    extra: &[(&str, &str)],
    stdout: Stdio,
    stderr: Stdio,
) -> anyhow::Result<(Service, u16)> {
    TopicAdmin::new(&KafkaSettings::new(&env.brokers))?
        .create(&TopicNames::new(&env.topic_prefix).all(2), 1)
        .await?;
    let port = free_port();
    let child = Service(
        Command::new(BIN)
            .env_clear()
            .env("KAFKA_BROKERS", &env.brokers)
            .env("DATABASE_URL", &env.database_url)
            .env("TOPIC_PREFIX", &env.topic_prefix)
            .env("EVENT_PARTITIONS", "2")
            .env("COMMAND_API_ADDR", format!("127.0.0.1:{port}"))
            .env("API_KEYS", "test-key")
            .envs(extra.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()?,
    );

    let ready = format!("http://127.0.0.1:{port}/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(&ready).await
            && r.status() == 200
        {
            return Ok((child, port));
        }
        assert!(Instant::now() < deadline, "not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then the exit status (within 10 s).
async fn terminate(Service(child): &mut Service) -> anyhow::Result<ExitStatus> {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(killed.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn runs_from_the_environment_logs_json_and_stops_on_sigterm() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let (mut child, _) = start(&env, Stdio::piped(), Stdio::piped()).await?;
    let status = terminate(&mut child).await?;
    assert!(status.success(), "exit status {status}");

    let stdout = BufReader::new(child.0.stdout.take().expect("piped"));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(&l.expect("utf-8")).expect("every log line is JSON"))
        .collect();
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    for expected in [
        "listening",
        "dependency ready",
        "shutdown requested",
        "stopped",
    ] {
        assert!(
            messages.contains(&expected),
            "no {expected:?} in {messages:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn keeps_serving_when_its_log_cannot_be_written() -> anyhow::Result<()> {
    // A full disk under the redirected output: every write to /dev/full fails with ENOSPC.
    let env = TestEnv::new().await;
    let full = || {
        File::options()
            .write(true)
            .open("/dev/full")
            .map(Stdio::from)
    };
    let (mut child, port) = start(&env, full()?, full()?).await?;
    let client = reqwest::Client::new();
    for _ in 0..20 {
        // Each refusal logs a warning and a failed response.
        let answer = client
            .post(format!("http://127.0.0.1:{port}/v1/users"))
            .bearer_auth("test-key")
            .json(&serde_json::json!({"bad": 1}))
            .send()
            .await?;
        assert_eq!(answer.status(), 422, "{:?}", child.0.try_wait());
    }
    if let Some(died) = child.0.try_wait()? {
        panic!("the service died: {died}");
    }
    let status = terminate(&mut child).await?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[test]
fn a_bad_setting_is_one_line_on_stderr_and_exit_code_2() {
    let output = Command::new(BIN)
        .env_clear()
        .env("EVENT_PARTITIONS", "many")
        .env("API_KEYS", "k")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        "command-api: configuration error: EVENT_PARTITIONS=\"many\" is invalid: invalid digit found in string"
    );
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn stops_on_sigterm_in_bounded_time_when_its_broker_is_gone() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await;
    let mut broker = test_support::PrivateBroker::start().await;
    env.brokers = broker.brokers.clone();
    let (mut child, _) = start(&env, Stdio::null(), Stdio::piped()).await?;
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = terminate(&mut child).await?;
    assert!(status.code().is_some(), "exited by itself: {status}");
    Ok(())
}

/// Appends `payload` to its service's command topic, as any issuer may, and answers its id.
async fn send_command<C: MessageFamily>(env: &TestEnv, payload: C) -> anyhow::Result<CommandId> {
    let producer: FutureProducer = KafkaSettings::new(&env.brokers).producer().create()?;
    let command = schemas::Command {
        meta: CommandMeta::new("/tests/command-api"),
        payload,
    };
    let document = command.to_document();
    let topic = TopicNames::new(&env.topic_prefix).commands(C::SERVICE);
    let value = document.to_json();
    producer
        .send(
            FutureRecord::to(&topic)
                .partition(partition_for(&document.subject, 2))
                .key(&document.subject)
                .payload(&value),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(command.meta.id)
}

/// Polls `read` until it answers `Some`, for up to 30 s.
async fn eventually<T, F: Future<Output = anyhow::Result<Option<T>>>>(
    what: &str,
    mut read: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = read().await? {
            return Ok(found);
        }
        anyhow::ensure!(Instant::now() < deadline, "no {what} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_email_claim_stranded_by_a_killed_instance_is_taken_over_and_its_late_registration_refused()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let topics = TopicNames::new(&env.topic_prefix);
    // A claim older than three command timeouts may be taken over.
    let settings = [("COMMAND_TIMEOUT_MS", "1000")];
    let (mut first, first_port) = start_with(&env, &settings, Stdio::null(), Stdio::null()).await?;
    let client = reqwest::Client::new();
    let register = |port: u16| {
        client
            .post(format!("http://127.0.0.1:{port}/v1/users"))
            .bearer_auth("test-key")
            .json(&serde_json::json!({"name": "Grace", "email": "stranded@example.com"}))
            .send()
    };

    // What a registration that died between its two steps leaves: the address claimed
    // for a user who was never registered. Then the instance dies too.
    // Claims are keyed by the address's blind index (the development key: no
    // EMAIL_INDEX_KEY is set here).
    let email = EmailIndex::development().claim_id("stranded@example.com");
    let email = email.as_str();
    let stranded = UserId::new();
    let claimed_at = Instant::now();
    send_command::<EmailCommand>(
        &env,
        ClaimEmail {
            email: email.into(),
            user_id: stranded,
            at: Some(chrono::Utc::now()),
        }
        .into(),
    )
    .await?;
    let claim = eventually("claim", || async {
        let claims = common::events(&env.brokers, &topics.events("user-emails")).await?;
        Ok(claims
            .iter()
            .find(|e| e.subject == email)
            .map(|e| e.aggregateversion))
    })
    .await?;
    let early = register(first_port).await?;
    assert!(
        claimed_at.elapsed() < Duration::from_secs(3),
        "asked within the grace"
    );
    assert_eq!(early.status(), 422, "a young claim stands");
    let body: serde_json::Value = early.json().await?;
    assert_eq!(body["code"], "email-taken");
    first.0.kill()?;
    first.0.wait()?;

    let (_second, port) = start_with(&env, &settings, Stdio::null(), Stdio::null()).await?;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(claimed_at.elapsed())).await;
    let taken_over = register(port).await?;
    assert_eq!(taken_over.status(), 201, "the stranded claim is taken over");
    let body: serde_json::Value = taken_over.json().await?;
    let winner = body["id"].as_str().expect("an id").to_owned();

    // The dead request's registration lands late, relying on its claim: refused.
    let key = SubjectKey::generate();
    let late = send_command::<UserCommand>(
        &env,
        RegisterUser {
            user_id: stranded,
            name: key.seal(stranded.as_uuid(), "Late"),
            email: key.seal(stranded.as_uuid(), "stranded@example.com"),
            claim_id: Some(email.into()),
            claim: Some(claim),
        }
        .into(),
    )
    .await?;
    let late = late.to_string();
    let refusal = eventually("outcome of the late registration", || async {
        let outcomes = common::values(&env.brokers, &topics.outcomes("users")).await?;
        Ok(outcomes
            .iter()
            .map(|v| serde_json::from_slice::<serde_json::Value>(v).expect("an outcome"))
            .find(|o| o["commandid"] == late.as_str()))
    })
    .await?;
    assert_eq!(
        refusal["data"]["reason"]["code"], "claim-lapsed",
        "{refusal}"
    );

    // One user holds the address; the stranded one has only the lapse on record.
    let users = common::events(&env.brokers, &topics.events("users")).await?;
    let registered: Vec<&str> = users
        .iter()
        .filter(|e| e.event_type == "UserRegistered" && e.data["claim_id"] == email)
        .map(|e| e.subject.as_str())
        .collect();
    assert_eq!(registered, [winner.as_str()]);
    let stranded_events: Vec<&str> = users
        .iter()
        .filter(|e| e.subject == stranded.to_string())
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(stranded_events, ["EmailClaimLapsed"]);
    Ok(())
}
