//! What the command API's HTTP tests share: an instance of the service in the test's
//! process, on the test's broker and database, and small request helpers.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use event_store::writer::log::PartitionLog;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use rdkafka::Message;
use reqwest::{Client, Response, StatusCode};
use schemas::EventDocument;
use serde_json::{Value, json};
use service_runtime::Env;
use test_support::TestEnv;

pub const KEY: &str = "test-key";
pub const PARTITIONS: i32 = 2;

pub struct App {
    pub base: String,
    pub client: Client,
    pub brokers: String,
    pub topics: TopicNames,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), service_runtime::ServiceError>>>,
}

impl App {
    pub async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_on(env, &env.brokers, extra).await
    }

    pub async fn start_on(
        env: &TestEnv,
        brokers: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let topics = TopicNames::new(&env.topic_prefix);
        TopicAdmin::new(&KafkaSettings::new(brokers))?
            .create(&topics.all(PARTITIONS), 1)
            .await?;
        let partitions = PARTITIONS.to_string();
        let mut vars = vec![
            ("KAFKA_BROKERS", brokers),
            ("KAFKA_TIMEOUT_MS", "2000"),
            ("DATABASE_URL", env.database_url.as_str()),
            ("TOPIC_PREFIX", env.topic_prefix.as_str()),
            ("EVENT_PARTITIONS", partitions.as_str()),
            ("COMMAND_API_ADDR", "127.0.0.1:0"),
            ("API_KEYS", "other-key, test-key"),
        ];
        vars.extend_from_slice(extra);
        let config = command_api::Config::from_env(&Env::from_pairs(vars))?;
        let service = command_api::build(config).await?;
        let base = format!("http://{}", service.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run_until(async move {
            let _ = stopped.await;
        }));
        let app = Self {
            base,
            client: Client::new(),
            brokers: brokers.to_owned(),
            topics,
            stop: Some(stop),
            task: Some(task),
        };
        app.wait_ready().await?;
        Ok(app)
    }

    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let ready = format!("{}/ready", self.base);
        test_support::wait_for_200(&ready, Duration::from_secs(30)).await?;
        Ok(())
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(15))
    }

    pub async fn send(&self, path: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
        answer(self.post(path).json(&body).send().await?).await
    }

    /// Every event record of a service's log, in partition and offset order.
    pub async fn events(&self, service: &str) -> anyhow::Result<Vec<EventDocument>> {
        events(&self.brokers, &self.topics.events(service)).await
    }
}

/// Every event of an event topic, in partition and offset order.
pub async fn events(brokers: &str, topic: &str) -> anyhow::Result<Vec<EventDocument>> {
    let values = values(brokers, topic).await?;
    Ok(values
        .iter()
        .map(|v| EventDocument::from_json(v).expect("an event"))
        .collect())
}

/// The value of every committed record of `topic`, in partition and offset order.
pub async fn values(brokers: &str, topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let settings = KafkaSettings::new(brokers);
    let ends = event_store::scan::settled_ends(&settings, topic).await?;
    let mut all = Vec::new();
    for partition in 0..PARTITIONS {
        let log = PartitionLog::reader(settings.clone(), partition)?;
        let end = ends.get(&partition).copied().unwrap_or(0);
        log.read_range(topic, 0, end, |m| {
            all.push(m.payload().expect("value").to_vec());
        })
        .await?;
    }
    Ok(all)
}

impl App {
    /// Stops gracefully: the writers leave their group, so a successor takes over at once.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

/// Sends until the answer is not 503 (which says: retry), as a client would.
pub async fn until_decided(
    request: impl Fn() -> reqwest::RequestBuilder,
) -> anyhow::Result<Response> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = request().send().await?;
        if response.status() != 503 || Instant::now() > deadline {
            return Ok(response);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn answer(response: Response) -> anyhow::Result<(StatusCode, Value)> {
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

pub fn user_body(name: &str, email: &str) -> Value {
    json!({"name": name, "email": email})
}

pub async fn register(app: &App, email: &str) -> anyhow::Result<String> {
    let (status, body) = app
        .send("/v1/users", user_body("Ada Lovelace", email))
        .await?;
    assert_eq!(status, 201, "{body}");
    Ok(body["id"].as_str().expect("an id").to_owned())
}

pub fn order_body(user: &str) -> Value {
    json!({"user_id": user, "currency": "EUR", "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}]})
}

/// One answer as a client sees it: status, `Location`, `Content-Type`, body bytes.
pub type Answer = (StatusCode, Option<String>, Option<String>, Vec<u8>);

/// Sends the request `path` + `body` with one `Idempotency-Key` `copies` times at once,
/// spread over `apps` in turn, and gathers every answer.
pub async fn same_key_at_once(
    apps: &[&App],
    path: &str,
    body: &Value,
    key: &str,
    copies: usize,
) -> anyhow::Result<Vec<Answer>> {
    let sends: Vec<_> = (0..copies)
        .map(|i| {
            let request = apps[i % apps.len()]
                .post(path)
                .header("Idempotency-Key", key)
                .json(body);
            tokio::spawn(request.send())
        })
        .collect();
    let mut answers = Vec::new();
    for send in sends {
        let response = send.await??;
        let (location, content_type) = {
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            (header("location"), header("content-type"))
        };
        answers.push((
            response.status(),
            location,
            content_type,
            response.bytes().await?.to_vec(),
        ));
    }
    Ok(answers)
}

/// Asserts that every answer is the first one, byte for byte, and returns it.
pub fn one_answer(answers: &[Answer]) -> &Answer {
    let first = &answers[0];
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(
            answer,
            first,
            "answer {i} differs: {} {:?} {} / first {} {:?} {}",
            answer.0,
            answer.1,
            String::from_utf8_lossy(&answer.3),
            first.0,
            first.1,
            String::from_utf8_lossy(&first.3)
        );
    }
    first
}

/// How many commands `service`'s writers on `app` have answered, by its `/metrics`: a
/// request that runs again sends its commands again (same ids) and adds to this count.
pub async fn commands_answered(app: &App, service: &str) -> anyhow::Result<u64> {
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await?
        .text()
        .await?;
    let service = format!("service=\"{service}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("shop_writer_commands_total{") && l.contains(&service))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}
