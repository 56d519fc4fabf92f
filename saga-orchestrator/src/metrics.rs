//! What the orchestrator reports at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use std::sync::atomic::AtomicU64;

use crate::providers::breaker::CircuitGauge;
use crate::saga::Step;
use crate::store;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, Default)]
pub struct SagaMetrics {
    /// Inputs the sagas took (`applied`) or found out of place (`ignored`), by input.
    pub inputs: Family<Labels, Counter>,
    /// Steps carried out, by step and outcome (done, retry, given_up).
    pub steps: Family<Labels, Counter>,
    /// Deadlines that fired.
    pub deadlines_fired: Counter,
    /// Each provider's circuit: 0 closed, 1 open, 2 half-open.
    pub circuit: CircuitGauge,
    /// Records of the orchestrator's topics not taken in yet.
    pub lag_events: Gauge,
    /// Sagas in each state that is not an end (running, compensating) or waits for an
    /// operator (failed), counted every few seconds.
    pub sagas: Family<Labels, Gauge>,
    /// Per such state, how long its longest-waiting saga has not moved (seconds).
    pub stuck_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
}

impl SagaMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "saga_inputs",
            "Inputs taken by sagas, by input and result",
            metrics.inputs.clone(),
        );
        registry.register(
            "saga_steps",
            "Saga steps carried out, by step and outcome",
            metrics.steps.clone(),
        );
        registry.register(
            "saga_deadlines_fired",
            "Payment deadlines that fired",
            metrics.deadlines_fired.clone(),
        );
        registry.register(
            "saga_circuit_state",
            "Circuit breaker per provider: 0 closed, 1 open, 2 half-open",
            metrics.circuit.clone(),
        );
        registry.register(
            "saga_lag_events",
            "Records of the order, payment, notification and user topics not taken in yet",
            metrics.lag_events.clone(),
        );
        registry.register(
            "sagas",
            "Sagas running, compensating, or failed (waiting for an operator's retry)",
            metrics.sagas.clone(),
        );
        registry.register(
            "saga_stuck_seconds",
            "Per state, how long the saga that moved least recently has not moved",
            metrics.stuck_seconds.clone(),
        );
        metrics
    }

    /// What a census found: (state, sagas, seconds since the oldest moved). States not in
    /// it have none.
    pub fn observe_census(&self, census: &[(String, i64, f64)]) {
        for state in store::CENSUS_STATES {
            let found = census.iter().find(|(s, ..)| s == state);
            let labels = vec![("state", (*state).to_owned())];
            self.sagas
                .get_or_create(&labels)
                .set(found.map_or(0, |(_, n, _)| *n));
            self.stuck_seconds
                .get_or_create(&labels)
                .set(found.map_or(0.0, |(.., s)| *s));
        }
    }

    pub fn observe_step(&self, step: Step, outcome: &str) {
        self.steps
            .get_or_create(&vec![
                ("step", step.as_str().to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    pub fn observe_input(&self, input: &'static str, result: &'static str) {
        self.inputs
            .get_or_create(&vec![
                ("input", input.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }
}
