//! `POST /v1/orders` and `POST /v1/orders/{id}/cancel`.
//!
//! An order is placed for an existing, active user: the handler reads the user from the
//! users' writer (as fresh as the log: the state that writer decides on) just before placing
//! it. A user deactivated after that read still gets the order; the saga refuses to confirm
//! it (see docs/commands.md, "How fresh the view of users is").

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use schemas::orders::{CancelOrder, CancelledBy, OrderLine, PlaceOrder};
use schemas::{Currency, OrderId, UserId};
use utoipa::ToSchema;
use uuid::Uuid;

use super::body::JsonBody;
use super::context::RequestContext;
use super::error::ApiError;
use super::fields::Fields;
use super::idempotency::expected_version;
use super::{AppState, Issuer, accepted};
use crate::domain::orders::{MAX_LINES, MAX_QUANTITY, MAX_TOTAL_CENTS, total_of};
use crate::domain::users::{UserRejection, UserStatus};
use service_runtime::api_keys::Principal;

#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documentation of the body: the handler reads it field by field.
pub struct PlaceOrderBody {
    user_id: Uuid,
    /// ISO 4217 code of a circulating currency.
    #[schema(example = "EUR")]
    currency: String,
    /// 1 to 100 lines; the total at most 10,000,000 minor units.
    lines: Vec<OrderLineBody>,
    /// The new order's id; generated when absent (derived from `Idempotency-Key` when given).
    id: Option<Uuid>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documentation of the body: the handler reads it field by field.
pub struct OrderLineBody {
    /// 1 to 64 characters.
    #[schema(example = "SKU-1")]
    sku: String,
    /// 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    quantity: u32,
    /// Minor units of the order's currency, 0 or more.
    unit_price_cents: u64,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documentation of the body: the handler reads it field by field.
pub struct CancelOrderBody {
    /// Why, 1 to 500 characters.
    reason: String,
}

fn parse_line(line: &mut Fields<'_>) -> Option<OrderLine> {
    let sku = line.string("sku");
    let sku = match sku {
        Some(s) if (1..=64).contains(&s.chars().count()) && !s.chars().any(char::is_control) => {
            Some(s)
        }
        Some(_) => {
            line.fail(
                "sku",
                "must be 1 to 64 characters without control characters",
            );
            None
        }
        None => None,
    };
    let quantity = line.integer("quantity", 1..=u64::from(MAX_QUANTITY));
    let price = line.integer("unit_price_cents", 0..=MAX_TOTAL_CENTS);
    Some(OrderLine {
        sku: sku?.to_owned(),
        quantity: u32::try_from(quantity?).ok()?,
        unit_price_cents: price?,
    })
}

/// Place an order.
#[utoipa::path(
    post, path = "/v1/orders", tag = "orders",
    request_body = PlaceOrderBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body get the same answer", pattern = "^[!-~]{1,255}$")),
    responses(
        (status = 201, description = "placed (pending)", body = super::Accepted, headers(("Location" = String))),
        (status = 400, description = "malformed JSON"), (status = 401, description = "no valid API key"),
        (status = 413, description = "body over 64 KiB"), (status = 415, description = "not JSON"),
        (status = 409, description = "a request with this Idempotency-Key is still running; retry"),
        (status = 422, description = "invalid fields, unknown or deactivated user"), (status = 429, description = "rate limited"),
        (status = 503, description = "unavailable; retry"),
    ),
    security(("bearer" = []))
)]
pub async fn place(
    State(state): State<AppState>,
    Extension(context): Extension<RequestContext>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let (user_id, currency, lines, id) = read_place(&body.value)?;
    let issuer = state.issuer(context, &principal, &headers)?;
    let order_id = id
        .map(OrderId::from)
        .unwrap_or_else(|| issuer.ids().new_order());
    place_for(&state, &issuer, order_id, user_id, currency, lines).await
}

/// What `POST /v1/orders` asks for: the user, the currency, the lines and maybe the id; or
/// a 422 listing every invalid field.
pub fn read_place(
    value: &serde_json::Value,
) -> Result<(UserId, Currency, Vec<OrderLine>, Option<Uuid>), ApiError> {
    let mut fields = Fields::of(value);
    let user_id = fields.string("user_id");
    let user_id = user_id.and_then(|u| {
        u.parse::<UserId>()
            .map_err(|_| fields.fail("user_id", "must be a UUID"))
            .ok()
    });
    let currency = fields.string("currency");
    let currency = currency.and_then(|c| {
        c.parse::<Currency>()
            .map_err(|_| fields.fail("currency", "must be an ISO 4217 currency code, such as EUR"))
            .ok()
    });
    let lines = fields.array_of("lines", 1, MAX_LINES, parse_line);
    let id = fields.optional_uuid("id");
    if let Some(lines) = &lines
        && total_of(lines).is_none()
    {
        fields.fail(
            "lines",
            format!("the total must be at most {MAX_TOTAL_CENTS} minor units"),
        );
    }
    let ((user_id, currency), lines) = fields.finish(user_id.zip(currency).zip(lines))?;
    Ok((user_id, currency, lines, id))
}

async fn place_for(
    state: &AppState,
    issuer: &Issuer,
    order_id: OrderId,
    user_id: UserId,
    currency: Currency,
    lines: Vec<OrderLine>,
) -> Result<Response, ApiError> {
    let models = &state.models;
    let (_, user) = issuer.state_of(&models.users, &user_id.to_string()).await?;
    let refusal = match user.status {
        UserStatus::Active { .. } => None,
        UserStatus::Unregistered => Some(UserRejection::UnknownUser),
        UserStatus::Deactivated { .. } => Some(UserRejection::UserDeactivated),
        UserStatus::Forgotten { .. } => Some(UserRejection::UserForgotten),
    };
    if let Some(refusal) = refusal {
        // A keyed retry of a request whose order was placed gets that first answer, whatever
        // became of the user since: the writer answers the known command id. (Found by the
        // fault suite: a retry after a lost answer was refused although the order stood.)
        let (version, _) = issuer
            .state_of(&models.orders, &order_id.to_string())
            .await?;
        if version == 0 {
            return Err(ApiError::rejected(&refusal));
        }
    }
    let place = PlaceOrder {
        order_id,
        user_id,
        currency,
        lines,
    };
    let outcome = issuer
        .run(&models.orders, issuer.command("place", place.into(), None))
        .await?;
    Ok(accepted(outcome, "order")?.created("/v1/orders"))
}

/// Cancel an order (while pending or confirmed); the saga refunds a confirmed one.
#[utoipa::path(
    post, path = "/v1/orders/{id}/cancel", tag = "orders",
    request_body = CancelOrderBody,
    params(
        ("id" = Uuid, Path, description = "the order"),
        ("If-Match" = Option<String>, Header, description = "the version to expect", pattern = r#"^(W/)?"?[0-9]{1,19}"?$"#),
        ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body get the same answer", pattern = "^[!-~]{1,255}$"),
    ),
    responses(
        (status = 200, description = "cancelled", body = super::Accepted),
        (status = 404, description = "no such order"), (status = 409, description = "If-Match does not match, or a request with this Idempotency-Key is still running"),
        (status = 422, description = "invalid reason, or the order is rejected or already cancelled"),
        (status = 503, description = "unavailable; retry"),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(context): Extension<RequestContext>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let order_id: OrderId = id.parse().map_err(|_| ApiError::NotFound {
        what: "order",
        id: id.clone(),
    })?;
    let expected = expected_version(&headers)?;
    let reason = read_cancel(&body.value)?;
    let issuer = state.issuer(context, &principal, &headers)?;
    let cancel = CancelOrder {
        order_id,
        reason,
        cancelled_by: CancelledBy::Customer,
    };
    let outcome = issuer
        .run(
            &state.models.orders,
            issuer.command("cancel", cancel.into(), expected),
        )
        .await?;
    Ok(accepted(outcome, "order")?.ok())
}

/// The reason `POST /v1/orders/{id}/cancel` gives, trimmed; or a 422.
pub fn read_cancel(value: &serde_json::Value) -> Result<String, ApiError> {
    let mut fields = Fields::of(value);
    let reason = fields.string("reason");
    let reason = reason.and_then(|r| {
        let r = r.trim();
        if (1..=500).contains(&r.chars().count()) {
            Some(r.to_owned())
        } else {
            fields.fail("reason", "must be 1 to 500 characters");
            None
        }
    });
    fields.finish(reason)
}
