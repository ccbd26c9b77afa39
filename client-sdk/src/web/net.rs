//! One HTTP request to the gateway.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, RequestInit, Response};

/// A response with the headers the shape protocol reads.
pub struct Answer {
    pub status: u16,
    pub handle: Option<String>,
    pub offset: Option<String>,
    pub cursor: Option<String>,
    pub schema: Option<String>,
    pub body: String,
}

impl Answer {
    pub fn as_response(&self) -> crate::protocol::Response<'_> {
        crate::protocol::Response {
            status: self.status,
            handle: self.handle.as_deref(),
            offset: self.offset.as_deref(),
            cursor: self.cursor.as_deref(),
            schema: self.schema.as_deref(),
            body: &self.body,
        }
    }
}

/// `GET url` with `Authorization: Bearer token` when there is a token.
pub async fn get(url: &str, token: Option<&str>) -> Result<Answer, JsValue> {
    let init = RequestInit::new();
    let headers = Headers::new()?;
    if let Some(t) = token {
        headers.set("authorization", &format!("Bearer {t}"))?;
    }
    init.set_headers_headers(&headers);
    let window = web_sys::window().ok_or("no window")?;
    let response: Response = JsFuture::from(window.fetch_with_str_and_init(url, &init)).await?.dyn_into()?;
    let h = response.headers();
    let header = |name: &str| h.get(name).ok().flatten();
    let body = JsFuture::from(response.text()?).await?.as_string().unwrap_or_default();
    Ok(Answer {
        status: response.status(),
        handle: header("electric-handle"),
        offset: header("electric-offset"),
        cursor: header("electric-cursor"),
        schema: header("electric-schema"),
        body,
    })
}
