//! Carrying out the outbox: each due step is claimed for a lease, carried out on a task of
//! its own (a slow provider holds only its own steps, never a partition or another
//! saga), and then marked done, or due again after a jittered backoff, or given up.
//!
//! A step is done once its command is in the log. A crash before that leaves the step in
//! the outbox; it is claimed again when its lease ends and sends the same command id,
//! which the writer recognizes as a duplicate. Providers are called again with the same
//! payment or notification id, which they treat as the same request.

use std::sync::Arc;
use std::time::Duration;

use event_store::commands::CommandSender;
use event_store::{EventStoreError, trace};
use schemas::notifications::{
    DeliveryReport, NotificationCommand, NotificationKind, SendNotification,
};
use schemas::orders::{CancelOrder, CancelledBy, ConfirmOrder, OrderCommand, RejectOrder};
use schemas::payments::{AuthorizePayment, PaymentCommand, ProviderVerdict, RefundPayment};
use schemas::{CommandId, CommandMeta, Money, NotificationId, PaymentId, UserId};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::SagaMetrics;
use crate::providers::breaker::CircuitBreaker;
use crate::providers::payments::{Authorization, PaymentProvider, jitter};
use crate::providers::webhook::{Notice, NotificationChannel};
use crate::providers::{CallError, CallFuture};
use crate::saga::{Action, Input, Policy, SagaState};
use crate::store::{self, Claimed};

/// The issuer of every command the saga sends (a CloudEvents source).
pub const ISSUER: &str = "/shop/saga-orchestrator";

/// How the dispatcher paces itself.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// How long a claimed step stays hidden from other claims (the crash-recovery delay).
    pub lease: Duration,
    /// Every provider call is abandoned after this long.
    pub call_timeout: Duration,
    /// Delivery attempts of a notification before it is recorded as failed.
    pub notify_attempts: i32,
    /// Steps carried out at once.
    pub concurrency: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            call_timeout: Duration::from_secs(2),
            notify_attempts: 5,
            concurrency: 64,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// The providers with their breakers.
#[derive(Debug)]
pub struct Providers {
    pub payments: Arc<dyn PaymentProvider>,
    pub payments_breaker: CircuitBreaker,
    pub channel: Arc<dyn NotificationChannel>,
    pub channel_breaker: CircuitBreaker,
}

#[derive(Debug)]
pub struct Dispatcher {
    pool: PgPool,
    sender: CommandSender,
    providers: Providers,
    config: DispatchConfig,
    policy: Policy,
    wake: Arc<Notify>,
    metrics: SagaMetrics,
}

/// How carrying out a step ended.
#[derive(Debug)]
enum Outcome {
    Done,
    /// The saga no longer needs the step: it is told so, and the step is done.
    NotNeeded,
    RetryIn(Duration, String),
    GiveUp(String),
}

/// A step's command as sent (or not, with why), or how the step ended before it was sent.
type Sent = Result<Result<(), EventStoreError>, Outcome>;

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        sender: CommandSender,
        providers: Providers,
        config: DispatchConfig,
        policy: Policy,
        metrics: SagaMetrics,
    ) -> Self {
        Self {
            pool,
            sender,
            providers,
            config,
            policy,
            wake: Arc::new(Notify::new()),
            metrics,
        }
    }

    /// Notified when new steps are in the outbox.
    pub fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        loop {
            // Room for at least one more step; with every permit taken, the next free one
            // (not a timer) lets the loop claim again.
            let first = tokio::select! {
                () = stop.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let free = 1 + permits.available_permits();
            let claimed = match self.claim(free).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    Vec::new()
                }
            };
            let idle = claimed.len() < free;
            let mut first = Some(first);
            for step in claimed {
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => match Arc::clone(&permits).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                let me = Arc::clone(&self);
                tokio::spawn(async move {
                    me.carry_out(step).await;
                    drop(permit);
                });
            }
            drop(first);
            if idle {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
        // Let steps under way finish (their commands are in flight), bounded.
        let all = u32::try_from(self.config.concurrency).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(self.config.call_timeout * 2, permits.acquire_many(all)).await;
    }

    async fn claim(&self, free: usize) -> Result<Vec<Claimed>, sqlx::Error> {
        if free == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await?;
        store::claim_due(
            &mut conn,
            i64::try_from(free).unwrap_or(64),
            self.config.lease,
        )
        .await
    }

    async fn carry_out(&self, step: Claimed) {
        let span = tracing::trace_span!(
            target: trace::TARGET,
            "carry out",
            step = step.step.as_str(),
            order_id = %step.order_id,
        );
        if let Some(parent) = &step.traceparent {
            trace::set_parent(&span, parent);
        }
        // What the step causes (its command, its provider call, the steps the saga takes
        // on its outcome) continues from this span.
        let step = Claimed {
            traceparent: step
                .traceparent
                .map(|t| trace::exported(&span).unwrap_or(t)),
            ..step
        };
        let outcome = self.outcome_of(&step).instrument(span).await;
        self.metrics
            .observe_step(step.step, outcome_label(&outcome));
        let recorded = match &outcome {
            Outcome::Done => self.mark_done(&step).await,
            Outcome::NotNeeded => self.tell_saga(&step, Input::PaymentNotAsked).await,
            Outcome::RetryIn(delay, error) => {
                tracing::info!(order_id = %step.order_id, step = step.step.as_str(), attempts = step.attempts, %error, "step failed; retrying later");
                self.retry_later(&step, *delay, error).await
            }
            Outcome::GiveUp(error) => {
                tracing::error!(order_id = %step.order_id, step = step.step.as_str(), %error, "step given up");
                self.give_up(&step, error).await
            }
        };
        if let Err(e) = recorded {
            // The lease runs out and the step is carried out again: same command id.
            tracing::warn!(order_id = %step.order_id, step = step.step.as_str(), error = %e, "cannot record a step's outcome");
        }
    }

    async fn outcome_of(&self, step: &Claimed) -> Outcome {
        if matches!(step.action, Action::AuthorizePayment { .. })
            && !self.still_awaits_payment(step).await
        {
            // The deadline passed (or the order ended) before the provider was asked: the
            // saga compensates already, and asking now would only take money to refund.
            return Outcome::NotNeeded;
        }
        let order_id = step.order_id;
        let meta = self.meta(step);
        let sent = match &step.action {
            Action::AuthorizePayment {
                payment_id,
                user_id,
                amount,
            } => self.authorize(step, *payment_id, *user_id, *amount).await,
            Action::RefundPayment {
                payment_id,
                amount,
                reason,
            } => self.refund(step, *payment_id, amount, reason).await,
            Action::Notify { user_id, kind } => self.notify(step, *user_id, *kind).await,
            Action::ConfirmOrder { payment_id } => {
                let command = ConfirmOrder {
                    order_id,
                    payment_id: *payment_id,
                };
                Ok(self.sender.send::<OrderCommand>(meta, command).await)
            }
            Action::RejectOrder { reason } => {
                let command = RejectOrder {
                    order_id,
                    reason: reason.clone(),
                };
                Ok(self.sender.send::<OrderCommand>(meta, command).await)
            }
            Action::CancelOrder { reason } => {
                let command = CancelOrder {
                    order_id,
                    reason: reason.clone(),
                    cancelled_by: CancelledBy::Saga,
                };
                Ok(self.sender.send::<OrderCommand>(meta, command).await)
            }
        };
        match sent {
            Ok(Ok(())) => Outcome::Done,
            Ok(Err(e)) => self.retry(step, format!("command not sent: {e}")),
            Err(ended) => ended,
        }
    }

    /// Asks the payment provider, then records its verdict (a permanent failure is a
    /// decline).
    async fn authorize(
        &self,
        step: &Claimed,
        payment_id: PaymentId,
        user_id: UserId,
        amount: Money,
    ) -> Sent {
        let request = Authorization {
            payment_id,
            order_id: step.order_id,
            user_id,
            amount,
        };
        let provider = &self.providers.payments;
        let verdict = match self
            .call(
                &self.providers.payments_breaker,
                provider_call("authorize"),
                provider.authorize(&request),
            )
            .await
        {
            Ok(verdict) => verdict,
            Err(CallError::Permanent(reason)) => ProviderVerdict::Declined { reason },
            Err(CallError::Transient(error)) => return Err(self.retry(step, error)),
        };
        let command = AuthorizePayment {
            payment_id,
            order_id: step.order_id,
            user_id,
            amount,
            order_total: amount,
            verdict,
        };
        Ok(self
            .sender
            .send::<PaymentCommand>(self.meta(step), command)
            .await)
    }

    /// Asks the payment provider to refund, then records the refund.
    async fn refund(
        &self,
        step: &Claimed,
        payment_id: PaymentId,
        amount: &Money,
        reason: &str,
    ) -> Sent {
        let provider = &self.providers.payments;
        let reference = match self
            .call(
                &self.providers.payments_breaker,
                provider_call("refund"),
                provider.refund(payment_id, amount),
            )
            .await
        {
            Ok(reference) => reference,
            Err(CallError::Permanent(error)) => return Err(Outcome::GiveUp(error)),
            Err(CallError::Transient(error)) => return Err(self.retry(step, error)),
        };
        let command = RefundPayment {
            payment_id,
            order_id: step.order_id,
            reason: reason.to_owned(),
            refund_reference: reference,
        };
        Ok(self
            .sender
            .send::<PaymentCommand>(self.meta(step), command)
            .await)
    }

    /// Delivers through the notification channel, then records the delivery report
    /// (failed once the attempts are used up).
    async fn notify(&self, step: &Claimed, user_id: UserId, kind: NotificationKind) -> Sent {
        let notice = Notice {
            notification_id: NotificationId::for_order(step.order_id, kind),
            order_id: step.order_id,
            user_id,
            kind,
        };
        let channel = &self.providers.channel;
        // The receiver's span, if it keeps one, is a child of this call's.
        let span = provider_call(channel.name());
        let traceparent = step.traceparent.map(|t| trace::traceparent_of(&span, &t));
        let attempts = u32::try_from(step.attempts).unwrap_or(1);
        let report = match self
            .call(
                &self.providers.channel_breaker,
                span,
                channel.deliver(&notice, traceparent),
            )
            .await
        {
            Ok(()) => DeliveryReport::Delivered { attempts },
            Err(CallError::Transient(error)) if step.attempts < self.config.notify_attempts => {
                return Err(self.retry(step, error));
            }
            Err(CallError::Transient(error) | CallError::Permanent(error)) => {
                DeliveryReport::Failed { attempts, error }
            }
        };
        let command = SendNotification {
            notification_id: notice.notification_id,
            order_id: step.order_id,
            user_id,
            kind,
            report,
        };
        Ok(self
            .sender
            .send::<NotificationCommand>(self.meta(step), command)
            .await)
    }

    /// Whether the saga of `step` still waits for its payment (when unsure: yes).
    async fn still_awaits_payment(&self, step: &Claimed) -> bool {
        let Ok(mut conn) = self.pool.acquire().await else {
            return true;
        };
        match store::saga(&mut conn, step.order_id.as_uuid()).await {
            Ok(Some(saga)) => saga.state == SagaState::Running && saga.payment_deadline.is_some(),
            _ => true,
        }
    }

    /// Calls a provider through its breaker, bounded by the call timeout.
    async fn call<T>(
        &self,
        breaker: &CircuitBreaker,
        span: tracing::Span,
        call: CallFuture<'_, T>,
    ) -> Result<T, CallError> {
        if let Err(open) = breaker.admit() {
            return Err(CallError::Transient(format!(
                "circuit open; next probe in {} ms",
                open.retry_in.as_millis()
            )));
        }
        let result =
            match tokio::time::timeout(self.config.call_timeout, call.instrument(span)).await {
                Ok(result) => result,
                Err(_) => Err(CallError::Transient(format!(
                    "no answer within {} ms",
                    self.config.call_timeout.as_millis()
                ))),
            };
        // A refusal is an answer: the provider is up.
        breaker.record(!matches!(result, Err(CallError::Transient(_))));
        result
    }

    fn retry(&self, step: &Claimed, error: String) -> Outcome {
        let exponent = u32::try_from(step.attempts.clamp(1, 16) - 1).unwrap_or(0);
        let ceiling = self
            .config
            .retry_base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.config.retry_max);
        let key = step.command_id.as_u64_pair().0 ^ u64::try_from(step.attempts).unwrap_or(0);
        Outcome::RetryIn(ceiling.mul_f64(jitter(key)), error)
    }

    fn meta(&self, step: &Claimed) -> CommandMeta {
        let mut meta = CommandMeta::new(ISSUER);
        meta.id = CommandId::from(step.command_id);
        meta.causation_id = step.causation_id.unwrap_or(step.command_id);
        meta.correlation_id = step.correlation_id;
        // The command is the child of the step's span (`carry out`, current here).
        let trace = step.traceparent.unwrap_or(meta.traceparent);
        meta.traceparent = trace::traceparent_of(&tracing::Span::current(), &trace);
        meta
    }

    async fn mark_done(&self, step: &Claimed) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        store::done(&mut conn, step.command_id).await
    }

    async fn retry_later(
        &self,
        step: &Claimed,
        delay: Duration,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        store::retry_later(&mut conn, step.command_id, delay, error).await
    }

    /// Tells the saga the step is given up for good.
    async fn give_up(&self, step: &Claimed, error: &str) -> Result<(), sqlx::Error> {
        let input = Input::StepAbandoned {
            step: step.step,
            error: error.to_owned(),
        };
        self.tell_saga(step, input).await
    }

    /// Feeds `input` to the saga of `step` and marks the step done, in one transaction.
    async fn tell_saga(&self, step: &Claimed, input: Input) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut sagas = store::lock_sagas(&mut tx, &[step.order_id]).await?;
        if let Some(saga) = sagas.remove(&step.order_id)
            && let Ok(reaction) =
                crate::saga::react(Some(&saga), &input, store::now(), &self.policy)
        {
            let issued = store::Issued::all(
                reaction.instructions,
                Some(step.command_id),
                step.traceparent,
            );
            store::store(&mut tx, &[&reaction.saga], &issued).await?;
        }
        store::done(&mut tx, step.command_id).await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Done => "done",
        Outcome::NotNeeded => "not_needed",
        Outcome::RetryIn(..) => "retry",
        Outcome::GiveUp(_) => "given_up",
    }
}

/// The span of one call to a provider (a child of the step's).
fn provider_call(provider: &'static str) -> tracing::Span {
    tracing::trace_span!(target: trace::TARGET, "provider call", provider, otel.kind = "client")
}
