//! HTTP requests to the gateway: one-shot (`get`, `post`) and a live SSE stream read
//! chunk by chunk.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortSignal, Headers, ReadableStreamDefaultReader, RequestInit, Response, TextDecoder};

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

/// `GET url`.
pub async fn get(url: &str, token: Option<&str>, signal: &AbortSignal) -> Result<Answer, JsValue> {
    let response = send("GET", url, None, token, None, Some(signal)).await?;
    read_whole(response).await
}

/// `POST url` with a JSON body.
pub async fn post(url: &str, body: &str, token: Option<&str>, signal: &AbortSignal) -> Result<Answer, JsValue> {
    let response = send("POST", url, Some(body), token, None, Some(signal)).await?;
    read_whole(response).await
}

/// A live SSE response: its headers, and its body as it arrives.
pub struct EventStream {
    pub head: Answer,
    reader: Option<ReadableStreamDefaultReader>,
    decoder: TextDecoder,
}

/// What the silence timer resolves to, told apart from a chunk.
const SILENT: &str = "silent";

impl EventStream {
    /// The next piece of the body; `None` once it ended. A stream that sends nothing for
    /// `silence_ms` (the gateway sends keep-alives) is dead: an error.
    pub async fn next(&mut self, silence_ms: u32) -> Result<Option<String>, JsValue> {
        let Some(reader) = &self.reader else { return Ok(None) };
        let window = web_sys::window().ok_or("no window")?;
        let mut timer = None;
        let silence = js_sys::Promise::new(&mut |resolve, _| {
            let ms = i32::try_from(silence_ms).unwrap_or(i32::MAX);
            timer = window
                .set_timeout_with_callback_and_timeout_and_arguments_1(&resolve, ms, &JsValue::from_str(SILENT))
                .ok();
        });
        let first = js_sys::Promise::race(&js_sys::Array::of2(&reader.read(), &silence));
        let chunk = JsFuture::from(first).await;
        if let Some(t) = timer {
            window.clear_timeout_with_handle(t);
        }
        let chunk = chunk?;
        if chunk.as_string().as_deref() == Some(SILENT) {
            return Err(JsValue::from_str(&format!(
                "the live stream sent nothing, not even a keep-alive, for {} s",
                silence_ms / 1000
            )));
        }
        if js_sys::Reflect::get(&chunk, &"done".into())?.is_truthy() {
            return Ok(None);
        }
        let bytes: js_sys::Uint8Array = js_sys::Reflect::get(&chunk, &"value".into())?.dyn_into()?;
        let options = web_sys::TextDecodeOptions::new();
        options.set_stream(true);
        self.decoder.decode_with_js_u8_array_and_options(&bytes, &options).map(Some)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            // A stream the engine's close aborted rejects the cancel: awaited here, so it
            // never becomes an unhandled rejection.
            let cancelled = JsFuture::from(reader.cancel());
            wasm_bindgen_futures::spawn_local(async move {
                let _ = cancelled.await;
            });
        }
    }
}

/// `GET url` as an SSE stream. A non-200 answer comes whole, in `head.body`.
pub async fn events(url: &str, token: Option<&str>, signal: &AbortSignal) -> Result<EventStream, JsValue> {
    let response = send("GET", url, None, token, Some("text/event-stream"), Some(signal)).await?;
    if response.status() != 200 {
        let head = read_whole(response).await?;
        return Ok(EventStream { head, reader: None, decoder: TextDecoder::new()? });
    }
    let reader = response.body().map(|b| b.get_reader().unchecked_into::<ReadableStreamDefaultReader>());
    let head = answer(&response, String::new());
    Ok(EventStream { head, reader, decoder: TextDecoder::new()? })
}

async fn send(
    method: &str,
    url: &str,
    body: Option<&str>,
    token: Option<&str>,
    accept: Option<&str>,
    signal: Option<&AbortSignal>,
) -> Result<Response, JsValue> {
    let init = RequestInit::new();
    init.set_signal(signal);
    init.set_method(method);
    let headers = Headers::new()?;
    if let Some(t) = token {
        headers.set("authorization", &format!("Bearer {t}"))?;
    }
    if let Some(a) = accept {
        headers.set("accept", a)?;
    }
    if let Some(b) = body {
        headers.set("content-type", "application/json")?;
        init.set_body(&JsValue::from_str(b));
    }
    init.set_headers_headers(&headers);
    let window = web_sys::window().ok_or("no window")?;
    JsFuture::from(window.fetch_with_str_and_init(url, &init)).await?.dyn_into()
}

async fn read_whole(response: Response) -> Result<Answer, JsValue> {
    let body = JsFuture::from(response.text()?).await?.as_string().unwrap_or_default();
    Ok(answer(&response, body))
}

fn answer(response: &Response, body: String) -> Answer {
    let h = response.headers();
    let header = |name: &str| h.get(name).ok().flatten();
    Answer {
        status: response.status(),
        handle: header("electric-handle"),
        offset: header("electric-offset"),
        cursor: header("electric-cursor"),
        schema: header("electric-schema"),
        body,
    }
}
