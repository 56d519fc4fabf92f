//! What the orchestrator reports at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::providers::breaker::CircuitGauge;
use crate::saga::Step;

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
        metrics
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
