//! `/spaces`: shared spaces and their members.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mana_sync_protocol::UserId;
use mana_sync_protocol::messages::{CreateSpace, MemberView, SetMember, SpaceList, SpaceView};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::spaces::space_id;

/// `GET /spaces`: the caller's spaces.
pub async fn list(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
) -> Result<Json<SpaceList>, ApiError> {
    Ok(Json(state.spaces.list(&user).await?))
}

/// `POST /spaces`: a new space, owned by the caller.
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
pub async fn get(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    Path(space): Path<String>,
) -> Result<Json<SpaceView>, ApiError> {
    let space = space_id(&space)?;
    Ok(Json(state.spaces.get(&user, &space).await?))
}

/// `PUT /spaces/{spaceId}/members/{userId}`: add a member or change a role.
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
pub async fn remove_member(
    State(state): State<AppState>,
    Extension(user): Extension<UserId>,
    Path((space, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let space = space_id(&space)?;
    state.spaces.remove_member(&user, &space, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}
