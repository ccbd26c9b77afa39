//! The gateway's browser SDK. The sync and outbox logic is plain Rust, tested on the host;
//! only [`web`] touches wasm-bindgen and the browser.

pub mod identity;
pub mod outbox;
pub mod protocol;
pub mod sse;
pub mod values;

#[cfg(target_arch = "wasm32")]
mod web;
