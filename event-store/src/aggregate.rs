//! What the event store knows of a domain: an aggregate is a pair of pure functions over
//! its own command and event families. `decide` holds every business rule; `evolve` only
//! changes state. The store never looks inside commands, events or state.

use std::fmt::Debug;

use schemas::MessageFamily;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub trait Aggregate: Send + Sync + 'static {
    type Command: MessageFamily + Send + Sync + 'static;
    type Event: MessageFamily + Send + Sync + 'static;
    /// The state at version 0 is `Default`. Serializable, because snapshots store it.
    type State: Default + Clone + Debug + Send + Sync + Serialize + DeserializeOwned + 'static;
    /// Why a command was refused, kept as part of the command's outcome.
    type Rejection: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The events a command causes on `state`, or why it is refused. Pure: no I/O, no clock.
    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// The state after `event`.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
}
