//! The user aggregate, and the email claims that keep an address to one active user.
//!
//! A request claims the address first and changes the user second. When it dies in
//! between, the claim is stranded: held for a user who does not have the address. The
//! next request claiming that address, once the claim is older than a grace period, asks
//! the user's writer to declare the claim lapsed (refused while the user holds the
//! address), then releases it under the version it read. A registration or change carries
//! the version of the claim it relies on and is refused once that claim lapsed, so a
//! request that lands late can never give the address to a second user.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use event_store::aggregate::Aggregate;
use schemas::UserId;
use schemas::emails::{
    ClaimEmail, EmailClaimed, EmailCommand, EmailEvent, EmailReleased, ReleaseEmail,
};
use schemas::users::{
    EmailClaimLapsed, LapseEmailClaim, UserCommand, UserDeactivated, UserEmailChanged, UserEvent,
    UserRegistered,
};
use serde::{Deserialize, Serialize};

use super::values::{EmailAddress, PersonName};

/// What the user is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UserStatus {
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

/// A user as its writer decides on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    #[serde(flatten)]
    pub status: UserStatus,
    /// Per address, the newest claim version declared lapsed for this user: no command
    /// relying on that claim or an older one is accepted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lapsed_claims: BTreeMap<String, u64>,
}

impl UserState {
    /// Whether the user is active with `email`.
    pub fn holds(&self, email: &str) -> bool {
        matches!(&self.status, UserStatus::Active { email: own, .. } if own == email)
    }

    fn lapsed(&self, email: &str, claim: Option<u64>) -> bool {
        match (self.lapsed_claims.get(email), claim) {
            (Some(lapsed), Some(claim)) => claim <= *lapsed,
            _ => false,
        }
    }
}

/// Why a user command is refused; `code` is the machine-readable problem code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum UserRejection {
    AlreadyRegistered,
    UnknownUser,
    UserDeactivated,
    InvalidName {
        reason: String,
    },
    InvalidEmail {
        reason: String,
    },
    SameEmail,
    /// The email claim this command relied on lapsed: another request may hold it now.
    ClaimLapsed,
    /// The user holds the address: its claim stands.
    ClaimHeld,
}

#[derive(Debug)]
pub struct User;

impl Aggregate for User {
    type Command = UserCommand;
    type Event = UserEvent;
    type State = UserState;
    type Rejection = UserRejection;

    fn decide(state: &UserState, command: &UserCommand) -> Result<Vec<UserEvent>, UserRejection> {
        match (&state.status, command) {
            (_, UserCommand::LapseEmailClaim(c)) => lapse(state, c),
            (_, UserCommand::RegisterUser(c)) if state.lapsed(&c.email, c.claim) => {
                Err(UserRejection::ClaimLapsed)
            }
            (_, UserCommand::ChangeUserEmail(c)) if state.lapsed(&c.email, c.claim) => {
                Err(UserRejection::ClaimLapsed)
            }
            (UserStatus::Unregistered, UserCommand::RegisterUser(c)) => {
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
            (UserStatus::Unregistered, _) => Err(UserRejection::UnknownUser),
            (UserStatus::Deactivated { .. }, _) => Err(UserRejection::UserDeactivated),
            (UserStatus::Active { email, .. }, UserCommand::ChangeUserEmail(c)) => {
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
            (UserStatus::Active { .. }, UserCommand::DeactivateUser(c)) => Ok(vec![
                UserDeactivated {
                    user_id: c.user_id,
                    reason: c.reason.clone(),
                }
                .into(),
            ]),
        }
    }

    fn evolve(state: UserState, event: &UserEvent) -> UserState {
        let UserState {
            status,
            mut lapsed_claims,
        } = state;
        let status = match (status, event) {
            (_, UserEvent::UserRegistered(e)) => UserStatus::Active {
                name: e.name.clone(),
                email: e.email.clone(),
            },
            (UserStatus::Active { name, .. }, UserEvent::UserEmailChanged(e)) => {
                UserStatus::Active {
                    name,
                    email: e.email.clone(),
                }
            }
            (UserStatus::Active { name, email }, UserEvent::UserDeactivated(_)) => {
                UserStatus::Deactivated { name, email }
            }
            (status, UserEvent::EmailClaimLapsed(e)) => {
                let newest = lapsed_claims.entry(e.email.clone()).or_default();
                *newest = (*newest).max(e.claim);
                status
            }
            (status, _) => status,
        };
        UserState {
            status,
            lapsed_claims,
        }
    }
}

/// A claim lapses unless the user holds its address; lapsing it again changes nothing.
fn lapse(state: &UserState, c: &LapseEmailClaim) -> Result<Vec<UserEvent>, UserRejection> {
    if state.holds(&c.email) {
        return Err(UserRejection::ClaimHeld);
    }
    if state.lapsed(&c.email, Some(c.claim)) {
        return Ok(vec![]);
    }
    Ok(vec![
        EmailClaimLapsed {
            user_id: c.user_id,
            email: c.email.clone(),
            claim: c.claim,
        }
        .into(),
    ])
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
        /// When the claiming request started (absent on claims older than this field).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<DateTime<Utc>>,
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

    /// Releasing an address not held changes nothing (safe to repeat, as compensations
    /// must be); claiming one already held renews the claim.
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
                    at: c.at,
                }
                .into(),
            ]),
            // The holder claiming again moves the claim on (a new version, a new time), so
            // a release under the old version by another of its requests changes nothing.
            (EmailState::Claimed { user_id, .. }, EmailCommand::ClaimEmail(c))
                if *user_id == c.user_id =>
            {
                Ok(vec![
                    EmailClaimed {
                        email: c.email.clone(),
                        user_id: c.user_id,
                        at: c.at,
                    }
                    .into(),
                ])
            }
            (EmailState::Claimed { .. }, EmailCommand::ClaimEmail(_)) => {
                Err(EmailRejection::EmailTaken)
            }
            (EmailState::Claimed { user_id, .. }, EmailCommand::ReleaseEmail(c))
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
            EmailEvent::EmailClaimed(e) => EmailState::Claimed {
                user_id: e.user_id,
                since: e.at,
            },
            EmailEvent::EmailReleased(_) => EmailState::Free,
        }
    }
}

/// A claim command for `email` on behalf of `user`, by a request that started `at`.
pub fn claim(email: &EmailAddress, user: UserId, at: DateTime<Utc>) -> EmailCommand {
    ClaimEmail {
        email: email.to_string(),
        user_id: user,
        at: Some(at),
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
