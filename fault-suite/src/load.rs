//! The steady load: users register, place orders (a share above the payment simulator's
//! decline limit), cancel some of them and now and then a user is deactivated while its
//! orders run. Every request carries an `Idempotency-Key` and an `X-Correlation-Id` of its
//! own and is retried with both unchanged (on 5xx, 429 and lost connections) until it gets
//! an answer, as a careful client would. The ledger keeps what each request was told.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Orders above this many cents are declined by the payment simulator the suite configures.
pub const DECLINE_ABOVE_CENTS: u64 = 5_000;
/// How long a request is retried before its outcome counts as unknown.
const GIVE_UP_AFTER: Duration = Duration::from_secs(180);
/// Requests in flight at most.
const IN_FLIGHT: usize = 64;

/// What a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    RegisterUser,
    PlaceOrder,
    CancelOrder,
    DeactivateUser,
}

impl Kind {
    /// The event an accepted request of this kind appends.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::RegisterUser => "UserRegistered",
            Self::PlaceOrder => "OrderPlaced",
            Self::CancelOrder => "OrderCancelled",
            Self::DeactivateUser => "UserDeactivated",
        }
    }
}

/// What a request was told in the end.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// 2xx: the aggregate and its version after the command.
    Accepted { id: String, version: u64 },
    /// 4xx other than 429: refused, nothing may have been appended.
    Refused { status: u16, body: String },
    /// No answer before the suite gave up.
    Unknown { last_error: String },
}

/// One request of the load.
#[derive(Clone, Debug)]
pub struct Request {
    pub kind: Kind,
    pub correlation_id: Uuid,
    /// The aggregate the request names (cancel and deactivate).
    pub target: Option<String>,
    pub outcome: Outcome,
    /// Attempts beyond the first.
    pub retries: u32,
    /// When the first attempt went out.
    pub sent_at: Instant,
    /// From the first attempt to the answer that counted (retries included).
    pub took: Duration,
}

/// Every request of the run.
#[derive(Clone, Debug, Default)]
pub struct Ledger(Arc<Mutex<Vec<Request>>>);

impl Ledger {
    fn record(&self, request: Request) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(request);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A uniformly drawn number below `n`.
pub fn random_below(n: u64) -> u64 {
    u64::try_from(Uuid::new_v4().as_u128() % u128::from(n.max(1))).unwrap_or(0)
}

/// Where and how fast to send the load.
#[derive(Clone, Debug)]
pub struct Load {
    /// Every instance of the command API: each request goes to one of them at random.
    pub command_api: Vec<String>,
    pub api_key: String,
    pub orders_per_second: f64,
}

#[derive(Clone, Debug)]
struct Sender {
    client: reqwest::Client,
    bases: Arc<Vec<String>>,
    ledger: Ledger,
}

impl Sender {
    /// Sends one request until it gets an answer (or the suite gives up) and records it.
    async fn send(&self, kind: Kind, path: &str, body: Value, target: Option<String>) -> Outcome {
        let key = Uuid::new_v4().to_string();
        let correlation_id = Uuid::new_v4();
        let started = Instant::now();
        let mut retries = 0;
        let mut pause = Duration::from_millis(100);
        let outcome = loop {
            let base = usize::try_from(random_below(self.bases.len() as u64))
                .ok()
                .and_then(|i| self.bases.get(i))
                .map_or("", String::as_str);
            let answer = self
                .client
                .post(format!("{base}{path}"))
                .header("Idempotency-Key", &key)
                .header("X-Correlation-Id", correlation_id.to_string())
                .json(&body)
                .timeout(Duration::from_secs(15))
                .send()
                .await;
            let error = match answer {
                Ok(response) if response.status().is_success() => {
                    let accepted: Value = response.json().await.unwrap_or_default();
                    break Outcome::Accepted {
                        id: accepted["id"].as_str().unwrap_or_default().to_owned(),
                        version: accepted["version"].as_u64().unwrap_or(0),
                    };
                }
                Ok(response)
                    if response.status().is_client_error() && response.status().as_u16() != 429 =>
                {
                    let status = response.status().as_u16();
                    break Outcome::Refused {
                        status,
                        body: response.text().await.unwrap_or_default(),
                    };
                }
                Ok(response) => format!("{}", response.status()),
                Err(e) => e.to_string(),
            };
            if started.elapsed() > GIVE_UP_AFTER {
                break Outcome::Unknown { last_error: error };
            }
            retries += 1;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        };
        self.ledger.record(Request {
            kind,
            correlation_id,
            target,
            outcome: outcome.clone(),
            retries,
            sent_at: started,
            took: started.elapsed(),
        });
        outcome
    }

    async fn register(&self, n: u64) -> Option<String> {
        let body = json!({
            "name": format!("Fault User {n}"),
            "email": format!("fault-{n}-{}@example.com", Uuid::new_v4().simple()),
        });
        match self.send(Kind::RegisterUser, "/v1/users", body, None).await {
            Outcome::Accepted { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Users that may still order.
#[derive(Clone, Debug, Default)]
struct Customers(Arc<Mutex<Vec<String>>>);

impl Customers {
    fn add(&self, id: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(id);
    }

    fn pick(&self) -> Option<String> {
        let all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = u64::try_from(all.len()).unwrap_or(0);
        usize::try_from(random_below(n))
            .ok()
            .and_then(|i| all.get(i).cloned())
    }

    /// Takes a random user out (to deactivate it), keeping at least `keep`.
    fn take(&self, keep: usize) -> Option<String> {
        let mut all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.len() <= keep {
            return None;
        }
        let n = u64::try_from(all.len()).unwrap_or(0);
        let i = usize::try_from(random_below(n)).unwrap_or(0);
        Some(all.swap_remove(i))
    }
}

impl Load {
    /// Runs the load until `stop` resolves, then waits for the requests in flight.
    pub async fn run(self, ledger: Ledger, stop: impl std::future::Future<Output = ()>) {
        let sender = Sender {
            client: test_support::client(&self.api_key),
            bases: Arc::new(self.command_api.clone()),
            ledger,
        };
        let customers = Customers::default();
        for n in 0..20 {
            if let Some(id) = sender.register(n).await {
                customers.add(id);
            }
        }
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(
            1.0 / self.orders_per_second.max(0.1),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let mut n: u64 = 20;
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = tick.tick() => {}
            }
            n += 1;
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let (sender, customers) = (sender.clone(), customers.clone());
            tokio::spawn(async move {
                let _slot = slot;
                one_order(&sender, &customers, n).await;
            });
        }
        // Everything in flight gets its answer before the audit starts.
        let _ = slots
            .acquire_many(u32::try_from(IN_FLIGHT).unwrap_or(u32::MAX))
            .await;
    }
}

/// One order and what may follow it: every tenth order a new user, every fifth order
/// above the decline limit, every tenth cancelled after a pause (before or after its
/// confirmation), every fortieth followed by its customer's deactivation.
async fn one_order(sender: &Sender, customers: &Customers, n: u64) {
    if n.is_multiple_of(10)
        && let Some(id) = sender.register(n).await
    {
        customers.add(id);
    }
    let Some(user) = customers.pick() else {
        return;
    };
    let cents = if n.is_multiple_of(5) {
        DECLINE_ABOVE_CENTS * 2
    } else {
        1_250
    };
    let body = json!({
        "user_id": user, "currency": "EUR",
        "lines": [{"sku": format!("SKU-{}", n % 17), "quantity": 1 + n % 3, "unit_price_cents": cents}],
    });
    let Outcome::Accepted { id: order, .. } = sender
        .send(Kind::PlaceOrder, "/v1/orders", body, None)
        .await
    else {
        return;
    };
    if n % 10 == 3 {
        tokio::time::sleep(Duration::from_millis(random_below(3_000))).await;
        let path = format!("/v1/orders/{order}/cancel");
        sender
            .send(
                Kind::CancelOrder,
                &path,
                json!({"reason": "changed my mind"}),
                Some(order),
            )
            .await;
    }
    if n % 40 == 7
        && let Some(user) = customers.take(10)
    {
        let path = format!("/v1/users/{user}/deactivate");
        sender
            .send(
                Kind::DeactivateUser,
                &path,
                json!({"reason": "closed"}),
                Some(user),
            )
            .await;
    }
}
