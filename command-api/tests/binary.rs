//! The built `command-api` binary as an operator runs it: configuration from the
//! environment, JSON logs, graceful stop on SIGTERM, one-line errors. (The lifecycle is
//! shared by all services through service-runtime; `system-tests` covers the other two.)

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use test_support::TestEnv;

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
