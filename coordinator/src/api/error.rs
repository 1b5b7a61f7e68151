//! API errors: every refusal is a JSON `ErrorBody` with a stable `code`.

use crate::live::AuthError;
use crate::store::StoreError;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spot_common::wire::ErrorBody;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub rule: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            rule: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn instance_mismatch(agent_id: &str, instance_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "instance_mismatch",
            format!(
                "agent {agent_id} belongs to another instance than {instance_id}: register afresh"
            ),
        )
    }

    pub fn client_certificate_mismatch(instance: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "client_certificate_mismatch",
            format!(
                "the client certificate does not name instance {instance} (tls client_identity)"
            ),
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
            rule: self.rule,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::Unauthorized => ApiError::unauthorized(),
            AuthError::Forbidden => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token belongs to another agent",
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        use StoreError as S;
        match e {
            S::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            S::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            S::VersionConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "version_conflict", e.to_string())
            }
            S::Role(ref t) => {
                let code = match t {
                    spot_common::RoleError::StaleEpoch { .. } => "stale_epoch",
                    spot_common::RoleError::UnknownInstance(_) => "not_found",
                    spot_common::RoleError::Illegal { .. } => "illegal_transition",
                };
                let status = if code == "not_found" {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::CONFLICT
                };
                ApiError {
                    status,
                    code,
                    message: t.to_string(),
                    rule: Some(t.rule().to_owned()),
                }
            }
            S::Rule(ref r) => ApiError {
                status: StatusCode::CONFLICT,
                code: "rule_violation",
                message: r.to_string(),
                rule: Some(
                    match r {
                        spot_common::ConfigRuleError::AutoSwitchWithManualReplica => {
                            "auto_switch_excludes_manual_replica"
                        }
                        spot_common::ConfigRuleError::DuplicatePool(_) => "pools_are_unique",
                        spot_common::ConfigRuleError::BadGroupName(_) => "group_name_format",
                        spot_common::ConfigRuleError::InterfaceAcrossZones(_) => {
                            "interface_pools_in_one_zone"
                        }
                        spot_common::ConfigRuleError::DataVolume(_) => "data_volumes_valid",
                    }
                    .to_owned(),
                ),
            },
            // The request reached a coordinator whose term ended under it:
            // nothing was written; the leader (or the next one) answers.
            S::NotLeader(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", e.to_string())
            }
            S::RequestIdReuse { .. } => {
                ApiError::new(StatusCode::CONFLICT, "request_id_reused", e.to_string())
            }
            S::IdempotencyKeyReused(_) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                e.to_string(),
            ),
            S::NotFenced(m) => ApiError::new(StatusCode::CONFLICT, "not_fenced", m),
            S::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", m),
            S::Refused { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            S::InProgress(m) => ApiError::new(StatusCode::CONFLICT, "promotion_in_progress", m),
            S::NotIngested(m) => ApiError::new(StatusCode::FORBIDDEN, "not_ingested", m),
            S::Engine(_) | S::Json(_) | S::Join(_) => {
                tracing::error!(error = %spot_common::error_chain(&e), "store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the coordinator log",
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            _ => "malformed_json",
        };
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        ApiError::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
    }
}
