//! Handlers over the read models. Each reads its parameters (all errors at once), waits
//! for `min_position` when given, then answers from Postgres.

use axum::Json;
use axum::extract::{Path, Query, State};
use service_runtime::personal_data::KeyStore;
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use super::QueryState;
use super::history::{self, Upto};
use crate::projector::Schema;
use crate::read_models::notifications::NotificationRow;
use crate::read_models::orders::OrderRow;
use crate::read_models::orders::Orders;
use crate::read_models::payments::PaymentRow;
use crate::read_models::users::UserRow;
use crate::read_models::users::Users;
use service_runtime::query::QueryError;
use service_runtime::query::{Cursor, Page, Params, path_id};

type Pairs = Query<Vec<(String, String)>>;

pub const ORDER_STATUSES: [&str; 4] = ["pending", "confirmed", "rejected", "cancelled"];

/// `GET /v1/users/{id}`
#[utoipa::path(
    get, path = "/v1/users/{id}", tag = "users",
    description = "One user, or their state at a version (`as_of_version=N`) or a time (`as_of=<RFC 3339>`), folded from the log (personal fields opened with the user's key, `[forgotten]` once it is gone).",
    params(("id" = Uuid, Path, description = "the user"), ("as_of_version" = Option<u64>, Query, description = "the state after this many events", minimum = 1), ("as_of" = Option<String>, Query, description = "the state at this RFC 3339 time"), ("min_position" = Option<String>, Query, description = "a position a command returned, such as `orders:3:17`: wait until the read model has passed it", pattern = "^(users|user-emails|orders|payments|notifications):[0-9]{1,9}:[0-9]{1,18}$")),
    responses(
        (status = 200, description = "found", body = UserRow),
        (status = 404, description = "unknown id"),
        (status = 401, description = "no valid API key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
        (status = 504, description = "the read model did not reach `min_position` in time; the lag is in the problem"),
    ),
    security(("bearer" = []))
)]
pub async fn user(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    Query(pairs): Pairs,
) -> Result<Json<UserRow>, QueryError> {
    let mut params = Params::new(pairs, &["as_of_version", "as_of"]);
    let position = params.min_position();
    let upto = as_of_params(&mut params);
    params.finish()?;
    let id = path_id(&id)?;
    let user = match upto {
        Some(upto) => {
            state.wait_for(position.as_ref(), &["event_index"]).await?;
            history::as_of::<Users>(&state, "user", id, upto).await?
        }
        None => {
            state.wait_for(position.as_ref(), &["users"]).await?;
            find_user(&state.pool, state.schema("users"), id)
                .await?
                .ok_or_else(|| QueryError::NotFound(format!("no user {id}")))?
        }
    };
    Ok(Json(opened(&state.pool, user).await?))
}

/// `user` with its sealed fields opened by the user's key (`[forgotten]` once it is gone).
async fn opened(pool: &PgPool, mut user: UserRow) -> Result<UserRow, sqlx::Error> {
    let keys = KeyStore::new(pool.clone())
        .for_reading([user.user_id])
        .await?;
    user.name = keys.open(&user.name).into_owned();
    user.email = keys.open(&user.email).into_owned();
    user.deactivation_reason = user
        .deactivation_reason
        .map(|reason| keys.open(&reason).into_owned());
    Ok(user)
}

async fn find_user(
    pool: &PgPool,
    schema: &Schema,
    id: Uuid,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT * FROM {} WHERE user_id = $1",
        schema.table("users")
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Which orders a list shows.
#[derive(Debug, Default)]
struct OrderFilter {
    user_id: Option<Uuid>,
    status: Option<String>,
    cursor: Option<Cursor>,
    limit: i64,
}

fn order_filter(params: &mut Params, user_id: Option<Uuid>) -> OrderFilter {
    OrderFilter {
        user_id: user_id.or_else(|| params.uuid("user_id")),
        status: params.one_of("status", &ORDER_STATUSES),
        cursor: params.cursor(),
        limit: params.limit(),
    }
}

async fn list_orders(
    pool: &PgPool,
    schema: &Schema,
    filter: OrderFilter,
) -> Result<Page<OrderRow>, sqlx::Error> {
    let mut sql = format!("SELECT * FROM {} WHERE true", schema.table("orders"));
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    if filter.user_id.is_some() {
        sql += &format!(" AND user_id = ${}", next());
    }
    if filter.status.is_some() {
        sql += &format!(" AND status = ${}", next());
    }
    if filter.cursor.is_some() {
        let (t, i) = (next(), next());
        sql += &format!(" AND (placed_at, order_id) < (${t}, ${i})");
    }
    sql += &format!(" ORDER BY placed_at DESC, order_id DESC LIMIT ${}", next());
    let mut query = sqlx::query_as::<_, OrderRow>(AssertSqlSafe(sql));
    if let Some(user) = filter.user_id {
        query = query.bind(user);
    }
    if let Some(status) = filter.status {
        query = query.bind(status);
    }
    if let Some(cursor) = filter.cursor {
        query = query.bind(cursor.time).bind(cursor.id);
    }
    let rows = query.bind(filter.limit + 1).fetch_all(pool).await?;
    Ok(Page::of(rows, filter.limit, |o| Cursor {
        time: o.placed_at,
        id: o.order_id,
    }))
}

/// `GET /v1/orders?user_id=&status=&limit=&cursor=`
#[utoipa::path(
    get, path = "/v1/orders", tag = "orders",
    description = "Orders, newest first, filtered by user and status (keyset pagination).",
    params(("user_id" = Option<Uuid>, Query, description = "only this user's orders"), ("status" = Option<String>, Query, description = "pending, confirmed, rejected or cancelled", pattern = "^(pending|confirmed|rejected|cancelled)$"), ("limit" = Option<u32>, Query, description = "1 to 100 (default 20)", minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"), ("min_position" = Option<String>, Query, description = "a position a command returned, such as `orders:3:17`: wait until the read model has passed it", pattern = "^(users|user-emails|orders|payments|notifications):[0-9]{1,9}:[0-9]{1,18}$")),
    responses(
        (status = 200, description = "found", body = Page<OrderRow>),
        (status = 401, description = "no valid API key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
        (status = 504, description = "the read model did not reach `min_position` in time; the lag is in the problem"),
    ),
    security(("bearer" = []))
)]
pub async fn orders(
    State(state): State<QueryState>,
    Query(pairs): Pairs,
) -> Result<Json<Page<OrderRow>>, QueryError> {
    let mut params = Params::new(pairs, &["user_id", "status", "limit", "cursor"]);
    let position = params.min_position();
    let filter = order_filter(&mut params, None);
    params.finish()?;
    state.wait_for(position.as_ref(), &["orders"]).await?;
    Ok(Json(
        list_orders(&state.pool, state.schema("orders"), filter).await?,
    ))
}

/// `GET /v1/users/{id}/orders?status=&limit=&cursor=`
#[utoipa::path(
    get, path = "/v1/users/{id}/orders", tag = "orders",
    description = "A user's orders, newest first.",
    params(("id" = Uuid, Path, description = "the user"), ("status" = Option<String>, Query, description = "pending, confirmed, rejected or cancelled", pattern = "^(pending|confirmed|rejected|cancelled)$"), ("limit" = Option<u32>, Query, description = "1 to 100 (default 20)", minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"), ("min_position" = Option<String>, Query, description = "a position a command returned, such as `orders:3:17`: wait until the read model has passed it", pattern = "^(users|user-emails|orders|payments|notifications):[0-9]{1,9}:[0-9]{1,18}$")),
    responses(
        (status = 200, description = "found", body = Page<OrderRow>),
        (status = 404, description = "unknown id"),
        (status = 401, description = "no valid API key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
        (status = 504, description = "the read model did not reach `min_position` in time; the lag is in the problem"),
    ),
    security(("bearer" = []))
)]
pub async fn orders_of_user(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    Query(pairs): Pairs,
) -> Result<Json<Page<OrderRow>>, QueryError> {
    let mut params = Params::new(pairs, &["status", "limit", "cursor"]);
    let position = params.min_position();
    let id = path_id(&id);
    let filter = order_filter(&mut params, id.as_ref().ok().copied());
    params.finish()?;
    let id = id?;
    state
        .wait_for(position.as_ref(), &["users", "orders"])
        .await?;
    if find_user(&state.pool, state.schema("users"), id)
        .await?
        .is_none()
    {
        return Err(QueryError::NotFound(format!("no user {id}")));
    }
    Ok(Json(
        list_orders(&state.pool, state.schema("orders"), filter).await?,
    ))
}

/// `GET /v1/orders/{id}`, or its state at a version (`as_of_version=N`) or a time
/// (`as_of=<RFC 3339>`), folded from the log.
#[utoipa::path(
    get, path = "/v1/orders/{id}", tag = "orders",
    description = "One order with its status timeline; or its state at a version or a time, folded from the log.",
    params(("id" = Uuid, Path, description = "the order"), ("as_of_version" = Option<u64>, Query, description = "the state after this many events", minimum = 1), ("as_of" = Option<String>, Query, description = "the state at this RFC 3339 time"), ("min_position" = Option<String>, Query, description = "a position a command returned, such as `orders:3:17`: wait until the read model has passed it", pattern = "^(users|user-emails|orders|payments|notifications):[0-9]{1,9}:[0-9]{1,18}$")),
    responses(
        (status = 200, description = "found", body = OrderRow),
        (status = 404, description = "unknown id"),
        (status = 401, description = "no valid API key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
        (status = 504, description = "the read model did not reach `min_position` in time; the lag is in the problem"),
    ),
    security(("bearer" = []))
)]
pub async fn order(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    Query(pairs): Pairs,
) -> Result<Json<OrderRow>, QueryError> {
    let mut params = Params::new(pairs, &["as_of_version", "as_of"]);
    let position = params.min_position();
    let upto = as_of_params(&mut params);
    params.finish()?;
    let id = path_id(&id)?;
    let upto = match upto {
        Some(upto) => upto,
        None => {
            state.wait_for(position.as_ref(), &["orders"]).await?;
            let row: Option<OrderRow> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT * FROM {} WHERE order_id = $1",
                state.schema("orders").table("orders")
            )))
            .bind(id)
            .fetch_optional(&state.pool)
            .await?;
            return row
                .map(Json)
                .ok_or_else(|| QueryError::NotFound(format!("no order {id}")));
        }
    };
    state.wait_for(position.as_ref(), &["event_index"]).await?;
    history::as_of::<Orders>(&state, "order", id, upto)
        .await
        .map(Json)
}

/// `as_of_version` or `as_of`, when one is given (both: an error).
fn as_of_params(params: &mut Params) -> Option<Upto> {
    let version = params.version("as_of_version");
    let time = params.time("as_of");
    match (version, time) {
        (Some(_), Some(_)) => {
            params.fail("as_of", "give as_of_version or as_of, not both");
            None
        }
        (Some(version), None) => Some(Upto::Version(version)),
        (None, Some(time)) => Some(Upto::Time(time)),
        (None, None) => None,
    }
}

/// `GET /v1/payments?order_id=&limit=&cursor=`
#[utoipa::path(
    get, path = "/v1/payments", tag = "payments",
    description = "The payments of one order, newest first (keyset pagination).",
    params(("order_id" = Uuid, Query, description = "the order whose payments to list"), ("limit" = Option<u32>, Query, description = "1 to 100 (default 20)", minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"), ("min_position" = Option<String>, Query, description = "a position a command returned, such as `orders:3:17`: wait until the read model has passed it", pattern = "^(users|user-emails|orders|payments|notifications):[0-9]{1,9}:[0-9]{1,18}$")),
    responses(
        (status = 200, description = "found", body = Page<PaymentRow>),
        (status = 401, description = "no valid API key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
        (status = 504, description = "the read model did not reach `min_position` in time; the lag is in the problem"),
    ),
    security(("bearer" = []))
)]
pub async fn payments(
    State(state): State<QueryState>,
    Query(pairs): Pairs,
) -> Result<Json<Page<PaymentRow>>, QueryError> {
    let mut params = Params::new(pairs, &["order_id", "limit", "cursor"]);
    let position = params.min_position();
    let order = params.required_uuid("order_id");
    let (cursor, limit) = (params.cursor(), params.limit());
    params.finish()?;
    state.wait_for(position.as_ref(), &["payments"]).await?;
    let rows: Vec<PaymentRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT * FROM {} WHERE order_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, payment_id) < ($2, $3))
         ORDER BY created_at DESC, payment_id DESC LIMIT $4",
        state.schema("payments").table("payments")
    )))
    .bind(order)
    .bind(cursor.map(|c| c.time))
    .bind(cursor.map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page::of(rows, limit, |p| Cursor {
        time: p.created_at,
        id: p.payment_id,
    })))
}

/// `GET /v1/notifications?user_id=&limit=&cursor=`
#[utoipa::path(
    get, path = "/v1/notifications", tag = "notifications",
    description = "The notifications of one user, newest first (keyset pagination).",
    params(("user_id" = Uuid, Query, description = "the user whose notifications to list"), ("limit" = Option<u32>, Query, description = "1 to 100 (default 20)", minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"), ("min_position" = Option<String>, Query, description = "a position a command returned, such as `orders:3:17`: wait until the read model has passed it", pattern = "^(users|user-emails|orders|payments|notifications):[0-9]{1,9}:[0-9]{1,18}$")),
    responses(
        (status = 200, description = "found", body = Page<NotificationRow>),
        (status = 401, description = "no valid API key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
        (status = 504, description = "the read model did not reach `min_position` in time; the lag is in the problem"),
    ),
    security(("bearer" = []))
)]
pub async fn notifications(
    State(state): State<QueryState>,
    Query(pairs): Pairs,
) -> Result<Json<Page<NotificationRow>>, QueryError> {
    let mut params = Params::new(pairs, &["user_id", "limit", "cursor"]);
    let position = params.min_position();
    let user = params.required_uuid("user_id");
    let (cursor, limit) = (params.cursor(), params.limit());
    params.finish()?;
    state
        .wait_for(position.as_ref(), &["notifications"])
        .await?;
    let rows: Vec<NotificationRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT * FROM {} WHERE user_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, notification_id) < ($2, $3))
         ORDER BY created_at DESC, notification_id DESC LIMIT $4",
        state.schema("notifications").table("notifications")
    )))
    .bind(user)
    .bind(cursor.map(|c| c.time))
    .bind(cursor.map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page::of(rows, limit, |n| Cursor {
        time: n.created_at,
        id: n.notification_id,
    })))
}
