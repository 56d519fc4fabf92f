//! The user aggregate, and the email claims that keep an address to one active user.
//!
//! A request claims the address first and changes the user second. When it dies in
//! between, the claim is stranded: held for a user who does not have the address. The
//! next request claiming that address, once the claim is older than a grace period, asks
//! the user's writer to declare the claim lapsed (refused while the user holds the
//! address), then releases it under the version it read. A registration or change carries
//! the version of the claim it relies on and is refused once that claim lapsed, so a
//! request that lands late can never give the address to a second user.
//!
//! Personal fields reach the user's writer sealed (see [`schemas::personal`]) and it keeps
//! them so; it refuses one in the clear. Addresses are compared by their claim id, the
//! blind index the claims are keyed by. A forgotten user stays forgotten.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use event_store::aggregate::Aggregate;
use schemas::UserId;
use schemas::emails::{
    ClaimEmail, EmailClaimed, EmailCommand, EmailEvent, EmailReleased, ReleaseEmail,
};
use schemas::personal::{SealedText, is_claim_id};
use schemas::users::{
    ChangeUserEmail, EmailClaimLapsed, LapseEmailClaim, RegisterUser, UserCommand, UserDeactivated,
    UserEmailChanged, UserEvent, UserForgotten, UserRegistered,
};
use serde::{Deserialize, Serialize};

/// What the user is. Name and email are sealed (see [`schemas::personal`]); the writer
/// never sees them in the clear and compares addresses by their claim id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UserStatus {
    #[default]
    Unregistered,
    Active {
        name: String,
        email: String,
        /// The id of the address's claim; absent on users from before blind indexes,
        /// whose claim id is the address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim_id: Option<String>,
    },
    Deactivated {
        name: String,
        email: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim_id: Option<String>,
    },
    /// Forgotten: the key of the user's sealed fields is destroyed; nothing else happens.
    /// The claim id stays, so that a forget interrupted before the address was released
    /// can release it when repeated.
    Forgotten {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim_id: Option<String>,
    },
}

impl UserStatus {
    /// The id of the claim on the user's address, while the user has one.
    pub fn claim_id(&self) -> Option<&str> {
        match self {
            Self::Active {
                email, claim_id, ..
            }
            | Self::Deactivated {
                email, claim_id, ..
            } => Some(claim_id.as_deref().unwrap_or(email)),
            Self::Forgotten { claim_id } => claim_id.as_deref(),
            Self::Unregistered => None,
        }
    }
}

/// A user as its writer decides on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    #[serde(flatten)]
    pub status: UserStatus,
    /// Per claim id, the newest claim version declared lapsed for this user: no command
    /// relying on that claim or an older one is accepted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lapsed_claims: BTreeMap<String, u64>,
}

impl UserState {
    /// Whether the user is active with the address whose claim id is `claim_id`.
    pub fn holds(&self, claim_id: &str) -> bool {
        matches!(self.status, UserStatus::Active { .. }) && self.status.claim_id() == Some(claim_id)
    }

    fn lapsed(&self, claim_id: Option<&str>, claim: Option<u64>) -> bool {
        let newest = claim_id.and_then(|id| self.lapsed_claims.get(id));
        match (newest, claim) {
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
    /// The user was forgotten: nothing about them changes any more.
    UserForgotten,
    /// A name or address that is not sealed for this user, or no claim id with it.
    NotSealed {
        field: String,
    },
    /// The email claim this command relied on lapsed: another request may hold it now.
    ClaimLapsed,
    /// The user holds the address: its claim stands.
    ClaimHeld,
}

#[derive(Debug)]
pub struct User;

/// A new user, with sealed personal fields and the claim of their address.
fn register(c: &RegisterUser) -> Result<Vec<UserEvent>, UserRejection> {
    sealed_for(c.user_id, "name", &c.name)?;
    sealed_for(c.user_id, "email", &c.email)?;
    let claim_id = claim_id_of(c.claim_id.as_deref())?;
    Ok(vec![
        UserRegistered {
            user_id: c.user_id,
            name: c.name.clone(),
            email: c.email.clone(),
            claim_id: Some(claim_id.to_owned()),
        }
        .into(),
    ])
}

/// An active user's new address, under a claim other than the one they hold.
fn change_email(
    status: &UserStatus,
    previous_email: &str,
    c: &ChangeUserEmail,
) -> Result<Vec<UserEvent>, UserRejection> {
    sealed_for(c.user_id, "email", &c.email)?;
    let claim_id = claim_id_of(c.claim_id.as_deref())?;
    if status.claim_id() == Some(claim_id) {
        return Err(UserRejection::SameEmail);
    }
    Ok(vec![
        UserEmailChanged {
            user_id: c.user_id,
            previous_email: previous_email.to_owned(),
            email: c.email.clone(),
            claim_id: Some(claim_id.to_owned()),
        }
        .into(),
    ])
}

impl Aggregate for User {
    type Command = UserCommand;
    type Event = UserEvent;
    type State = UserState;
    type Rejection = UserRejection;

    fn decide(state: &UserState, command: &UserCommand) -> Result<Vec<UserEvent>, UserRejection> {
        match (&state.status, command) {
            (_, UserCommand::LapseEmailClaim(c)) => lapse(state, c),
            (_, UserCommand::RegisterUser(c)) if state.lapsed(c.claim_id.as_deref(), c.claim) => {
                Err(UserRejection::ClaimLapsed)
            }
            (_, UserCommand::ChangeUserEmail(c))
                if state.lapsed(c.claim_id.as_deref(), c.claim) =>
            {
                Err(UserRejection::ClaimLapsed)
            }
            (UserStatus::Unregistered, UserCommand::RegisterUser(c)) => register(c),
            (_, UserCommand::RegisterUser(_)) => Err(UserRejection::AlreadyRegistered),
            (UserStatus::Unregistered, _) => Err(UserRejection::UnknownUser),
            (UserStatus::Forgotten { .. }, UserCommand::ForgetUser(_)) => Ok(vec![]),
            (_, UserCommand::ForgetUser(c)) => {
                Ok(vec![UserForgotten { user_id: c.user_id }.into()])
            }
            (UserStatus::Forgotten { .. }, _) => Err(UserRejection::UserForgotten),
            (UserStatus::Deactivated { .. }, _) => Err(UserRejection::UserDeactivated),
            (UserStatus::Active { email, .. }, UserCommand::ChangeUserEmail(c)) => {
                change_email(&state.status, email, c)
            }
            (UserStatus::Active { .. }, UserCommand::DeactivateUser(c)) => {
                if let Some(reason) = &c.reason {
                    sealed_for(c.user_id, "reason", reason)?;
                }
                Ok(vec![
                    UserDeactivated {
                        user_id: c.user_id,
                        reason: c.reason.clone(),
                    }
                    .into(),
                ])
            }
        }
    }

    fn evolve(state: UserState, event: &UserEvent) -> UserState {
        let UserState {
            status,
            mut lapsed_claims,
        } = state;
        let status = match (status, event) {
            (status, UserEvent::EmailClaimLapsed(e)) => {
                let newest = lapsed_claims.entry(e.email.clone()).or_default();
                *newest = (*newest).max(e.claim);
                status
            }
            (status, UserEvent::UserForgotten(_)) => UserStatus::Forgotten {
                claim_id: status.claim_id().map(str::to_owned),
            },
            (status @ UserStatus::Forgotten { .. }, _) => status,
            (_, UserEvent::UserRegistered(e)) => UserStatus::Active {
                name: e.name.clone(),
                email: e.email.clone(),
                claim_id: e.claim_id.clone(),
            },
            (UserStatus::Active { name, .. }, UserEvent::UserEmailChanged(e)) => {
                UserStatus::Active {
                    name,
                    email: e.email.clone(),
                    claim_id: e.claim_id.clone(),
                }
            }
            (
                UserStatus::Active {
                    name,
                    email,
                    claim_id,
                },
                UserEvent::UserDeactivated(_),
            ) => UserStatus::Deactivated {
                name,
                email,
                claim_id,
            },
            (status, _) => status,
        };
        UserState {
            status,
            lapsed_claims,
        }
    }
}

/// Refuses a personal field that is not sealed for `user`: the log must not hold it in
/// the clear, or forgetting the user could not erase it.
fn sealed_for(user: UserId, field: &str, text: &str) -> Result<(), UserRejection> {
    if SealedText::is_sealed_for(text, user.as_uuid()) {
        Ok(())
    } else {
        Err(UserRejection::NotSealed {
            field: field.to_owned(),
        })
    }
}

fn claim_id_of(claim_id: Option<&str>) -> Result<&str, UserRejection> {
    claim_id
        .filter(|id| is_claim_id(id))
        .ok_or_else(|| UserRejection::NotSealed {
            field: "claim_id".to_owned(),
        })
}

/// A claim lapses unless the user holds its address; lapsing it again changes nothing.
fn lapse(state: &UserState, c: &LapseEmailClaim) -> Result<Vec<UserEvent>, UserRejection> {
    if state.holds(&c.email) {
        return Err(UserRejection::ClaimHeld);
    }
    if state.lapsed(Some(&c.email), Some(c.claim)) {
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

/// One aggregate per address (its claim id): concurrent claims meet at its single writer.
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
        if let EmailCommand::ClaimEmail(c) = command
            && !is_claim_id(&c.email)
        {
            return Err(EmailRejection::InvalidEmail {
                reason: "not a claim id (the address's blind index)".into(),
            });
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

/// A claim command for the address of `claim_id` on behalf of `user`, by a request that
/// started `at`.
pub fn claim(claim_id: &str, user: UserId, at: DateTime<Utc>) -> EmailCommand {
    ClaimEmail {
        email: claim_id.to_owned(),
        user_id: user,
        at: Some(at),
    }
    .into()
}

/// A release command for the address of `claim_id` held by `user`.
pub fn release(claim_id: &str, user: UserId) -> EmailCommand {
    ReleaseEmail {
        email: claim_id.to_owned(),
        user_id: user,
    }
    .into()
}
