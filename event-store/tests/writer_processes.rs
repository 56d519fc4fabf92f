//! Writers as real processes (`ledger-writer`), killed and frozen:
//! - SIGKILL in the middle of a burst, 20 times: every accepted command is in the log
//!   exactly once, and every aggregate's versions are contiguous;
//! - two writers fighting over partitions (one frozen with SIGSTOP until the group moves
//!   its partitions, then resumed): the broker fences the frozen one's transactions, so
//!   the log never holds two events for one version, and no caller was told "accepted"
//!   for an event that is not in the log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use event_store::gate::{Admission, VersionGate};
use event_store::sample::{Deposit, LedgerCommand, OpenAccount};
use event_store::writer::log::PartitionLog;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use rdkafka::Message;
use schemas::{Command, CommandMeta, EventDocument};
use serde_json::Value;
use test_support::TestEnv;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const PARTITIONS: i32 = 2;
const SESSION_MS: u32 = 6000;
const BIN: &str = env!("CARGO_BIN_EXE_ledger-writer");

struct Writer {
    child: Child,
    addr: SocketAddr,
}

impl Writer {
    fn spawn(env: &TestEnv) -> Self {
        Self::spawn_with_session(env, 3000)
    }

    fn spawn_with_session(env: &TestEnv, session_ms: u32) -> Self {
        let mut child = Process::new(BIN)
            .env("KAFKA_BROKERS", &env.brokers)
            .env("TOPIC_PREFIX", &env.topic_prefix)
            .env("EVENT_PARTITIONS", PARTITIONS.to_string())
            // Failover after a kill waits for the dead member's session to expire.
            .env("KAFKA_SESSION_TIMEOUT_MS", session_ms.to_string())
            .env(
                "RUST_LOG",
                std::env::var("LEDGER_WRITER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ledger-writer");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut first)
            .expect("read the address");
        let addr = first
            .trim()
            .strip_prefix("listening ")
            .expect("listening line")
            .parse()
            .expect("an address");
        Self { child, addr }
    }

    fn signal(&self, signal: &str) {
        let status = Process::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a caller was told: the outcome JSON, or the error text.
type Answer = Result<Value, String>;

/// A connection to a writer process; answers are collected by command id.
struct Client {
    send: tokio::net::tcp::OwnedWriteHalf,
    answers: mpsc::UnboundedReceiver<(String, Answer)>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let (read, send) = TcpStream::connect(addr).await?.into_split();
        let (tx, answers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: Value = serde_json::from_str(&line).expect("JSON reply");
                let id = reply["id"].as_str().unwrap_or_default().to_owned();
                let answer = match reply.get("outcome") {
                    Some(outcome) => Ok(outcome.clone()),
                    None => Err(reply["error"].as_str().unwrap_or_default().to_owned()),
                };
                if tx.send((id, answer)).is_err() {
                    return;
                }
            }
        });
        Ok(Self { send, answers })
    }

    async fn send(&mut self, command: &Command<LedgerCommand>) -> anyhow::Result<()> {
        let mut line = command.to_document().to_json();
        line.push(b'\n');
        self.send.write_all(&line).await?;
        Ok(())
    }

    /// The next answer, waiting at most `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<(String, Answer)> {
        tokio::time::timeout(timeout, self.answers.recv())
            .await
            .ok()
            .flatten()
    }

    /// Answers already received.
    fn drain(&mut self) -> Vec<(String, Answer)> {
        std::iter::from_fn(|| self.answers.try_recv().ok()).collect()
    }

    /// Answers arriving within `window`.
    async fn collect(&mut self, window: Duration) -> Vec<(String, Answer)> {
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, self.answers.recv()).await {
            answers.push(answer);
        }
        answers
    }
}

fn command(payload: LedgerCommand) -> Command<LedgerCommand> {
    Command {
        meta: CommandMeta::new("/test"),
        payload,
    }
}

fn open(account: &str) -> Command<LedgerCommand> {
    command(
        OpenAccount {
            account_id: account.into(),
            initial_deposit: None,
        }
        .into(),
    )
}

fn deposit(account: &str, amount: u64) -> Command<LedgerCommand> {
    command(
        Deposit {
            account_id: account.into(),
            amount,
        }
        .into(),
    )
}

fn accepted(answer: &Answer) -> bool {
    matches!(answer, Ok(outcome) if outcome["outcome"] == "accepted")
}

async fn create_topics(env: &TestEnv) -> anyhow::Result<(KafkaSettings, TopicNames)> {
    let settings = KafkaSettings::new(&env.brokers);
    let topics = TopicNames::new(&env.topic_prefix);
    TopicAdmin::new(&settings)?
        .create(&topics.for_services(&["ledger"], PARTITIONS), 1)
        .await?;
    Ok((settings, topics))
}

/// Every record of the ledger's event topic, per partition in offset order.
async fn log(settings: &KafkaSettings, topics: &TopicNames) -> anyhow::Result<Vec<EventDocument>> {
    let topic = topics.events("ledger");
    let ends = event_store::scan::settled_ends(settings, &topic).await?;
    let mut records = Vec::new();
    for partition in 0..PARTITIONS {
        let log = PartitionLog::reader(settings.clone(), partition)?;
        let end = ends.get(&partition).copied().unwrap_or(0);
        log.read_range(&topic, 0, end, |m| {
            records.push(EventDocument::from_json(m.payload().expect("value")).expect("an event"));
        })
        .await?;
    }
    Ok(records)
}

/// Sends `commands` until each has an answer that is not an error (or `attempts` run out).
async fn settle(
    client: &mut Client,
    commands: &[Command<LedgerCommand>],
    attempts: usize,
) -> anyhow::Result<HashMap<String, Answer>> {
    let mut answers: HashMap<String, Answer> = HashMap::new();
    for _ in 0..attempts {
        let open: Vec<_> = commands
            .iter()
            .filter(|c| !matches!(answers.get(&c.meta.id.to_string()), Some(Ok(_))))
            .collect();
        if open.is_empty() {
            break;
        }
        for c in &open {
            client.send(c).await?;
        }
        let mut pending: HashSet<String> = open.iter().map(|c| c.meta.id.to_string()).collect();
        while !pending.is_empty() {
            let Some((id, answer)) = client.next(Duration::from_secs(20)).await else {
                break;
            };
            pending.remove(&id);
            answers.insert(id, answer);
        }
    }
    Ok(answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_burst_20_times_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let (settings, topics) = create_topics(&env).await?;
    let accounts: Vec<String> = (0..8).map(|i| format!("acct-{i}")).collect();
    let opens: Vec<_> = accounts.iter().map(|a| open(a)).collect();
    let mut sent: Vec<Command<LedgerCommand>> = Vec::new();
    let mut answers: HashMap<String, Answer> = HashMap::new();

    {
        let writer = Writer::spawn(&env);
        let mut client = Client::connect(writer.addr).await?;
        let opened = settle(&mut client, &opens, 3).await?;
        assert!(opened.values().all(accepted), "{opened:?}");
    }

    for round in 0..20u64 {
        let mut writer = Writer::spawn(&env);
        let mut client = Client::connect(writer.addr).await?;
        // The first answer means the writer owns its partitions and serves.
        let probe = deposit(&accounts[round as usize % accounts.len()], 1);
        client.send(&probe).await?;
        sent.push(probe);
        let waiting = std::time::Instant::now();
        answers.extend(client.next(Duration::from_secs(30)).await);
        eprintln!("round {round}: serving after {:?}", waiting.elapsed());
        // Stream commands; kill the writer at a moment that varies per round, while
        // commands are still arriving and being appended.
        let kill_at = tokio::time::Instant::now() + Duration::from_millis(20 + (round * 37) % 180);
        let mut n = 0u64;
        while tokio::time::Instant::now() < kill_at {
            let c = deposit(&accounts[(n % accounts.len() as u64) as usize], n + 2);
            if client.send(&c).await.is_err() {
                break;
            }
            sent.push(c);
            answers.extend(client.drain());
            n += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        writer.child.kill()?;
        writer.child.wait()?;
        answers.extend(client.collect(Duration::from_millis(100)).await);
    }
    let told_before_retry = answers.values().filter(|a| accepted(a)).count();
    eprintln!(
        "{} commands sent over 20 kills, {told_before_retry} answered accepted before retries",
        sent.len()
    );

    // Every unanswered or failed command is retried with its id against a fresh writer.
    let writer = Writer::spawn(&env);
    let mut client = Client::connect(writer.addr).await?;
    let settled = settle(&mut client, &sent, 5).await?;
    for c in &sent {
        let id = c.meta.id.to_string();
        let final_answer = &settled[&id];
        assert!(
            accepted(final_answer),
            "{id} never settled: {final_answer:?}"
        );
        if let Some(earlier) = answers.get(&id).filter(|a| accepted(a)) {
            assert_eq!(earlier, final_answer, "a retry got another outcome");
        }
    }

    let records = log(&settings, &topics).await?;
    let mut per_command: HashMap<String, usize> = HashMap::new();
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in &records {
        *per_command.entry(record.commandid.to_string()).or_default() += 1;
        versions
            .entry(record.subject.clone())
            .or_default()
            .push(record.aggregateversion);
    }
    for c in sent.iter().chain(&opens) {
        assert_eq!(
            per_command.get(&c.meta.id.to_string()),
            Some(&1),
            "{} not exactly once",
            c.meta.id
        );
    }
    for (account, versions) in versions {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "{account}: versions not contiguous");
    }
    assert_eq!(records.len(), sent.len() + opens.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_writer_that_wakes_up_cannot_get_a_dropped_event_accepted() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let (settings, topics) = create_topics(&env).await?;
    let accounts: Vec<String> = (0..6).map(|i| format!("acct-{i}")).collect();
    let a = Writer::spawn_with_session(&env, SESSION_MS);
    let mut to_a = Client::connect(a.addr).await?;
    let opens: Vec<_> = accounts.iter().map(|x| open(x)).collect();
    assert!(settle(&mut to_a, &opens, 3).await?.values().all(accepted));
    let b = Writer::spawn_with_session(&env, SESSION_MS);
    let mut to_b = Client::connect(b.addr).await?;
    let mut told: HashMap<String, Answer> = HashMap::new();
    let mut amount = 0u64;
    let mut next_deposits = |n: usize| -> Vec<Command<LedgerCommand>> {
        (0..n)
            .map(|i| {
                amount += 1;
                deposit(&accounts[i % accounts.len()], amount)
            })
            .collect()
    };

    for cycle in 0..3 {
        // Both serve; then A freezes and the group moves A's partitions to B once A's
        // session expires. B's commands on every account succeed only then.
        told.extend(settle(&mut to_b, &next_deposits(12), 3).await?);
        a.signal("-STOP");
        let frozen = std::time::Instant::now();
        let for_b = next_deposits(30);
        let b_answers = settle(&mut to_b, &for_b, 12).await?;
        eprintln!(
            "cycle {cycle}: B owned everything {:?} after A froze",
            frozen.elapsed()
        );
        assert!(
            b_answers.values().all(accepted),
            "cycle {cycle}: B must own everything: {b_answers:?}"
        );
        told.extend(b_answers);
        // A's backlog waits in its socket: A decides it the moment it wakes, on state that
        // misses B's events, racing its own discovery that it lost the partitions.
        for c in &next_deposits(120) {
            to_a.send(c).await?;
        }
        a.signal("-CONT");
        told.extend(to_a.collect(Duration::from_secs(8)).await);
    }

    // Readers: first record for a version wins, only the next version passes.
    let mut gate = VersionGate::default();
    let mut admitted: HashSet<String> = HashSet::new();
    let mut dropped = 0;
    let records = log(&settings, &topics).await?;
    for record in records.clone() {
        let last = gate.last(&record.subject);
        let verdict = gate.admit(&record.subject, record.aggregateversion);
        if std::env::var("SHOW_LOG").is_ok() {
            eprintln!(
                "{} v{} (after {last}) {:?} cmd {} answer {:?}",
                record.subject,
                record.aggregateversion,
                verdict,
                record.commandid,
                told.get(&record.commandid.to_string())
                    .map(|a| a.as_ref().map(|o| o["position"].clone()))
            );
        }
        match verdict {
            Admission::Next => {
                assert!(
                    admitted.insert(record.commandid.to_string()),
                    "a command admitted twice"
                );
            }
            _ => dropped += 1,
        }
    }
    let mut fenced = 0;
    for (id, answer) in &told {
        match answer {
            Ok(_) if accepted(answer) => {
                assert!(
                    admitted.contains(id),
                    "{id} was told accepted but readers drop it"
                );
            }
            Err(reason) if reason.contains("not written here") => {
                fenced += 1;
                assert!(
                    !admitted.contains(id),
                    "{id} was told not owner but readers accept it"
                );
            }
            _ => {}
        }
    }
    assert_eq!(
        dropped, 0,
        "a version twice (or a gap) in the committed log"
    );
    eprintln!(
        "fencing: {} answers, {} accepted, {fenced} fenced, {dropped} records dropped by readers",
        told.len(),
        told.values().filter(|a| accepted(a)).count()
    );
    drop((a, b));
    Ok(())
}
