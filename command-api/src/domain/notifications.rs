//! The notification aggregate: at most one per (order, kind), with its delivery attempts.

use event_store::aggregate::Aggregate;
use schemas::NotificationId;
use schemas::notifications::{
    DeliveryReport, NotificationCommand, NotificationEvent, NotificationFailed, NotificationSent,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum NotificationState {
    #[default]
    Unsent,
    Sent {
        attempts: u32,
    },
    Failed {
        attempts: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum NotificationRejection {
    /// This (order, kind) already has its notification.
    AlreadyRecorded,
    /// The notification id is not the one of its (order, kind).
    WrongNotification,
    /// A delivery is at least one attempt.
    NoAttempt,
}

#[derive(Debug)]
pub struct Notification;

impl Aggregate for Notification {
    type Command = NotificationCommand;
    type Event = NotificationEvent;
    type State = NotificationState;
    type Rejection = NotificationRejection;

    fn decide(
        state: &NotificationState,
        command: &NotificationCommand,
    ) -> Result<Vec<NotificationEvent>, NotificationRejection> {
        let NotificationCommand::SendNotification(c) = command;
        if *state != NotificationState::Unsent {
            return Err(NotificationRejection::AlreadyRecorded);
        }
        if c.notification_id != NotificationId::for_order(c.order_id, c.kind) {
            return Err(NotificationRejection::WrongNotification);
        }
        let event: NotificationEvent = match &c.report {
            DeliveryReport::Delivered { attempts: 0 }
            | DeliveryReport::Failed { attempts: 0, .. } => {
                return Err(NotificationRejection::NoAttempt);
            }
            DeliveryReport::Delivered { attempts } => NotificationSent {
                notification_id: c.notification_id,
                order_id: c.order_id,
                user_id: c.user_id,
                kind: c.kind,
                attempts: *attempts,
            }
            .into(),
            DeliveryReport::Failed { attempts, error } => NotificationFailed {
                notification_id: c.notification_id,
                order_id: c.order_id,
                user_id: c.user_id,
                kind: c.kind,
                attempts: *attempts,
                error: error.clone(),
            }
            .into(),
        };
        Ok(vec![event])
    }

    fn evolve(_: NotificationState, event: &NotificationEvent) -> NotificationState {
        match event {
            NotificationEvent::NotificationSent(e) => NotificationState::Sent {
                attempts: e.attempts,
            },
            NotificationEvent::NotificationFailed(e) => NotificationState::Failed {
                attempts: e.attempts,
            },
        }
    }
}
