//! Why an upstream attempt failed before the client saw a byte, and what that means: the
//! token's outcome for the pool, the metric label, whether another attempt may help.

use std::time::Duration;

use super::k2think::refuses_request;
use crate::core::error::ApiError;
use crate::core::events;
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
    /// A 200 whose body is not a usable answer.
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

    /// The client's error when this was the last attempt's failure. `up` names the
    /// provider ("K2Think", "Z.AI"); `pool_wait` says how long until a token of its pool is
    /// usable again (asked only for a 429).
    pub fn client_error(self, up: &str, pool_wait: impl FnOnce() -> Option<Duration>) -> ApiError {
        let what = self.describe();
        match self {
            Failure::Refused(r) => r.error,
            Failure::Status {
                status: 429,
                retry_after,
                ..
            } => {
                let pool_wait = pool_wait();
                ApiError::new(
                    429,
                    "rate_limit_error",
                    "upstream_rate_limited",
                    format!("{up} is rate limiting this proxy ({what}); retry later"),
                )
                .with_retry_after(retry_after.or(pool_wait).map(ceil_secs))
            }
            Failure::Status { status, .. } if status == 401 || status == 403 => ApiError::new(
                502,
                "upstream_error",
                "upstream_auth_failed",
                format!("{up} refused the proxy's credentials ({what})"),
            ),
            Failure::Status { status, detail, .. } if refuses_request(status) => ApiError::new(
                400,
                "invalid_request_error",
                "upstream_rejected_request",
                if detail.is_empty() {
                    format!("{up} refused the request (HTTP {status}) without saying why")
                } else {
                    format!("{up} refused the request (HTTP {status}): {detail}")
                },
            ),
            Failure::Status { status, .. } if status >= 500 => ApiError::new(
                502,
                "upstream_error",
                "upstream_error",
                format!("{up} failed ({what})"),
            ),
            Failure::Status { .. } => ApiError::new(
                502,
                "upstream_error",
                "upstream_rejected",
                format!("{up} rejected the request ({what})"),
            ),
            Failure::Timeout(_) => ApiError::new(
                504,
                "upstream_error",
                "upstream_timeout",
                format!("{up} did not answer in time ({what})"),
            ),
            Failure::Network(_) => ApiError::new(
                502,
                "upstream_error",
                "upstream_unreachable",
                format!("Could not reach {up} ({what})"),
            ),
            Failure::Cut(_) => ApiError::new(
                502,
                "upstream_error",
                events::UPSTREAM_STREAM_ERROR,
                format!("{up}'s answer broke off before it was complete ({what})"),
            ),
            Failure::Unusable(_) => ApiError::new(
                502,
                "upstream_error",
                "upstream_invalid_response",
                format!("{up} sent an answer the proxy cannot use ({what})"),
            ),
        }
    }
}

pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s.max(1)
    }
}

pub fn pool_exhausted(retry_after: Option<Duration>) -> ApiError {
    ApiError::new(
        503,
        "server_error",
        "pool_exhausted",
        "Every upstream token is cooling down or disabled; retry later".to_string(),
    )
    .with_retry_after(retry_after.map(ceil_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<Duration>) -> Failure {
        Failure::Status {
            status,
            retry_after,
            detail: String::new(),
        }
    }

    #[test]
    fn statuses_map_to_pool_outcomes_and_retries() {
        let on = [401, 403, 429, 500, 502, 503, 504];
        assert_eq!(status(401, None).outcome(), Outcome::Rejected(401));
        assert_eq!(
            status(429, Some(Duration::from_secs(3))).outcome(),
            Outcome::RateLimited(Some(Duration::from_secs(3)))
        );
        assert_eq!(status(400, None).outcome(), Outcome::RequestRefused(400));
        assert_eq!(status(502, None).outcome(), Outcome::ServerError(502));
        assert!(status(429, None).retryable(&on));
        assert!(status(500, None).retryable(&on));
        // A refused request is final whatever the list says; a status off the list too.
        assert!(!status(400, None).retryable(&[400]));
        assert!(!status(418, None).retryable(&on));
        for f in [
            Failure::Timeout("the head"),
            Failure::Network("x".into()),
            Failure::Cut("x".into()),
            Failure::Unusable("x".into()),
        ] {
            assert!(f.retryable(&[]), "{f:?}");
        }
        assert_eq!(Failure::Network("x".into()).outcome(), Outcome::Network);
        assert_eq!(
            Failure::Unusable("x".into()).outcome(),
            Outcome::BadResponse
        );
        assert_eq!(Failure::Timeout("x").label(), "timeout");
        assert_eq!(status(429, None).label(), "429");
    }

    #[test]
    fn a_provider_refusal_decides_for_itself() {
        let error = ApiError::new(503, "server_error", "upstream_captcha_required", "m".into());
        let f = Failure::Refused(Box::new(Refused {
            label: "captcha_required",
            outcome: Outcome::RequestRefused(400),
            retry: false,
            detail: "HTTP 400: captcha".into(),
            error: error.clone(),
        }));
        assert!(!f.retryable(&[400, 429]));
        assert_eq!(f.label(), "captcha_required");
        assert_eq!(f.outcome(), Outcome::RequestRefused(400));
        assert_eq!(f.client_error("Z.AI", || None), error);
    }

    #[test]
    fn client_errors_name_the_provider_and_carry_retry_after() {
        let e = status(429, None).client_error("Z.AI", || Some(Duration::from_millis(1500)));
        assert_eq!(
            (e.status, e.code.unwrap_or("")),
            (429, "upstream_rate_limited")
        );
        assert_eq!(e.retry_after, Some(2));
        assert!(
            e.message.starts_with("Z.AI is rate limiting"),
            "{}",
            e.message
        );
        let e = status(429, Some(Duration::from_secs(7))).client_error("K2Think", || None);
        assert_eq!(e.retry_after, Some(7));
        let e = status(401, None).client_error("K2Think", || None);
        assert_eq!(
            (e.status, e.code.unwrap_or("")),
            (502, "upstream_auth_failed")
        );
        let e = status(422, None).client_error("K2Think", || None);
        assert_eq!(
            (e.status, e.code.unwrap_or("")),
            (400, "upstream_rejected_request")
        );
        let e = Failure::Timeout("the answer").client_error("K2Think", || None);
        assert_eq!((e.status, e.code.unwrap_or("")), (504, "upstream_timeout"));
        let e = Failure::Cut("gone".into()).client_error("K2Think", || None);
        assert_eq!(e.code, Some(events::UPSTREAM_STREAM_ERROR));
        let e = pool_exhausted(Some(Duration::from_millis(10)));
        assert_eq!((e.status, e.retry_after), (503, Some(1)));
    }
}
