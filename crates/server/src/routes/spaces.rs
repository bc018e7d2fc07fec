//! `/spaces`: shared spaces and their members.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mana_sync_protocol::UserId;
use mana_sync_protocol::messages::{
    CreateSpace, ErrorBody, MemberView, SetMember, SpaceList, SpaceView,
};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::openapi::{E400_SPACES, E401, E408, E413, E503};
use crate::spaces::space_id;

/// `GET /spaces`: the caller's spaces.
#[utoipa::path(
    get,
    path = "/spaces",
    tag = "spaces",
    responses(
        (status = 200, description = "The caller's spaces, by name.", body = SpaceList),
        (status = 401, description = E401, body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
) -> Result<Json<SpaceList>, ApiError> {
    Ok(Json(state.spaces.list(&user).await?))
}

/// `POST /spaces`: a new space, owned by the caller.
#[utoipa::path(
    post,
    path = "/spaces",
    tag = "spaces",
    request_body = CreateSpace,
    responses(
        (status = 201, description = "Created; the caller is its owner.", body = SpaceView),
        (status = 400, description = E400_SPACES, body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 408, description = E408, body = ErrorBody),
        (status = 413, description = E413, body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    JsonBody(body): JsonBody<CreateSpace>,
) -> Result<(StatusCode, Json<SpaceView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.spaces.create(&user, &body.name).await?),
    ))
}

/// `GET /spaces/{spaceId}`: one of the caller's spaces, with its members.
#[utoipa::path(
    get,
    path = "/spaces/{spaceId}",
    tag = "spaces",
    params(("spaceId" = String, Path, description = "The space.")),
    responses(
        (status = 200, description = "The space, with every member.", body = SpaceView),
        (status = 400, description = E400_SPACES, body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 404, description = "`space_not_found`: no such space, or the caller is not a member.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    Path(space): Path<String>,
) -> Result<Json<SpaceView>, ApiError> {
    let space = space_id(&space)?;
    Ok(Json(state.spaces.get(&user, &space).await?))
}

/// `PUT /spaces/{spaceId}/members/{userId}`: add a member or change a role.
///
/// Only owners may; the member's streams and sockets are told at once
/// (`space-added`).
#[utoipa::path(
    put,
    path = "/spaces/{spaceId}/members/{userId}",
    tag = "spaces",
    params(("spaceId" = String, Path, description = "The space."), ("userId" = String, Path, description = "The member (a token's `sub`).")),
    request_body = SetMember,
    responses(
        (status = 200, description = "The member with the role.", body = MemberView),
        (status = 400, description = E400_SPACES, body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller is not an owner of the space.", body = ErrorBody),
        (status = 404, description = "`space_not_found`: no such space, or the caller is not a member.", body = ErrorBody),
        (status = 408, description = E408, body = ErrorBody),
        (status = 409, description = "`last_owner`: the last owner cannot become an editor or viewer.", body = ErrorBody),
        (status = 413, description = E413, body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn set_member(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    Path((space, member)): Path<(String, String)>,
    JsonBody(body): JsonBody<SetMember>,
) -> Result<Json<MemberView>, ApiError> {
    let space = space_id(&space)?;
    Ok(Json(
        state
            .spaces
            .set_member(&user, &space, &member, &body.role)
            .await?,
    ))
}

/// `DELETE /spaces/{spaceId}/members/{userId}`: remove a member, or leave.
///
/// Owners remove anyone; any member removes themself. The member's streams
/// and sockets are told at once (`space-removed`) and get nothing more of it.
#[utoipa::path(
    delete,
    path = "/spaces/{spaceId}/members/{userId}",
    tag = "spaces",
    params(("spaceId" = String, Path, description = "The space."), ("userId" = String, Path, description = "The member (a token's `sub`).")),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = E400_SPACES, body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller is neither an owner nor the member.", body = ErrorBody),
        (status = 404, description = "`space_not_found`: no such space, or the caller is not a member; `member_not_found`: the user is not a member.", body = ErrorBody),
        (status = 409, description = "`last_owner`: the last owner cannot leave.", body = ErrorBody),
        (status = 503, description = E503, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn remove_member(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    Path((space, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let space = space_id(&space)?;
    state.spaces.remove_member(&user, &space, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}
