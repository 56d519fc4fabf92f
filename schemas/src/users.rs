//! The users service: registration, email changes, deactivation, forgetting.
//!
//! Names and addresses are sealed for their user (see [`crate::personal`]): a field
//! documented as sealed holds `pii1:<user id>:...`, never the clear text. Records written
//! before sealing hold the clear text and cannot be forgotten.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Register a new user. The email must not belong to another active user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RegisterUser {
    pub user_id: UserId,
    /// Display name (1 to 100 characters after trimming), sealed.
    pub name: String,
    /// Normalized email address (lower-case domain, trimmed), sealed.
    pub email: String,
    /// The id of the email's claim (its `user-emails` aggregate): the address's blind index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
    /// The version of the email's claim this registration relies on; refused once that
    /// claim lapsed. Absent: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<u64>,
}

/// Change the email address of an active user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ChangeUserEmail {
    pub user_id: UserId,
    /// The new address, sealed.
    pub email: String,
    /// The id of the new address's claim: its blind index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
    /// The version of the new email's claim this change relies on; refused once that
    /// claim lapsed. Absent: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<u64>,
}

/// Deactivate a user; a deactivated user accepts no further change and places no orders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeactivateUser {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Declare that a claim on `email` for this user lapsed: its request never finished (the
/// user does not hold the address). Refused while the user holds it. From then on no
/// registration or change relying on that claim (or an older one) is accepted, so the
/// address can be given back without a late command landing on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LapseEmailClaim {
    pub user_id: UserId,
    /// The claim's id: the address's blind index (the address itself for claims recorded
    /// before blind indexes).
    pub email: String,
    /// The claim's version in its `user-emails` aggregate.
    pub claim: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserRegistered {
    pub user_id: UserId,
    /// Sealed.
    pub name: String,
    /// Sealed.
    pub email: String,
    /// The id of the address's claim (its blind index); absent on events written before
    /// blind indexes, whose claim id is the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserEmailChanged {
    pub user_id: UserId,
    /// Sealed.
    pub previous_email: String,
    /// Sealed.
    pub email: String,
    /// The id of the new address's claim, as in [`UserRegistered`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserDeactivated {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A claim on `email` for this user lapsed (see [`LapseEmailClaim`]). It may come before
/// the user is registered: the registration that claimed the address never landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EmailClaimLapsed {
    pub user_id: UserId,
    /// The claim's id (see [`LapseEmailClaim`]).
    pub email: String,
    pub claim: u64,
}

/// Forget a user: their key is destroyed, and with it every sealed field of theirs, in the
/// log and everywhere it was copied. The user accepts nothing more; their address is freed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ForgetUser {
    pub user_id: UserId,
}

/// The user was forgotten: from here on their sealed fields read as `[forgotten]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserForgotten {
    pub user_id: UserId,
}

crate::message_family!(
    /// Commands handled by the user aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    UserCommand, Command, "user", "users", user_id,
    [RegisterUser = 1, ChangeUserEmail = 1, DeactivateUser = 1, LapseEmailClaim = 1, ForgetUser = 1]
);

crate::message_family!(
    /// Events of the user aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    UserEvent, Event, "user", "users", user_id,
    [UserRegistered = 1, UserEmailChanged = 1, UserDeactivated = 1, EmailClaimLapsed = 1, UserForgotten = 1]
);
