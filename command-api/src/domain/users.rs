//! The user aggregate, and the email claims that keep an address to one active user.

use event_store::aggregate::Aggregate;
use schemas::UserId;
use schemas::emails::{
    ClaimEmail, EmailClaimed, EmailCommand, EmailEvent, EmailReleased, ReleaseEmail,
};
use schemas::users::{UserCommand, UserDeactivated, UserEmailChanged, UserEvent, UserRegistered};
use serde::{Deserialize, Serialize};

use super::values::{EmailAddress, PersonName};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UserState {
    #[default]
    Unregistered,
    Active {
        name: String,
        email: String,
    },
    Deactivated {
        name: String,
        email: String,
    },
}

/// Why a user command is refused; `code` is the machine-readable problem code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum UserRejection {
    AlreadyRegistered,
    UnknownUser,
    UserDeactivated,
    InvalidName { reason: String },
    InvalidEmail { reason: String },
    SameEmail,
}

#[derive(Debug)]
pub struct User;

impl Aggregate for User {
    type Command = UserCommand;
    type Event = UserEvent;
    type State = UserState;
    type Rejection = UserRejection;

    fn decide(state: &UserState, command: &UserCommand) -> Result<Vec<UserEvent>, UserRejection> {
        match (state, command) {
            (UserState::Unregistered, UserCommand::RegisterUser(c)) => {
                let name = PersonName::parse(&c.name).map_err(|e| UserRejection::InvalidName {
                    reason: e.to_string(),
                })?;
                let email = parse_email(&c.email)?;
                Ok(vec![
                    UserRegistered {
                        user_id: c.user_id,
                        name: name.as_str().to_owned(),
                        email: email.as_str().to_owned(),
                    }
                    .into(),
                ])
            }
            (_, UserCommand::RegisterUser(_)) => Err(UserRejection::AlreadyRegistered),
            (UserState::Unregistered, _) => Err(UserRejection::UnknownUser),
            (UserState::Deactivated { .. }, _) => Err(UserRejection::UserDeactivated),
            (UserState::Active { email, .. }, UserCommand::ChangeUserEmail(c)) => {
                let new = parse_email(&c.email)?;
                if new.as_str() == email {
                    return Err(UserRejection::SameEmail);
                }
                Ok(vec![
                    UserEmailChanged {
                        user_id: c.user_id,
                        previous_email: email.clone(),
                        email: new.as_str().to_owned(),
                    }
                    .into(),
                ])
            }
            (UserState::Active { .. }, UserCommand::DeactivateUser(c)) => Ok(vec![
                UserDeactivated {
                    user_id: c.user_id,
                    reason: c.reason.clone(),
                }
                .into(),
            ]),
        }
    }

    fn evolve(state: UserState, event: &UserEvent) -> UserState {
        match (state, event) {
            (_, UserEvent::UserRegistered(e)) => UserState::Active {
                name: e.name.clone(),
                email: e.email.clone(),
            },
            (UserState::Active { name, .. }, UserEvent::UserEmailChanged(e)) => UserState::Active {
                name,
                email: e.email.clone(),
            },
            (UserState::Active { name, email }, UserEvent::UserDeactivated(_)) => {
                UserState::Deactivated { name, email }
            }
            (state, _) => state,
        }
    }
}

fn parse_email(raw: &str) -> Result<EmailAddress, UserRejection> {
    EmailAddress::parse(raw).map_err(|e| UserRejection::InvalidEmail {
        reason: e.to_string(),
    })
}

/// Who holds an email address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EmailState {
    #[default]
    Free,
    Claimed {
        user_id: UserId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum EmailRejection {
    EmailTaken,
    InvalidEmail { reason: String },
}

/// One aggregate per normalized address: concurrent claims meet at its single writer.
#[derive(Debug)]
pub struct EmailClaim;

impl Aggregate for EmailClaim {
    type Command = EmailCommand;
    type Event = EmailEvent;
    type State = EmailState;
    type Rejection = EmailRejection;

    /// Claiming an address one already holds, or releasing one not held, changes nothing:
    /// both are safe to repeat, as compensations must be.
    fn decide(
        state: &EmailState,
        command: &EmailCommand,
    ) -> Result<Vec<EmailEvent>, EmailRejection> {
        if let EmailCommand::ClaimEmail(c) = command {
            let normalized = EmailAddress::parse(&c.email).map(|e| e.to_string());
            if normalized.as_deref() != Ok(c.email.as_str()) {
                return Err(EmailRejection::InvalidEmail {
                    reason: "not a normalized email address".into(),
                });
            }
        }
        match (state, command) {
            (EmailState::Free, EmailCommand::ClaimEmail(c)) => Ok(vec![
                EmailClaimed {
                    email: c.email.clone(),
                    user_id: c.user_id,
                }
                .into(),
            ]),
            (EmailState::Claimed { user_id }, EmailCommand::ClaimEmail(c))
                if *user_id == c.user_id =>
            {
                Ok(vec![])
            }
            (EmailState::Claimed { .. }, EmailCommand::ClaimEmail(_)) => {
                Err(EmailRejection::EmailTaken)
            }
            (EmailState::Claimed { user_id }, EmailCommand::ReleaseEmail(c))
                if *user_id == c.user_id =>
            {
                Ok(vec![
                    EmailReleased {
                        email: c.email.clone(),
                        user_id: c.user_id,
                    }
                    .into(),
                ])
            }
            (_, EmailCommand::ReleaseEmail(_)) => Ok(vec![]),
        }
    }

    fn evolve(_: EmailState, event: &EmailEvent) -> EmailState {
        match event {
            EmailEvent::EmailClaimed(e) => EmailState::Claimed { user_id: e.user_id },
            EmailEvent::EmailReleased(_) => EmailState::Free,
        }
    }
}

/// A claim command for `email` on behalf of `user`.
pub fn claim(email: &EmailAddress, user: UserId) -> EmailCommand {
    ClaimEmail {
        email: email.to_string(),
        user_id: user,
    }
    .into()
}

/// A release command for `email` held by `user`.
pub fn release(email: &str, user: UserId) -> EmailCommand {
    ReleaseEmail {
        email: email.to_owned(),
        user_id: user,
    }
    .into()
}
