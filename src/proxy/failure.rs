//! Why an upstream attempt failed before the client saw a byte, and what that means: the
//! token's outcome for the pool, the metric label, whether another attempt may help.

use std::time::Duration;

use crate::k2think::refuses_request;
use crate::openai::ApiError;
use crate::pool::Outcome;

/// Why an attempt failed, before the client saw a byte.
#[derive(Debug)]
pub enum Failure {
    Status {
        status: u16,
        retry_after: Option<Duration>,
        detail: String,
    },
    Timeout(&'static str),
    /// Connect or I/O error before the response head: not the token's fault.
    Network(String),
    /// The connection broke after the head, before the answer was complete (a JSON
    /// client has seen nothing yet). Not the token's fault either.
    Cut(String),
    /// A 200 whose body is not a usable K2Think answer.
    Unusable(String),
    /// A refusal the provider classified itself: what it means for the token, whether
    /// another attempt can help, and the client's error if it is the last.
    Refused(Box<Refused>),
}

/// See [`Failure::Refused`].
#[derive(Debug)]
pub struct Refused {
    /// The `result` label of the upstream-attempt metric.
    pub label: &'static str,
    pub outcome: Outcome,
    pub retry: bool,
    /// For the log.
    pub detail: String,
    /// The client's error when no attempt succeeds.
    pub error: ApiError,
}

impl Failure {
    pub fn outcome(&self) -> Outcome {
        match self {
            Failure::Status {
                status,
                retry_after,
                ..
            } => match *status {
                401 | 403 => Outcome::Rejected(*status),
                429 => Outcome::RateLimited(*retry_after),
                s if refuses_request(s) => Outcome::RequestRefused(s),
                s => Outcome::ServerError(s),
            },
            Failure::Timeout(_) => Outcome::Timeout,
            Failure::Network(_) | Failure::Cut(_) => Outcome::Network,
            Failure::Unusable(_) => Outcome::BadResponse,
            Failure::Refused(r) => r.outcome.clone(),
        }
    }

    /// The `result` label of the upstream-attempt metric.
    pub fn label(&self) -> String {
        match self {
            Failure::Status { status, .. } => status.to_string(),
            Failure::Timeout(_) => "timeout".to_string(),
            Failure::Network(_) => "connect_error".to_string(),
            Failure::Cut(_) => "cut".to_string(),
            Failure::Unusable(_) => "invalid".to_string(),
            Failure::Refused(r) => r.label.to_string(),
        }
    }

    pub fn retryable(&self, on_status: &[u16]) -> bool {
        match self {
            Failure::Status { status, .. } => {
                !refuses_request(*status) && on_status.contains(status)
            }
            Failure::Refused(r) => r.retry,
            _ => true,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Failure::Status { status, detail, .. } if detail.is_empty() => format!("HTTP {status}"),
            Failure::Status { status, detail, .. } => format!("HTTP {status}: {detail}"),
            Failure::Timeout(what) => format!("timed out waiting for {what}"),
            Failure::Network(e) | Failure::Cut(e) | Failure::Unusable(e) => e.clone(),
            Failure::Refused(r) => r.detail.clone(),
        }
    }
}

