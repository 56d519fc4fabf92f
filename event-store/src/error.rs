//! The one error type of the event store. Variants are outcomes a caller acts on, each
//! naming the operation that failed.

use crate::topics::TopicProblem;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EventStoreError {
    /// The broker did not answer in time or could not be reached: retry later (503).
    #[error("broker unavailable during {operation}: {reason}")]
    Unavailable {
        operation: &'static str,
        reason: String,
    },
    /// The broker answered with an error that waiting will not fix.
    #[error("broker refused {operation}: {reason}")]
    Refused {
        operation: &'static str,
        reason: String,
    },
    /// A topic is missing or configured so that it could lose or misroute events.
    #[error(transparent)]
    Topic(#[from] TopicProblem),
    /// This instance does not (or no longer) write the aggregate's partition: retry, the
    /// owner may have moved.
    #[error("partition {partition} of {service} is not written here (ownership is moving); retry")]
    NotOwner {
        service: &'static str,
        partition: i32,
    },
    /// The request cannot be carried out at all (an undecodable command record).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The client could not be configured (a setting librdkafka rejects).
    #[error("invalid Kafka client configuration: {0}")]
    Configuration(String),
}

impl EventStoreError {
    /// Whether waiting may fix it (the broker unreachable or slow).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    pub fn from_kafka(operation: &'static str, e: rdkafka::error::KafkaError) -> Self {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
        let code = e.rdkafka_error_code();
        let transient = matches!(
            code,
            Some(
                Code::BrokerTransportFailure
                    | Code::AllBrokersDown
                    | Code::OperationTimedOut
                    | Code::RequestTimedOut
                    | Code::MessageTimedOut
                    | Code::NetworkException
                    | Code::LeaderNotAvailable
                    | Code::NotLeaderForPartition
                    | Code::NotCoordinator
                    | Code::CoordinatorNotAvailable
                    | Code::CoordinatorLoadInProgress
                    | Code::QueueFull
            )
        );
        match e {
            KafkaError::ClientCreation(reason) => Self::Configuration(reason),
            _ if transient => Self::Unavailable {
                operation,
                reason: e.to_string(),
            },
            _ => Self::Refused {
                operation,
                reason: e.to_string(),
            },
        }
    }
}
