//! `GET /problems/{slug}`: the documentation each problem `type` URI points to.

use axum::extract::Path;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ProblemKind};

/// What a problem type means.
#[derive(Serialize, ToSchema)]
pub struct ProblemDoc {
    /// The `type` URI.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary.
    pub title: String,
    /// HTTP status the problem comes with.
    pub status: u16,
}

/// Documents a problem type.
#[utoipa::path(get, path = "/problems/{slug}", tag = "operations",
    params(("slug" = String, Path, description = "problem slug, e.g. `overloaded`", example = "overloaded")),
    responses((status = 200, body = ProblemDoc, description = "the problem type's documentation"), (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "no such problem type")))]
pub async fn problem_doc(Path(slug): Path<String>) -> Result<Json<ProblemDoc>, ApiError> {
    let kind = ProblemKind::from_slug(&slug)
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, format!("no problem type `{slug}`")))?;
    Ok(Json(ProblemDoc {
        type_uri: kind.type_uri(),
        title: kind.title().into(),
        status: kind.status().as_u16(),
    }))
}
