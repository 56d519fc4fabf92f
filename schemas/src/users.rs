//! The users service: registration, email changes, deactivation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Register a new user. The email must not belong to another active user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RegisterUser {
    pub user_id: UserId,
    /// Display name, 1 to 100 characters after trimming.
    pub name: String,
    /// Normalized email address (lower-case domain, trimmed).
    pub email: String,
}

/// Change the email address of an active user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ChangeUserEmail {
    pub user_id: UserId,
    pub email: String,
}

/// Deactivate a user; a deactivated user accepts no further change and places no orders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeactivateUser {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserRegistered {
    pub user_id: UserId,
    pub name: String,
    pub email: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserEmailChanged {
    pub user_id: UserId,
    pub previous_email: String,
    pub email: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserDeactivated {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

crate::message_family!(
    /// Commands handled by the user aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    UserCommand, Command, "user", "users", user_id,
    [RegisterUser = 1, ChangeUserEmail = 1, DeactivateUser = 1]
);

crate::message_family!(
    /// Events of the user aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    UserEvent, Event, "user", "users", user_id,
    [UserRegistered = 1, UserEmailChanged = 1, UserDeactivated = 1]
);
