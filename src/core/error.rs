//! The gateway's one error type: status, type, code, message, `param` and `Retry-After`.
//! [`ApiError::body`] is the OpenAI shape; surfaces with another shape render it themselves.

/// An error as the client sees it: `{"error":{"message","type","param","code"}}` + status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: String) -> ApiError {
        ApiError {
            status,
            message,
            kind,
            param: None,
            code: Some(code),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>, param: Option<String>) -> ApiError {
        ApiError {
            param,
            ..ApiError::new(
                400,
                "invalid_request_error",
                "invalid_request",
                message.into(),
            )
        }
    }

    pub fn with_retry_after(mut self, secs: Option<u64>) -> ApiError {
        self.retry_after = secs;
        self
    }

    pub fn body(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }
}
