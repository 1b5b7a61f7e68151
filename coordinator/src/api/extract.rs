//! The extractors every handler takes its input through: `Json`, `Query`
//! and `Path` whose rejections are an `ApiError`, so a malformed body,
//! query or path gets the same `ErrorBody` as every other refusal.

use super::ApiError;
use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// `Json` whose rejection is an `ApiError`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// An extractor of the request's parts (`Query`, `Path`) whose rejection
/// is an `ApiError`.
macro_rules! parts_extractor {
    ($(#[$doc:meta])* $name:ident = $inner:ident) => {
        $(#[$doc])*
        pub struct $name<T>(pub T);

        impl<S, T> FromRequestParts<S> for $name<T>
        where
            T: DeserializeOwned + Send,
            S: Send + Sync,
        {
            type Rejection = ApiError;
            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
                let axum::extract::$inner(v) =
                    axum::extract::$inner::<T>::from_request_parts(parts, state).await?;
                Ok($name(v))
            }
        }
    };
}

parts_extractor! {
    /// `Query` whose rejection is an `ApiError`.
    ApiQuery = Query
}

parts_extractor! {
    /// `Path` whose rejection is an `ApiError`.
    ApiPath = Path
}
