//! The payment provider: a trait, and the deterministic simulator the stack runs with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use schemas::payments::ProviderVerdict;
use schemas::{Money, OrderId, PaymentId, UserId};

use super::{CallError, CallFuture};

/// What the provider is asked to authorize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub amount: Money,
}

/// A payment provider. Both calls are idempotent by payment id: asking again after a
/// crash gives the same answer, and a payment is refunded at most once.
pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;

    /// The provider's verdict: approved (with its reference) or declined (with why).
    fn authorize<'a>(&'a self, request: &'a Authorization) -> CallFuture<'a, ProviderVerdict>;

    /// Gives the money back; the provider's refund reference.
    fn refund<'a>(&'a self, payment_id: PaymentId, amount: &'a Money) -> CallFuture<'a, String>;
}

/// How the simulator behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulatorRules {
    /// Amounts above this (in minor units) are declined.
    pub decline_above_cents: u64,
    /// Refunds of payments of exactly this amount (minor units) are refused for good, as a
    /// provider refuses one to a closed account; `None`: every refund goes through.
    pub refuse_refunds_of_cents: Option<u64>,
    /// How long every call takes.
    pub latency: Duration,
    /// The share of calls (0 to 1) that fail as if the provider were unreachable.
    pub failure_rate: f64,
    /// Seed of the failure sequence: the same seed fails the same calls.
    pub seed: u64,
}

impl Default for SimulatorRules {
    fn default() -> Self {
        Self {
            decline_above_cents: 100_000,
            refuse_refunds_of_cents: None,
            latency: Duration::from_millis(20),
            failure_rate: 0.0,
            seed: 7,
        }
    }
}

/// A provider that decides by rules: no network, same inputs, same verdicts.
#[derive(Debug)]
pub struct Simulator {
    rules: SimulatorRules,
    calls: AtomicU64,
}

impl Simulator {
    pub fn new(rules: SimulatorRules) -> Self {
        Self {
            rules,
            calls: AtomicU64::new(0),
        }
    }

    /// Waits the configured latency, then fails the call if its turn in the seeded
    /// sequence says so.
    async fn call(&self) -> Result<(), CallError> {
        tokio::time::sleep(self.rules.latency).await;
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if unit_interval(self.rules.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            < self.rules.failure_rate
        {
            return Err(CallError::Transient("simulated provider outage".into()));
        }
        Ok(())
    }
}

impl PaymentProvider for Simulator {
    fn name(&self) -> &'static str {
        "payment-simulator"
    }

    fn authorize<'a>(&'a self, request: &'a Authorization) -> CallFuture<'a, ProviderVerdict> {
        Box::pin(async move {
            self.call().await?;
            if request.amount.amount_cents > self.rules.decline_above_cents {
                return Ok(ProviderVerdict::Declined {
                    reason: format!(
                        "amount {} above the limit of {}",
                        request.amount.amount_cents, self.rules.decline_above_cents
                    ),
                });
            }
            Ok(ProviderVerdict::Approved {
                reference: format!("sim-auth-{}", short(request.payment_id)),
            })
        })
    }

    fn refund<'a>(&'a self, payment_id: PaymentId, amount: &'a Money) -> CallFuture<'a, String> {
        Box::pin(async move {
            self.call().await?;
            if self.rules.refuse_refunds_of_cents == Some(amount.amount_cents) {
                return Err(CallError::Permanent(format!(
                    "refund of {} refused: the account is closed",
                    amount.amount_cents
                )));
            }
            Ok(format!("sim-refund-{}", short(payment_id)))
        })
    }
}

fn short(payment_id: PaymentId) -> String {
    payment_id.as_uuid().simple().to_string()[..12].to_owned()
}

/// A number in [0, 1) from a 64-bit seed (splitmix64).
fn unit_interval(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A jitter factor in [0.5, 1) for `key`: retries of different steps spread out, and the
/// same step's retry schedule is reproducible.
pub fn jitter(key: u64) -> f64 {
    0.5 + unit_interval(key) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cents: u64) -> Authorization {
        let order = OrderId::new();
        Authorization {
            payment_id: PaymentId::for_order(order),
            order_id: order,
            user_id: UserId::new(),
            amount: Money {
                amount_cents: cents,
                currency: "EUR".parse().unwrap(),
            },
        }
    }

    fn simulator(failure_rate: f64) -> Simulator {
        Simulator::new(SimulatorRules {
            latency: Duration::ZERO,
            failure_rate,
            ..SimulatorRules::default()
        })
    }

    #[tokio::test]
    async fn approves_up_to_the_limit_and_declines_above_it_the_same_way_every_time() {
        let sim = simulator(0.0);
        let small = request(100_000);
        let first = sim.authorize(&small).await.unwrap();
        assert!(matches!(first, ProviderVerdict::Approved { .. }));
        assert_eq!(
            sim.authorize(&small).await.unwrap(),
            first,
            "idempotent by payment"
        );
        let large = request(100_001);
        assert!(matches!(
            sim.authorize(&large).await.unwrap(),
            ProviderVerdict::Declined { .. }
        ));
    }

    #[tokio::test]
    async fn fails_about_the_configured_share_of_calls() {
        let sim = simulator(0.3);
        let mut failures = 0;
        for _ in 0..1000 {
            if sim.authorize(&request(10)).await.is_err() {
                failures += 1;
            }
        }
        assert!((250..350).contains(&failures), "{failures} of 1000");
        let refund = simulator(1.0)
            .refund(PaymentId::for_order(OrderId::new()), &request(1).amount)
            .await;
        assert!(refund.is_err(), "every call fails at rate 1");
    }

    #[tokio::test]
    async fn refuses_for_good_the_refunds_of_the_configured_amount_only() {
        let sim = Simulator::new(SimulatorRules {
            latency: Duration::ZERO,
            refuse_refunds_of_cents: Some(1313),
            ..SimulatorRules::default()
        });
        let payment = PaymentId::for_order(OrderId::new());
        assert!(matches!(
            sim.refund(payment, &request(1313).amount).await,
            Err(CallError::Permanent(_))
        ));
        assert!(sim.refund(payment, &request(1314).amount).await.is_ok());
    }
}
