//! `POST /v1/users`, `POST /v1/users/{id}/email`, `POST /v1/users/{id}/deactivate`,
//! `POST /v1/users/{id}/forget`.
//!
//! Names, addresses and deactivation reasons are sealed with the user's key here, before
//! any command carries them (see `service_runtime::personal_data`); the writers decide on
//! sealed fields and compare addresses by their claim id, the address's blind index.
//! Forgetting a user destroys the key.
//!
//! An email belongs to at most one active user. The rule lives in the log: each normalized
//! address is an aggregate of its own (`user-emails`), so concurrent registrations with one
//! address meet at its single writer and exactly one claims it. A handler claims first and
//! changes the user second; when the second step is refused, it gives the claim back. A
//! claim stranded by a request that died in between is taken over by the next claimant
//! once it is older than three command timeouts (see [`crate::domain::users`]).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use schemas::UserId;
use schemas::users::{ChangeUserEmail, DeactivateUser, ForgetUser, LapseEmailClaim, RegisterUser};
use service_runtime::api_keys::Operator;
use service_runtime::personal_data::SubjectKey;
use utoipa::ToSchema;
use uuid::Uuid;

use super::body::JsonBody;
use super::context::RequestContext;
use super::error::ApiError;
use super::fields::Fields;
use super::idempotency::expected_version;
use super::{AppState, Issuer, accepted};
use crate::domain::users::{EmailRejection, EmailState, UserRejection, UserStatus, claim, release};
use crate::domain::values::{EmailAddress, PersonName};
use event_store::outcome::Outcome;
use service_runtime::api_keys::Principal;

/// Internal retries when the user changed between reading it and changing it, for
/// requests without `If-Match` (with one, the caller decides: 409).
const ATTEMPTS: usize = 3;

#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documentation of the body: the handler reads it field by field.
pub struct RegisterUserBody {
    /// 1 to 100 characters after trimming, no control characters.
    #[schema(example = "Ada Lovelace")]
    name: String,
    /// Normalized to lower case; unique among active users.
    #[schema(example = "ada@example.com")]
    email: String,
    /// The new user's id; generated when absent (derived from `Idempotency-Key` when given).
    id: Option<Uuid>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documentation of the body: the handler reads it field by field.
pub struct ChangeEmailBody {
    #[schema(example = "ada@example.org")]
    email: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documentation of the body: the handler reads it field by field.
pub struct DeactivateBody {
    /// Why, up to 500 characters.
    reason: Option<String>,
}

fn parse_email(fields: &mut Fields<'_>, raw: Option<&str>) -> Option<EmailAddress> {
    let parsed = EmailAddress::parse(raw?);
    parsed.map_err(|e| fields.fail("email", e.to_string())).ok()
}

/// What `POST /v1/users` asks for: the name, the address and maybe the id; or a 422
/// listing every invalid field.
pub fn read_register(
    value: &serde_json::Value,
) -> Result<(PersonName, EmailAddress, Option<Uuid>), ApiError> {
    let mut fields = Fields::of(value);
    let name = fields.string("name");
    let email = fields.string("email");
    let id = fields.optional_uuid("id");
    let name = name.and_then(|n| {
        PersonName::parse(n)
            .map_err(|e| fields.fail("name", e.to_string()))
            .ok()
    });
    let email = parse_email(&mut fields, email);
    let (name, email) = fields.finish(name.zip(email))?;
    Ok((name, email, id))
}

/// The new address `POST /v1/users/{id}/email` asks for; or a 422.
pub fn read_change_email(value: &serde_json::Value) -> Result<EmailAddress, ApiError> {
    let mut fields = Fields::of(value);
    let email = fields.string("email");
    let email = parse_email(&mut fields, email);
    fields.finish(email)
}

/// The reason `POST /v1/users/{id}/deactivate` may give; or a 422.
pub fn read_deactivate(value: &serde_json::Value) -> Result<Option<String>, ApiError> {
    let mut fields = Fields::of(value);
    let reason = fields.optional_string("reason", 500).map(str::to_owned);
    fields.finish(Some(reason))
}

fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound {
        what: "user",
        id: raw.to_owned(),
    })
}

/// Register a user.
#[utoipa::path(
    post, path = "/v1/users", tag = "users",
    request_body = RegisterUserBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body get the same answer", pattern = "^[!-~]{1,255}$")),
    responses(
        (status = 201, description = "registered", body = super::Accepted, headers(("Location" = String))),
        (status = 400, description = "malformed JSON"), (status = 401, description = "no valid API key"),
        (status = 413, description = "body over 64 KiB"), (status = 415, description = "not JSON"),
        (status = 409, description = "a request with this Idempotency-Key is still running; retry"),
        (status = 422, description = "invalid fields, email taken, or key reused"), (status = 429, description = "rate limited"),
        (status = 503, description = "unavailable; retry"),
    ),
    security(("bearer" = []))
)]
pub async fn register(
    State(state): State<AppState>,
    Extension(context): Extension<RequestContext>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let (name, email, id) = read_register(&body.value)?;
    let issuer = state.issuer(context, &principal, &headers)?;
    let user_id = id
        .map(UserId::from)
        .unwrap_or_else(|| issuer.ids().new_user());

    let models = &state.models;
    // A forgotten user's id stays taken: no key is made for it again.
    let Some(key) = sealing_key(&state, user_id).await? else {
        return Err(ApiError::rejected(&UserRejection::AlreadyRegistered));
    };
    let claim_id = state.email_index.claim_id(email.as_str());
    let claim = claim_address(&state, &issuer, &claim_id, user_id, "claim-email").await?;
    let subject = user_id.as_uuid();
    let register = RegisterUser {
        user_id,
        name: key.seal(subject, name.as_str()),
        email: key.seal(subject, email.as_str()),
        claim_id: Some(claim_id.clone()),
        claim: Some(claim),
    };
    let outcome = issuer
        .run(
            &models.users,
            issuer.command("register", register.into(), None),
        )
        .await?;
    let outcome = lapsed_as_taken(outcome)?;
    if let Outcome::Rejected {
        reason: UserRejection::AlreadyRegistered,
        ..
    } = &outcome
    {
        // The id is taken: give the address back, unless it is that user's own.
        give_back(&state, &issuer, &claim_id, user_id, claim, "release-claim").await?;
    }
    Ok(accepted(outcome, "user")?.created("/v1/users"))
}

/// Change a user's email address.
#[utoipa::path(
    post, path = "/v1/users/{id}/email", tag = "users",
    request_body = ChangeEmailBody,
    params(
        ("id" = Uuid, Path, description = "the user"),
        ("If-Match" = Option<String>, Header, description = "the version to expect, such as \"1\"", pattern = r#"^(W/)?"?[0-9]{1,19}"?$"#),
        ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body get the same answer", pattern = "^[!-~]{1,255}$"),
    ),
    responses(
        (status = 200, description = "changed", body = super::Accepted),
        (status = 404, description = "no such user"), (status = 409, description = "If-Match does not match, or a request with this Idempotency-Key is still running"),
        (status = 422, description = "invalid email, taken, same as now, or user deactivated"),
        (status = 503, description = "unavailable; retry"),
    ),
    security(("bearer" = []))
)]
pub async fn change_email(
    State(state): State<AppState>,
    Extension(context): Extension<RequestContext>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let user_id = parse_user_id(&id)?;
    let if_match = expected_version(&headers)?;
    let email = read_change_email(&body.value)?;
    let issuer = state.issuer(context, &principal, &headers)?;
    let change = EmailChange {
        claim_id: state.email_index.claim_id(email.as_str()),
        user_id,
        id,
        if_match,
        email,
    };
    let mut key = None;
    for attempt in 0..ATTEMPTS {
        if let Some(answer) = change.attempt(&state, &issuer, &mut key, attempt).await? {
            return Ok(answer);
        }
    }
    Err(ApiError::Unavailable("the user kept changing".into()))
}

/// A request to change a user's email, as read.
struct EmailChange {
    user_id: UserId,
    /// The user id as the path gave it.
    id: String,
    if_match: Option<u64>,
    email: EmailAddress,
    /// The blind index of the new address.
    claim_id: String,
}

impl EmailChange {
    /// One try: claim the new address, change the user, then release the previous address
    /// (or give the new one back when refused). The answer, or `None` to try again (the
    /// user changed meanwhile, and the caller did not pin a version).
    ///
    /// On a keyed retry every step has the id it had the first time, so the writers answer
    /// with their first outcomes whatever the user looks like now. Only the release of the
    /// previous address is skipped when the user already has the new one (it would free
    /// the address the user holds); a claim left behind that way lapses later.
    async fn attempt(
        &self,
        state: &AppState,
        issuer: &Issuer,
        key: &mut Option<SubjectKey>,
        attempt: usize,
    ) -> Result<Option<Response>, ApiError> {
        let (user_id, models) = (self.user_id, &state.models);
        let (version, user) = issuer.state_of(&models.users, &user_id.to_string()).await?;
        let previous = held_claim(&user.status, &self.id)?;
        let key: &SubjectKey = match key {
            Some(key) => key,
            None => key.insert(existing_key(state, user_id).await?),
        };
        // Read before the change: a request of this user that claims the previous address
        // again meanwhile moves its claim on, and this release then changes nothing.
        let (previous_claim, held) = issuer.state_of(&models.emails, &previous).await?;
        let release_previous = previous != self.claim_id
            && matches!(held, EmailState::Claimed { user_id: holder, .. } if holder == user_id);
        let sealed = key.seal(user_id.as_uuid(), self.email.as_str());
        let expected = self.if_match.or(Some(version));
        let change = (user_id, sealed, self.claim_id.as_str());
        let (claim, outcome) = claim_and_change(state, issuer, change, expected, attempt).await?;
        if outcome.is_accepted() {
            if release_previous {
                let step = format!("release-{attempt}");
                let release = release(&previous, user_id);
                let command = issuer.command(&step, release, Some(previous_claim));
                issuer.run(&models.emails, command).await?;
            }
            return Ok(Some(accepted(outcome, "user")?.ok()));
        }
        // Refused or stale: the new address goes back (not the one the user still has).
        if previous != self.claim_id {
            let step = format!("unclaim-{attempt}");
            give_back(state, issuer, &self.claim_id, user_id, claim, &step).await?;
        }
        if self.if_match.is_some()
            || !matches!(outcome, Outcome::Conflict { .. })
            || attempt + 1 == ATTEMPTS
        {
            return accepted(outcome, "user").map(|a| Some(a.ok()));
        }
        Ok(None)
    }
}

/// Deactivate a user; their email becomes free.
#[utoipa::path(
    post, path = "/v1/users/{id}/deactivate", tag = "users",
    request_body = DeactivateBody,
    params(
        ("id" = Uuid, Path, description = "the user"),
        ("If-Match" = Option<String>, Header, description = "the version to expect", pattern = r#"^(W/)?"?[0-9]{1,19}"?$"#),
        ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body get the same answer", pattern = "^[!-~]{1,255}$"),
    ),
    responses(
        (status = 200, description = "deactivated", body = super::Accepted),
        (status = 404, description = "no such user"), (status = 409, description = "If-Match does not match, or a request with this Idempotency-Key is still running"),
        (status = 422, description = "already deactivated"), (status = 503, description = "unavailable; retry"),
    ),
    security(("bearer" = []))
)]
pub async fn deactivate(
    State(state): State<AppState>,
    Extension(context): Extension<RequestContext>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let user_id = parse_user_id(&id)?;
    let if_match = expected_version(&headers)?;
    let reason = read_deactivate(&body.value)?;
    let issuer = state.issuer(context, &principal, &headers)?;
    let models = &state.models;

    for attempt in 0..ATTEMPTS {
        let (version, user) = issuer.state_of(&models.users, &user_id.to_string()).await?;
        // As in `change_email`: the aggregate decides, so a keyed retry answers the same.
        if user.status == UserStatus::Unregistered {
            return Err(ApiError::NotFound { what: "user", id });
        }
        let claim_id = user.status.claim_id().map(str::to_owned);
        // The reason is free text, which may well name the person: sealed too.
        let reason = match (&reason, sealing_key(&state, user_id).await?) {
            (Some(reason), Some(key)) => Some(key.seal(user_id.as_uuid(), reason)),
            (Some(_), None) => return Err(ApiError::rejected(&UserRejection::UserForgotten)),
            (None, _) => None,
        };
        let command = DeactivateUser { user_id, reason };
        let step = format!("deactivate-{attempt}");
        let outcome = issuer
            .run(
                &models.users,
                issuer.command(&step, command.into(), if_match.or(Some(version))),
            )
            .await?;
        if let (true, Some(claim_id)) = (outcome.is_accepted(), claim_id) {
            let step = format!("release-{attempt}");
            issuer
                .run(
                    &models.emails,
                    issuer.command(&step, release(&claim_id, user_id), None),
                )
                .await?;
        }
        if if_match.is_some()
            || !matches!(outcome, Outcome::Conflict { .. })
            || attempt + 1 == ATTEMPTS
        {
            return accepted(outcome, "user").map(super::Accepted::ok);
        }
    }
    Err(ApiError::Unavailable("the user kept changing".into()))
}

/// Forget a user (crypto-shredding): their key is destroyed, so that their name, address
/// and deactivation reason no longer open anywhere (the log, read models, backups of
/// them); the log itself is not rewritten. The user accepts no change or order any more,
/// and their address is free. Repeating it changes nothing.
#[utoipa::path(
    post, path = "/v1/users/{id}/forget", tag = "users",
    description = "For operators (an operator key; a client key gets 403). Destroys the user's key: their name, email and deactivation reason read as `[forgotten]` everywhere from then on, a `UserForgotten` event records it, and the address is free again. No body. Repeating it answers the same; after a 503 the key is already gone: repeat it to finish the rest.",
    params(
        ("id" = Uuid, Path, description = "the user"),
        ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key get the same answer", pattern = "^[!-~]{1,255}$"),
    ),
    responses(
        (status = 200, description = "forgotten", body = super::Accepted),
        (status = 401, description = "no valid API key"),
        (status = 403, description = "a client key: this needs an operator key"),
        (status = 404, description = "no such user"),
        (status = 409, description = "a request with this Idempotency-Key is still running; retry"),
        (status = 413, description = "a body over 64 KiB"),
        (status = 422, description = "the Idempotency-Key is invalid or was used for another request"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "unavailable; retry"),
    ),
    security(("bearer" = []))
)]
pub async fn forget(
    State(state): State<AppState>,
    Extension(context): Extension<RequestContext>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user_id = parse_user_id(&id)?;
    let issuer = state.issuer(context, &caller, &headers)?;
    let models = &state.models;
    let (_, user) = issuer.state_of(&models.users, &user_id.to_string()).await?;
    if user.status == UserStatus::Unregistered {
        return Err(ApiError::NotFound { what: "user", id });
    }
    // The key goes first: once an operator asked, no failure leaves the data readable. The
    // steps after it are safe to repeat (a repeat of this request finishes what a crash
    // or a 503 left undone), and the users' projector destroys the key again whenever it
    // reads `UserForgotten`, so a restored backup does not bring it back for long.
    state
        .keys
        .forget(user_id.as_uuid())
        .await
        .map_err(key_store_down)?;
    tracing::info!(target: "audit", role = caller.role.as_str(), principal = %caller.fingerprint, %user_id, "user forgotten: their key is destroyed");
    let forget = issuer.command("forget", ForgetUser { user_id }.into(), None);
    let outcome = issuer.run(&models.users, forget).await?;
    if !outcome.is_accepted() {
        return accepted(outcome, "user").map(super::Accepted::ok);
    }
    // The address the user had when forgotten (an email change may have landed since the
    // read above) goes back if this user still holds it: a release for anyone but its
    // holder changes nothing.
    let (_, forgotten) = issuer.state_of(&models.users, &user_id.to_string()).await?;
    if let Some(claim_id) = forgotten.status.claim_id() {
        let release = release(claim_id, user_id);
        issuer
            .run(&models.emails, issuer.command("release", release, None))
            .await?;
    }
    accepted(outcome, "user").map(super::Accepted::ok)
}

/// The key to seal `user`'s fields with (made on first use); `None` once forgotten.
/// Claims the new address for the user, then changes the user's email to it (expecting
/// version `expected`): the claim's version and the change's outcome.
async fn claim_and_change(
    state: &AppState,
    issuer: &Issuer,
    (user_id, sealed, claim_id): (UserId, String, &str),
    expected: Option<u64>,
    attempt: usize,
) -> Result<(u64, Outcome<UserRejection>), ApiError> {
    let step = format!("claim-{attempt}");
    let claim = claim_address(state, issuer, claim_id, user_id, &step).await?;
    let change = ChangeUserEmail {
        user_id,
        email: sealed,
        claim_id: Some(claim_id.to_owned()),
        claim: Some(claim),
    };
    let step = format!("change-{attempt}");
    let command = issuer.command(&step, change.into(), expected);
    let outcome = issuer.run(&state.models.users, command).await?;
    Ok((claim, lapsed_as_taken(outcome)?))
}

/// The claim id of the address the user holds: 404 for no such user, a refusal for one
/// that was forgotten.
fn held_claim(status: &UserStatus, id: &str) -> Result<String, ApiError> {
    match (status, status.claim_id()) {
        (UserStatus::Unregistered, _) => Err(ApiError::NotFound {
            what: "user",
            id: id.to_owned(),
        }),
        (UserStatus::Forgotten { .. }, _) | (_, None) => {
            Err(ApiError::rejected(&UserRejection::UserForgotten))
        }
        (_, Some(previous)) => Ok(previous.to_owned()),
    }
}

/// The user's key for sealing personal fields; a user without one was forgotten.
async fn existing_key(state: &AppState, user: UserId) -> Result<SubjectKey, ApiError> {
    sealing_key(state, user)
        .await?
        .ok_or_else(|| ApiError::rejected(&UserRejection::UserForgotten))
}

async fn sealing_key(state: &AppState, user: UserId) -> Result<Option<SubjectKey>, ApiError> {
    state
        .keys
        .for_writing(user.as_uuid())
        .await
        .map_err(key_store_down)
}

fn key_store_down(e: sqlx::Error) -> ApiError {
    ApiError::Unavailable(format!("the users' keys cannot be read: {e}"))
}

/// Claims the address of `claim_id` for `user` and answers the claim's version, which the
/// user's change then carries. A claim the user already holds moves on to a new version.
/// When another user's claim holds the address but is stranded, it is lapsed and released
/// first (see [`release_stranded`]).
async fn claim_address(
    state: &AppState,
    issuer: &Issuer,
    claim_id: &str,
    user: UserId,
    step: &str,
) -> Result<u64, ApiError> {
    let emails = &state.models.emails;
    let claim = |step: &str| {
        let command = claim(claim_id, user, chrono::Utc::now());
        issuer.run(emails, issuer.command(step, command, None))
    };
    let first = claim(step).await?;
    let taken = matches!(
        first,
        Outcome::Rejected {
            reason: EmailRejection::EmailTaken,
            ..
        }
    );
    if !taken {
        return claim_version(first);
    }
    let (version, held) = issuer.state_of(emails, claim_id).await?;
    let holder = match held {
        // Taken by this user since (an earlier attempt of a keyed request): that claim.
        EmailState::Claimed { user_id, .. } if user_id == user => return Ok(version),
        EmailState::Claimed { user_id, since } => Some((user_id, since)),
        EmailState::Free => None,
    };
    if let Some((holder, since)) = holder {
        let stranded = Stranded {
            holder,
            since,
            claim: version,
        };
        if !release_stranded(state, issuer, claim_id, &stranded, step).await? {
            return claim_version(first);
        }
    }
    let holder = holder.map_or_else(|| "free".to_owned(), |(h, _)| h.to_string());
    claim(&format!("{step}-after-{holder}"))
        .await
        .and_then(claim_version)
}

fn claim_version(outcome: Outcome<EmailRejection>) -> Result<u64, ApiError> {
    match outcome {
        Outcome::Accepted { version, .. } => Ok(version),
        Outcome::Rejected { reason, .. } => Err(ApiError::rejected(&reason)),
        Outcome::Conflict { .. } => Err(ApiError::Unavailable(
            "the address's claim changed while it was taken; retry".into(),
        )),
    }
}

/// Another user's claim on an address, as read.
struct Stranded {
    holder: UserId,
    /// When it was claimed (absent on claims made before claims had a time: those never
    /// lapse, since a registration of that time carries no claim version to refuse).
    since: Option<chrono::DateTime<chrono::Utc>>,
    claim: u64,
}

/// Whether the claim `claim_id` was stranded and is now released: it is older than
/// three command timeouts and its holder does not hold the address, which the holder's
/// writer confirms by declaring it lapsed (see [`give_back`]).
async fn release_stranded(
    state: &AppState,
    issuer: &Issuer,
    claim_id: &str,
    stranded: &Stranded,
    step: &str,
) -> Result<bool, ApiError> {
    let grace = chrono::Duration::from_std(state.command_timeout * 3).unwrap_or_default();
    let Some(since) = stranded.since else {
        return Ok(false);
    };
    if chrono::Utc::now() - since < grace {
        return Ok(false);
    }
    let holder = stranded.holder;
    let (_, user) = issuer
        .state_of(&state.models.users, &holder.to_string())
        .await?;
    if user.holds(claim_id) {
        return Ok(false);
    }
    let step = format!("{step}-lapse-{holder}");
    let released = give_back(state, issuer, claim_id, holder, stranded.claim, &step).await?;
    if released {
        tracing::info!(user_id = %holder, claim = stranded.claim, "a stranded email claim lapsed and was released");
    }
    Ok(released)
}

/// Gives `user`'s claim `claim_id` (at version `claim`) back unless the user holds the
/// address: the user's writer first declares the claim lapsed (refused while the user
/// holds it; from then on no command relying on it is accepted), then the claim is
/// released under that version (so a newer claim is never touched). Whether it was.
async fn give_back(
    state: &AppState,
    issuer: &Issuer,
    claim_id: &str,
    user: UserId,
    claim: u64,
    step: &str,
) -> Result<bool, ApiError> {
    let models = &state.models;
    let lapse = LapseEmailClaim {
        user_id: user,
        email: claim_id.to_owned(),
        claim,
    };
    let lapsed = issuer
        .run(&models.users, issuer.command(step, lapse.into(), None))
        .await?;
    if !lapsed.is_accepted() {
        return Ok(false);
    }
    let step = format!("{step}-release");
    let released = issuer
        .run(
            &models.emails,
            issuer.command(&step, release(claim_id, user), Some(claim)),
        )
        .await?;
    Ok(released.is_accepted())
}

/// A change refused because its claim lapsed lost the address to another request.
fn lapsed_as_taken(outcome: Outcome<UserRejection>) -> Result<Outcome<UserRejection>, ApiError> {
    match outcome {
        Outcome::Rejected {
            reason: UserRejection::ClaimLapsed,
            ..
        } => Err(ApiError::rejected(&EmailRejection::EmailTaken)),
        other => Ok(other),
    }
}
