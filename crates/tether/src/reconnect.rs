//! Staying connected: which failures to retry, how long to wait, and the loop that does it.
//!
//! The policy ([`Policy`], [`Backoff`], [`parse_retry_after`]) is pure: it maps an error, an
//! attempt number and a random number to a decision and a delay, and is tested with numbers.
//! The loop ([`Reconnecting`]) is a small async stream on top of it.
//!
//! See the "Reconnecting" guide in `docs/reconnecting.md` for the default table and recipes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_core::Stream;
use tokio::time::Instant;

use crate::client::ClientBuilder;
use crate::error::{Error, ErrorKind, Result};
use crate::websocket::{CloseSignal, WebSocket};

// ----- backoff -----

/// How the wait between attempts grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Jitter {
    /// Python websockets' schedule: only the first wait is random.
    None,
    /// Every wait is uniformly random between zero and the scheduled wait ("full jitter"),
    /// which spreads a crowd of clients that failed at the same moment.
    Full,
}

/// An exponential backoff schedule. Defaults are Python websockets': the first wait is
/// uniformly random in [0, 5 s], then 3.1 s, growing ×1.618 per attempt, capped at 90 s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Upper bound of the first, random, wait. Default: 5 s.
    pub initial: Duration,
    /// The second wait. Default: 3.1 s.
    pub min: Duration,
    /// Each later wait is the previous one times this. Default: 1.618.
    pub factor: f64,
    /// No wait is longer than this. Default: 90 s.
    pub max: Duration,
    /// Randomisation of later waits. Default: [`Jitter::None`].
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(5),
            min: Duration::from_millis(3100),
            factor: 1.618,
            max: Duration::from_secs(90),
            jitter: Jitter::None,
        }
    }
}

impl Backoff {
    /// The wait before retry number `step + 1` (`step` 0 is the first retry), given `random`
    /// uniformly drawn from [0, 1).
    pub fn delay(&self, step: u32, random: f64) -> Duration {
        let random = random.clamp(0.0, 1.0);
        if step == 0 {
            return self.initial.mul_f64(random).min(self.max);
        }
        let exponent = i32::try_from(step - 1).unwrap_or(i32::MAX);
        let grown = self.min.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        let scheduled = Duration::from_secs_f64(grown.min(self.max.as_secs_f64()).max(0.0));
        match self.jitter {
            Jitter::None => scheduled,
            Jitter::Full => scheduled.mul_f64(random),
        }
    }
}

// ----- decisions -----

/// What to do about a failed attempt.
#[derive(Debug)]
#[non_exhaustive]
pub enum Decision {
    /// Whatever the rest of the policy says (status and kind rules, then the default table).
    Default,
    /// Retry after the backoff's next wait (raised to the server's Retry-After, if any).
    Retry,
    /// Retry after exactly this wait.
    RetryAfter(Duration),
    /// Stop, with this error.
    Fatal,
    /// Stop, reporting this error instead.
    FatalWith(Error),
}

/// What a policy hook knows about the attempt that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptContext {
    /// Failed attempts in a row, this one included (1 for the first failure).
    pub attempt: u32,
    /// Time since the first of these failures.
    pub elapsed: Duration,
    /// The wait before this attempt, if it was a retry.
    pub previous_delay: Option<Duration>,
}

/// The built-in classification (Python websockets' table, plus certificate errors).
///
/// | error | decision |
/// |---|---|
/// | I/O (refused, reset, DNS, …) | retry |
/// | timeout (any phase) | retry |
/// | EOF during the handshake | retry |
/// | HTTP 500, 502, 503, 504 | retry |
/// | any other status (401, 403, 404, 429, 3xx, …) | fatal |
/// | invalid response, redirect errors, invalid URI | fatal |
/// | TLS: certificate untrusted or invalid, or any TLS-level error | fatal |
/// | TLS: the transport failed during the TLS handshake | retry |
/// | proxy unreachable or hanging up, or answering 5xx | retry |
/// | proxy answering anything else (407, 403, …) | fatal |
/// | SOCKS5: general failure, network or host unreachable, connection refused, TTL expired | retry |
/// | SOCKS5: not allowed by ruleset, bad credentials, unsupported command or address | fatal |
/// | protocol error, anything else | fatal |
pub fn default_decision(error: &Error) -> Decision {
    let retry = match error {
        Error::Io(_) | Error::Timeout(_) | Error::Eof => true,
        Error::Status(r) => matches!(r.status, 500 | 502 | 503 | 504),
        // A rustls error inside means TLS itself failed (certificate, alert, version):
        // retrying cannot help. A bare I/O error means the transport broke mid-handshake.
        Error::Tls(e) => {
            !(error.is_certificate_error() || e.get_ref().is_some_and(|i| i.is::<rustls::Error>()))
        }
        Error::Proxy(p) => match (p.status, p.socks_reply) {
            (Some(s), _) => (500..600).contains(&s),
            (None, Some(code)) => matches!(code, 1 | 3 | 4 | 5 | 6),
            (None, None) => p.io.is_some(),
        },
        _ => false,
    };
    if retry {
        Decision::Retry
    } else {
        Decision::Fatal
    }
}

/// The wait after an open connection ended, from [`Policy::after_close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AfterClose {
    /// A random wait in [0, [`reconnect_delay`](Policy::reconnect_delay)], so that clients
    /// dropped together do not come back together. The backoff starts over.
    Spread(Duration),
    /// The server closed with 1013 (try again later): a failure, with the backoff's next
    /// wait.
    TryAgainLater(Duration),
    /// The connection closed before the minimum uptime: a failure, with the backoff's next
    /// wait.
    ShortLived(Duration),
}

impl AfterClose {
    /// The wait before the next attempt.
    pub fn delay(self) -> Duration {
        match self {
            Self::Spread(d) | Self::TryAgainLater(d) | Self::ShortLived(d) => d,
        }
    }

    /// True when it counts as a failure for the backoff schedule.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::Spread(_))
    }
}

/// The result of [`Policy::on_failure`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Retry after this wait.
    Retry(Duration),
    /// Stop with the attempt's error.
    Fatal,
    /// Stop with this error instead (from a hook's [`Decision::FatalWith`]).
    FatalWith(Error),
    /// Stop: the attempt limit is reached ([`Error::AttemptsExhausted`]).
    Exhausted,
}

type Hook = dyn Fn(&Error, &AttemptContext) -> Decision + Send + Sync;

/// The reconnect policy: classification, backoff, Retry-After, minimum uptime and attempt
/// limit. Build it with the chained setters; every default is documented on its setter.
#[derive(Clone)]
pub struct Policy {
    backoff: Backoff,
    reconnect_delay: Duration,
    min_uptime: Duration,
    max_attempts: Option<u32>,
    retry_after: bool,
    retry_after_cap: Duration,
    status_rules: Vec<(u16, bool)>,
    kind_rules: Vec<(ErrorKind, bool)>,
    hook: Option<Arc<Hook>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("backoff", &self.backoff)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("min_uptime", &self.min_uptime)
            .field("max_attempts", &self.max_attempts)
            .field("retry_after", &self.retry_after)
            .field("retry_after_cap", &self.retry_after_cap)
            .field("status_rules", &self.status_rules)
            .field("kind_rules", &self.kind_rules)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            reconnect_delay: Duration::from_secs(1),
            min_uptime: Duration::from_secs(5),
            max_attempts: None,
            retry_after: true,
            retry_after_cap: Duration::from_secs(300),
            status_rules: Vec::new(),
            kind_rules: Vec::new(),
            hook: None,
        }
    }
}

fn retry_or_fatal(retry: bool) -> Decision {
    if retry {
        Decision::Retry
    } else {
        Decision::Fatal
    }
}

impl Policy {
    /// The backoff schedule. Default: [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// After an open connection ends (other than by the caller), wait a random time in
    /// [0, `delay`] before the next attempt, so that the clients of a server that closes all
    /// its connections at once (a restart, a drain with 1012) do not all return in the same
    /// moment. Zero reconnects at once (Python websockets' behaviour). A close with 1013
    /// (try again later), or one before the [minimum uptime](Self::min_uptime), takes the
    /// backoff's next wait instead. Default: 1 s.
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = delay;
        self
    }

    /// A connection must stay open this long before the backoff restarts from the beginning;
    /// a shorter one counts as a failure for the schedule, so a server that accepts and
    /// immediately closes is retried with growing waits, not in a hot loop. Zero restarts the
    /// schedule after every successful handshake (Python websockets' behaviour). Default: 5 s.
    pub fn min_uptime(mut self, uptime: Duration) -> Self {
        self.min_uptime = uptime;
        self
    }

    /// Give up after this many failed attempts in a row, with
    /// [`Error::AttemptsExhausted`]. Default: unlimited.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Whether a `Retry-After` header on a retried response raises the next wait to it, and
    /// the longest wait it may ask for. Default: honoured, capped at 300 s.
    pub fn retry_after(mut self, honour: bool, cap: Duration) -> Self {
        self.retry_after = honour;
        self.retry_after_cap = cap;
        self
    }

    /// Also retry this HTTP status (e.g. 429). Later rules win over earlier ones.
    pub fn retry_on_status(mut self, status: u16) -> Self {
        self.status_rules.push((status, true));
        self
    }

    /// Never retry this HTTP status (e.g. 503 from a server you know is gone).
    pub fn fatal_on_status(mut self, status: u16) -> Self {
        self.status_rules.push((status, false));
        self
    }

    /// Retry every error of this kind.
    pub fn retry_on_kind(mut self, kind: ErrorKind) -> Self {
        self.kind_rules.push((kind, true));
        self
    }

    /// Never retry errors of this kind.
    pub fn fatal_on_kind(mut self, kind: ErrorKind) -> Self {
        self.kind_rules.push((kind, false));
        self
    }

    /// A hook that decides first, with the error (and its HTTP response, if any) in hand;
    /// return [`Decision::Default`] to leave the decision to the rules and the default table.
    /// Python websockets calls this `process_exception`.
    pub fn on_error<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Error, &AttemptContext) -> Decision + Send + Sync + 'static,
    {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The decision for a failed attempt: the hook, then status rules, then kind rules, then
    /// [`default_decision`]. Never returns [`Decision::Default`].
    pub fn decide(&self, error: &Error, ctx: &AttemptContext) -> Decision {
        if let Some(hook) = &self.hook {
            match hook(error, ctx) {
                Decision::Default => {}
                d => return d,
            }
        }
        if let Some(status) = error.status() {
            let rule = self.status_rules.iter().rev().find(|(s, _)| *s == status);
            if let Some(&(_, retry)) = rule {
                return retry_or_fatal(retry);
            }
        }
        let kind = error.kind();
        if let Some(&(_, retry)) = self.kind_rules.iter().rev().find(|(k, _)| *k == kind) {
            return retry_or_fatal(retry);
        }
        default_decision(error)
    }

    /// What happens after a failed attempt. `step` is the backoff step (0 for the first
    /// retry), `random` is uniform in [0, 1), `wall_now` is used to read an HTTP-date
    /// Retry-After.
    pub fn on_failure(
        &self,
        error: &Error,
        ctx: &AttemptContext,
        step: u32,
        random: f64,
        wall_now: SystemTime,
    ) -> Outcome {
        self.outcome(error, ctx, self.backoff.delay(step, random), wall_now)
    }

    /// What happens after the first attempt that followed a [spread](AfterClose::Spread)
    /// failed, when `rest` of the spread's window [0, [`reconnect_delay`](Self::reconnect_delay)]
    /// was left as the attempt started. As [`on_failure`](Self::on_failure), except that the
    /// backoff's first wait is [`first_retry_after_spread`](Self::first_retry_after_spread).
    pub fn on_failure_after_spread(
        &self,
        error: &Error,
        ctx: &AttemptContext,
        rest: Duration,
        random: f64,
        wall_now: SystemTime,
    ) -> Outcome {
        let wait = self.first_retry_after_spread(rest, random);
        self.outcome(error, ctx, wait, wall_now)
    }

    /// The backoff's first wait after an attempt that a spread started and that failed.
    ///
    /// Clients dropped together retry in windows that follow each other: the spread's window
    /// [0, D] after the drop, then the first retry's window [D, D + L], then the second
    /// retry's [D + L, D + 2L] (its wait is the backoff's fixed `min`, L). So the first retry
    /// waits `rest` (what was left of the spread's window) plus a random part of L. A client
    /// refused early in a window retries in the next one rather than on top of the clients
    /// still due in it, and a server that comes back at any moment of the first windows meets
    /// one steady rate of arrivals. Measured with `bench storm` (docs/benchmarks.md).
    ///
    /// L is the backoff's `min`, shortened so that the wait stays within the backoff's
    /// `initial` bound (`initial` − D). When that leaves L shorter than D, which would make the
    /// retries denser than the spread, or when there is no spread (D = 0), the wait is the
    /// backoff's plain first wait, random in [0, `initial`], as in Python websockets.
    pub fn first_retry_after_spread(&self, rest: Duration, random: f64) -> Duration {
        let spread = self.reconnect_delay;
        let window = self
            .backoff
            .min
            .min(self.backoff.initial.saturating_sub(spread));
        if spread.is_zero() || window < spread {
            return self.backoff.delay(0, random);
        }
        let random = random.clamp(0.0, 1.0);
        (rest.min(spread) + window.mul_f64(random)).min(self.backoff.max)
    }

    fn outcome(
        &self,
        error: &Error,
        ctx: &AttemptContext,
        backoff_wait: Duration,
        wall_now: SystemTime,
    ) -> Outcome {
        let delay = match self.decide(error, ctx) {
            Decision::Fatal | Decision::Default => return Outcome::Fatal,
            Decision::FatalWith(e) => return Outcome::FatalWith(e),
            Decision::RetryAfter(d) => d,
            Decision::Retry => {
                let mut d = backoff_wait;
                if self.retry_after {
                    if let Some(ra) = retry_after_of(error, wall_now) {
                        d = d.max(ra.min(self.retry_after_cap));
                    }
                }
                d
            }
        };
        if self.max_attempts.is_some_and(|max| ctx.attempt >= max) {
            return Outcome::Exhausted;
        }
        Outcome::Retry(delay)
    }

    /// The wait after a connection that closed before the minimum uptime, at backoff step
    /// `step`.
    pub fn short_uptime_delay(&self, step: u32, random: f64) -> Duration {
        self.backoff.delay(step, random)
    }

    /// What happens after an open connection ended, `uptime` after it opened, with the
    /// peer's close `code` (if its Close frame arrived). `step` is the backoff step, `random`
    /// uniform in [0, 1).
    pub fn after_close(
        &self,
        uptime: Duration,
        code: Option<u16>,
        step: u32,
        random: f64,
    ) -> AfterClose {
        if code == Some(tether_proto::close_code::TRY_AGAIN_LATER) {
            AfterClose::TryAgainLater(self.backoff.delay(step, random))
        } else if uptime < self.min_uptime {
            AfterClose::ShortLived(self.backoff.delay(step, random))
        } else {
            AfterClose::Spread(self.reconnect_delay.mul_f64(random.clamp(0.0, 1.0)))
        }
    }
}

fn retry_after_of(error: &Error, wall_now: SystemTime) -> Option<Duration> {
    let value = error.response()?.headers.get_str("retry-after")?;
    parse_retry_after(value, wall_now)
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, also the obsolete RFC 850 and asctime forms). A date in
/// the past gives zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of an HTTP-date (RFC 9110 section 5.6.7).
fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split([' ', ',', '-']).filter(|p| !p.is_empty()).collect();
    // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT  -> [Sun, 06, Nov, 1994, 08:49:37, GMT]
    // RFC 850:     Sunday, 06-Nov-94 08:49:37 GMT -> [Sunday, 06, Nov, 94, 08:49:37, GMT]
    // asctime:     Sun Nov  6 08:49:37 1994       -> [Sun, Nov, 6, 08:49:37, 1994]
    let (day, month, year, time) = match parts.as_slice() {
        [_, d, m, y, t, "GMT"] => (*d, *m, *y, *t),
        [_, m, d, t, y] => (*d, *m, *y, *t),
        _ => return None,
    };
    let day: i64 = day.parse().ok()?;
    let mut year: i64 = year.parse().ok()?;
    if year < 100 {
        // RFC 9110: a two-digit year more than 50 years ahead is in the past century.
        year += if year < 70 { 2000 } else { 1900 };
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *mi > 59 || *se > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ----- the loop -----

/// What the reconnect loop is doing, for an [`on_event`](Reconnect::on_event) callback.
/// Every event also goes to `tracing` (retries at WARN, the fatal stop at ERROR).
#[derive(Debug)]
#[non_exhaustive]
pub enum ReconnectEvent<'a> {
    /// An attempt starts. `attempt` counts attempts since the last successful connection,
    /// from 1.
    Connecting {
        /// Attempt number.
        attempt: u32,
        /// The URL of this attempt.
        url: &'a str,
    },
    /// The attempt succeeded; the connection is handed to the caller.
    Open {
        /// Attempt number.
        attempt: u32,
        /// The selected subprotocol.
        subprotocol: Option<&'a str>,
    },
    /// The attempt failed and will be retried after `delay`.
    Retry {
        /// Attempt number.
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// Why the attempt failed.
        error: &'a Error,
    },
    /// The previous connection closed before the minimum uptime; the next attempt waits
    /// `delay`.
    ShortLived {
        /// How long the connection was open.
        uptime: Duration,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// The previous connection ended after `uptime`, and the next attempt waits `delay`:
    /// the random spread of [`Policy::reconnect_delay`], or the backoff's next wait when the
    /// server closed with 1013. Not sent when there is no wait.
    Closed {
        /// How long the connection was open.
        uptime: Duration,
        /// The peer's close code, when its Close frame arrived.
        code: Option<u16>,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// The loop stops with this error.
    Fatal {
        /// Attempt number.
        attempt: u32,
        /// The error the stream ends with.
        error: &'a Error,
    },
}

/// The request of one attempt, as a [`before_attempt`](Reconnect::before_attempt) hook may
/// change it.
#[derive(Clone, Debug)]
pub struct AttemptRequest {
    /// The URL to connect to.
    pub url: String,
    /// Extra request headers (the builder's, as the hook last left them).
    pub headers: Vec<(String, String)>,
    /// Attempt number since the last successful connection, from 1.
    pub attempt: u32,
    /// The HTTP status that failed the previous attempt, if any (e.g. 401).
    pub previous_status: Option<u16>,
}

impl AttemptRequest {
    /// Sets a header, replacing any of the same name (case-insensitive).
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.into()));
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BeforeAttempt = dyn Fn(AttemptRequest) -> BoxFuture<Result<AttemptRequest>> + Send + Sync;
type OnEvent = dyn Fn(&ReconnectEvent<'_>) + Send + Sync;

/// A reconnecting client: settings for [`Reconnecting`]. Made by
/// [`ClientBuilder::reconnecting`].
#[derive(Clone)]
pub struct Reconnect {
    builder: ClientBuilder,
    policy: Policy,
    before_attempt: Option<Arc<BeforeAttempt>>,
    on_event: Option<Arc<OnEvent>>,
}

impl std::fmt::Debug for Reconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnect")
            .field("builder", &self.builder)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A stream of connections that reconnects by itself, with the default [`Policy`].
    /// Configure it further, then call [`Reconnect::stream`].
    pub fn reconnecting(self) -> Reconnect {
        Reconnect {
            builder: self,
            policy: Policy::default(),
            before_attempt: None,
            on_event: None,
        }
    }
}

impl Reconnect {
    /// Changes the client settings every attempt starts from.
    pub(crate) fn map_builder(mut self, f: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Self {
        self.builder = f(self.builder);
        self
    }

    /// Replaces the policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// A hook run before every attempt that may change its URL and headers, for example to
    /// put a fresh token in `Authorization`. An error from the hook goes through the policy
    /// like a failed attempt (fatal by default).
    pub fn before_attempt<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(AttemptRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<AttemptRequest>> + Send + 'static,
    {
        self.before_attempt = Some(Arc::new(move |r| Box::pin(hook(r))));
        self
    }

    /// A callback for every [`ReconnectEvent`] (attempts, retries, the fatal stop), for
    /// metrics or to alert a human when credentials are rejected.
    pub fn on_event<F>(mut self, callback: F) -> Self
    where
        F: Fn(&ReconnectEvent<'_>) + Send + Sync + 'static,
    {
        self.on_event = Some(Arc::new(callback));
        self
    }

    /// Starts the stream. The first attempt is made when it is first polled.
    pub fn stream(self) -> Reconnecting {
        let state = LoopState {
            request: AttemptRequest {
                url: self.builder.url.clone(),
                headers: self.builder.headers.clone(),
                attempt: 0,
                previous_status: None,
            },
            settings: self,
            step: 0,
            spread_rest: None,
            failing_since: None,
            previous_delay: None,
            opened_at: None,
            watch: None,
            finished: false,
        };
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next_connection().await?;
            Some((item, state))
        });
        Reconnecting {
            inner: Box::pin(stream),
        }
    }
}

/// A stream of connections: each item is a freshly opened [`WebSocket`]. When you are done
/// with one (it closed, or you dropped it), poll again for the next. Retryable failures are
/// retried with backoff; the stream ends with the fatal error, then `None`.
///
/// ```no_run
/// # async fn run() -> Result<(), tether::Error> {
/// let mut connections = tether::ClientBuilder::new("wss://example.com/feed")
///     .reconnecting()
///     .stream();
/// while let Some(ws) = connections.next().await {
///     let mut ws = ws?; // a fatal error (HTTP 401, bad certificate, …) ends the loop
///     while let Some(Ok(msg)) = ws.recv().await {
///         println!("{msg:?}");
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Reconnecting {
    inner: Pin<Box<dyn Stream<Item = Result<WebSocket>> + Send>>,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnecting").finish_non_exhaustive()
    }
}

impl Reconnecting {
    /// The next connection, or the fatal error, or `None` after it.
    pub async fn next(&mut self) -> Option<Result<WebSocket>> {
        std::future::poll_fn(|cx| self.inner.as_mut().poll_next(cx)).await
    }
}

impl Stream for Reconnecting {
    type Item = Result<WebSocket>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct LoopState {
    settings: Reconnect,
    request: AttemptRequest,
    /// Backoff step: failures (and short-lived connections) since the schedule restarted.
    step: u32,
    /// After a spread: what was left of its window when the next attempt started.
    spread_rest: Option<Duration>,
    failing_since: Option<Instant>,
    previous_delay: Option<Duration>,
    opened_at: Option<Instant>,
    /// The open connection's link: its peer's close code once it was dropped.
    watch: Option<Arc<CloseSignal>>,
    finished: bool,
}

impl LoopState {
    fn emit(&self, event: &ReconnectEvent<'_>) {
        match event {
            ReconnectEvent::Connecting { attempt, url } => {
                tracing::debug!(attempt, url, "connecting")
            }
            ReconnectEvent::Open { attempt, .. } => tracing::info!(attempt, "connected"),
            ReconnectEvent::Retry {
                attempt,
                delay,
                error,
            } => tracing::warn!(
                attempt,
                delay_s = delay.as_secs_f64(),
                error = %error,
                "connection attempt failed; retrying"
            ),
            ReconnectEvent::ShortLived { uptime, delay } => tracing::warn!(
                uptime_s = uptime.as_secs_f64(),
                delay_s = delay.as_secs_f64(),
                "connection closed before the minimum uptime; backing off"
            ),
            ReconnectEvent::Closed {
                uptime,
                code,
                delay,
            } => tracing::info!(
                uptime_s = uptime.as_secs_f64(),
                code,
                delay_s = delay.as_secs_f64(),
                "connection ended; reconnecting after a wait"
            ),
            ReconnectEvent::Fatal { attempt, error } => {
                tracing::error!(attempt, error = %error, "giving up: fatal connection error")
            }
        }
        if let Some(cb) = &self.settings.on_event {
            cb(event);
        }
    }

    async fn next_connection(&mut self) -> Option<Result<WebSocket>> {
        if self.finished {
            return None;
        }
        if let Some(opened) = self.opened_at.take() {
            let uptime = opened.elapsed();
            let code = self.watch.take().and_then(|w| w.peer_code());
            let policy = &self.settings.policy;
            let after = policy.after_close(uptime, code, self.step, rand::random());
            let delay = after.delay();
            if after.is_failure() {
                self.step = self.step.saturating_add(1);
            } else {
                self.step = 0;
                self.spread_rest = Some(policy.reconnect_delay.saturating_sub(delay));
            }
            match after {
                AfterClose::ShortLived(_) => {
                    self.emit(&ReconnectEvent::ShortLived { uptime, delay });
                }
                _ if delay.is_zero() && !after.is_failure() => {}
                _ => self.emit(&ReconnectEvent::Closed {
                    uptime,
                    code,
                    delay,
                }),
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.request.attempt = attempt;
            let prepared = match &self.settings.before_attempt {
                Some(hook) => hook(self.request.clone()).await,
                None => Ok(self.request.clone()),
            };
            let result = match prepared {
                Ok(request) => {
                    self.request = request;
                    self.emit(&ReconnectEvent::Connecting {
                        attempt,
                        url: &self.request.url,
                    });
                    self.settings
                        .builder
                        .connect_to(&self.request.url, &self.request.headers)
                        .await
                }
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(mut ws) => {
                    self.emit(&ReconnectEvent::Open {
                        attempt,
                        subprotocol: ws.subprotocol(),
                    });
                    self.opened_at = Some(Instant::now());
                    self.spread_rest = None;
                    let watch = Arc::new(CloseSignal::default());
                    ws.set_close_signal(Arc::clone(&watch));
                    self.watch = Some(watch);
                    self.failing_since = None;
                    self.previous_delay = None;
                    self.request.previous_status = None;
                    return Some(Ok(ws));
                }
                Err(e) => e,
            };
            let since = *self.failing_since.get_or_insert_with(Instant::now);
            let ctx = AttemptContext {
                attempt,
                elapsed: since.elapsed(),
                previous_delay: self.previous_delay,
            };
            self.request.previous_status = error.status();
            let policy = &self.settings.policy;
            let outcome = match self.spread_rest.take() {
                // Only set by a spread, which restarts the schedule: this is step 0.
                Some(rest) => policy.on_failure_after_spread(
                    &error,
                    &ctx,
                    rest,
                    rand::random(),
                    SystemTime::now(),
                ),
                _ => policy.on_failure(&error, &ctx, self.step, rand::random(), SystemTime::now()),
            };
            let fatal = match outcome {
                Outcome::Retry(delay) => {
                    self.emit(&ReconnectEvent::Retry {
                        attempt,
                        delay,
                        error: &error,
                    });
                    self.step = self.step.saturating_add(1);
                    self.previous_delay = Some(delay);
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Outcome::Fatal => error,
                Outcome::FatalWith(e) => e,
                Outcome::Exhausted => Error::AttemptsExhausted {
                    attempts: attempt,
                    last: Box::new(error),
                },
            };
            self.emit(&ReconnectEvent::Fatal {
                attempt,
                error: &fatal,
            });
            self.finished = true;
            return Some(Err(fatal));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_first_retry_after_a_spread_falls_in_the_window_after_it() {
        let p = Policy::default();
        // Attempt made 0.25 s into the 1 s spread, so 0.75 s of it was left: the retry lands
        // 1 s after the drop at the earliest and 1 s + 3.1 s at the latest.
        assert_eq!(p.first_retry_after_spread(secs(0.75), 0.0), secs(0.75));
        assert_eq!(p.first_retry_after_spread(secs(0.75), 0.5), secs(2.3));
        assert_eq!(p.first_retry_after_spread(secs(0.75), 1.0), secs(3.85));
        assert_eq!(p.first_retry_after_spread(secs(0.0), 1.0), secs(3.1));
        // Every such wait is within the backoff's first bound [0, initial].
        for rest in [0.0, 0.3, 1.0] {
            for r in [0.0, 0.4, 0.999] {
                assert!(p.first_retry_after_spread(secs(rest), r) <= secs(5.0));
            }
        }
        // A rest longer than the spread (not made by the loop) is held to the spread.
        assert_eq!(p.first_retry_after_spread(secs(9.0), 0.0), secs(1.0));
        // A 2 s spread leaves a 3 s window within the 5 s bound.
        let two = Policy::default().reconnect_delay(secs(2.0));
        assert_eq!(two.first_retry_after_spread(secs(0.5), 0.5), secs(2.0));
        // A 3 s spread would leave 2 s, denser than the spread: Python's plain first wait.
        let three = Policy::default().reconnect_delay(secs(3.0));
        assert_eq!(three.first_retry_after_spread(secs(0.5), 0.5), secs(2.5));
        // No spread: Python's plain first wait.
        let none = Policy::default().reconnect_delay(Duration::ZERO);
        assert_eq!(
            none.first_retry_after_spread(Duration::ZERO, 0.5),
            secs(2.5)
        );
        // The hook and Retry-After apply on top, as for any first retry.
        let floor = p.on_failure_after_spread(
            &status(503, &[("retry-after", "7")]),
            &ctx(1),
            secs(0.5),
            0.0,
            UNIX_EPOCH,
        );
        assert_eq!(retry_delay(floor), Some(secs(7.0)));
        let plain =
            p.on_failure_after_spread(&status(503, &[]), &ctx(1), secs(0.5), 0.0, UNIX_EPOCH);
        assert_eq!(retry_delay(plain), Some(secs(0.5)));
        let fatal =
            p.on_failure_after_spread(&status(401, &[]), &ctx(1), secs(0.5), 0.0, UNIX_EPOCH);
        assert!(matches!(fatal, Outcome::Fatal));
    }

    #[test]
    fn after_close_spreads_a_long_connection_and_backs_off_on_1013_or_short_ones() {
        let p = Policy::default();
        let long = secs(60.0);
        // The spread: uniform in [0, 1 s] by default, the backoff restarts.
        assert_eq!(
            p.after_close(long, Some(1012), 3, 0.0),
            AfterClose::Spread(secs(0.0))
        );
        assert_eq!(
            p.after_close(long, Some(1012), 3, 0.25),
            AfterClose::Spread(secs(0.25))
        );
        assert_eq!(
            p.after_close(long, None, 0, 0.999),
            AfterClose::Spread(secs(0.999))
        );
        assert!(!p.after_close(long, Some(1001), 0, 0.5).is_failure());
        // Configurable; zero reconnects at once.
        let wide = Policy::default().reconnect_delay(secs(10.0));
        assert_eq!(
            wide.after_close(long, Some(1012), 0, 0.5).delay(),
            secs(5.0)
        );
        let none = Policy::default().reconnect_delay(Duration::ZERO);
        assert_eq!(
            none.after_close(long, Some(1012), 0, 0.7).delay(),
            Duration::ZERO
        );
        // 1013 is a failure at the backoff's step, however long the connection lasted.
        let later = p.after_close(long, Some(1013), 1, 0.5);
        assert_eq!(later, AfterClose::TryAgainLater(secs(3.1)));
        assert!(later.is_failure());
        assert_eq!(p.after_close(long, Some(1013), 0, 0.5).delay(), secs(2.5));
        // Shorter than the minimum uptime: a failure too.
        let short = p.after_close(secs(1.0), Some(1012), 1, 0.5);
        assert_eq!(short, AfterClose::ShortLived(secs(3.1)));
    }

    fn status(code: u16, headers: &[(&str, &str)]) -> Error {
        let mut h = crate::Headers::new();
        for (n, v) in headers {
            h.push(*n, v.as_bytes().to_vec());
        }
        Error::Status(Box::new(crate::Response {
            status: code,
            reason: tether_proto::handshake::reason_phrase(code).to_owned(),
            headers: h,
            body: Vec::new(),
            body_truncated: false,
        }))
    }

    fn ctx(attempt: u32) -> AttemptContext {
        AttemptContext {
            attempt,
            elapsed: Duration::ZERO,
            previous_delay: None,
        }
    }

    fn retries(p: &Policy, e: &Error) -> bool {
        matches!(p.decide(e, &ctx(1)), Decision::Retry)
    }

    fn retry_delay(outcome: Outcome) -> Option<Duration> {
        match outcome {
            Outcome::Retry(d) => Some(d),
            _ => None,
        }
    }

    #[test]
    fn python_schedule() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::ZERO);
        assert_eq!(b.delay(0, 0.5), secs(2.5));
        assert_eq!(b.delay(1, 0.9), secs(3.1));
        let d2 = b.delay(2, 0.9).as_secs_f64();
        assert!((d2 - 3.1 * 1.618).abs() < 1e-9, "{d2}");
        let d5 = b.delay(5, 0.0).as_secs_f64();
        assert!((d5 - 3.1 * 1.618f64.powi(4)).abs() < 1e-9, "{d5}");
        // 3.1 * 1.618^8 = 146 > 90: capped.
        assert_eq!(b.delay(9, 0.3), secs(90.0));
        assert_eq!(b.delay(u32::MAX, 0.3), secs(90.0));
    }

    #[test]
    fn full_jitter_scales_every_wait() {
        let b = Backoff {
            jitter: Jitter::Full,
            ..Backoff::default()
        };
        assert_eq!(b.delay(1, 0.5), secs(1.55));
        assert_eq!(b.delay(20, 0.25), secs(22.5));
        assert_eq!(b.delay(20, 0.0), Duration::ZERO);
    }

    #[test]
    fn default_table() {
        let p = Policy::default();
        let io = |k| Error::Io(std::io::Error::from(k));
        assert!(retries(&p, &io(std::io::ErrorKind::ConnectionRefused)));
        assert!(retries(&p, &io(std::io::ErrorKind::ConnectionReset)));
        assert!(retries(&p, &Error::Timeout(crate::Phase::Handshake)));
        assert!(retries(&p, &Error::Eof));
        for code in [500, 502, 503, 504] {
            assert!(retries(&p, &status(code, &[])), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 429, 501, 505] {
            assert!(!retries(&p, &status(code, &[])), "{code}");
        }
        let invalid = Error::InvalidResponse {
            reason: "x".into(),
            response: None,
        };
        assert!(!retries(&p, &invalid));
        assert!(!retries(&p, &Error::InvalidUri("x".into())));
        let too_many = Error::Redirect(crate::RedirectError::TooMany { max: 10 });
        assert!(!retries(&p, &too_many));
        let bad_cert = Error::Tls(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert!(bad_cert.is_certificate_error());
        assert!(!retries(&p, &bad_cert));
        let tls_reset = Error::Tls(std::io::ErrorKind::ConnectionReset.into());
        assert!(retries(&p, &tls_reset));
        let proxy = |status, io: bool| {
            Error::Proxy(crate::ProxyError {
                status,
                io: io.then(|| std::io::ErrorKind::ConnectionRefused.into()),
                ..crate::ProxyError::new("")
            })
        };
        assert!(retries(&p, &proxy(None, true)));
        assert!(retries(&p, &proxy(Some(502), false)));
        assert!(!retries(&p, &proxy(Some(407), false)));
        // SOCKS5 replies: the path is down (retry) or the proxy says no (fatal); a refused
        // user name and password has no reply code and no I/O error: fatal.
        let socks = |code| {
            Error::Proxy(crate::ProxyError {
                socks_reply: Some(code),
                ..crate::ProxyError::new("")
            })
        };
        for code in [1, 3, 4, 5, 6] {
            assert!(retries(&p, &socks(code)), "SOCKS reply {code}");
        }
        for code in [2, 7, 8, 9] {
            assert!(!retries(&p, &socks(code)), "SOCKS reply {code}");
        }
        assert!(!retries(
            &p,
            &Error::Proxy(crate::ProxyError::new("bad credentials"))
        ));
        let protocol = Error::Protocol(tether_proto::ProtocolError::ReservedBits);
        assert!(!retries(&p, &protocol));
    }

    #[test]
    fn rules_and_hook_refine_the_table() {
        let p = Policy::default()
            .retry_on_status(429)
            .fatal_on_status(503)
            .fatal_on_kind(ErrorKind::Timeout);
        assert!(retries(&p, &status(429, &[])));
        assert!(!retries(&p, &status(503, &[])));
        assert!(retries(&p, &status(502, &[])));
        assert!(!retries(&p, &Error::Timeout(crate::Phase::Connect)));
        // The latest rule for a status wins.
        let p = p.retry_on_status(503);
        assert!(retries(&p, &status(503, &[])));

        let p = Policy::default().on_error(|e, ctx| match e.status() {
            Some(401) if ctx.attempt == 1 => Decision::RetryAfter(Duration::ZERO),
            _ => Decision::Default,
        });
        let now = SystemTime::now();
        let e401 = status(401, &[]);
        let first = p.on_failure(&e401, &ctx(1), 0, 0.5, now);
        assert_eq!(retry_delay(first), Some(Duration::ZERO));
        let second = p.on_failure(&e401, &ctx(2), 1, 0.5, now);
        assert!(matches!(second, Outcome::Fatal));
        // The default still applies to everything else.
        let other = p.on_failure(&status(503, &[]), &ctx(2), 1, 0.5, now);
        assert_eq!(retry_delay(other), Some(secs(3.1)));
    }

    #[test]
    fn retry_after_sets_a_floor_under_a_cap() {
        let now = SystemTime::now();
        let p = Policy::default();
        let delay = |p: &Policy, e: &Error| retry_delay(p.on_failure(e, &ctx(2), 1, 0.0, now));
        // Backoff would wait 3.1 s; the server asked for 30.
        assert_eq!(
            delay(&p, &status(503, &[("Retry-After", "30")])),
            Some(secs(30.0))
        );
        // A floor, not a replacement: a longer backoff wait stays.
        assert_eq!(
            delay(&p, &status(503, &[("Retry-After", "1")])),
            Some(secs(3.1))
        );
        // Capped.
        let day = status(503, &[("Retry-After", "86400")]);
        assert_eq!(delay(&p, &day), Some(secs(300.0)));
        let p = p.retry_after(true, Duration::from_secs(10));
        assert_eq!(delay(&p, &day), Some(secs(10.0)));
        let p = p.retry_after(false, Duration::from_secs(10));
        assert_eq!(delay(&p, &day), Some(secs(3.1)));
        // Retry-After on a fatal status does not make it retryable.
        let e = status(401, &[("Retry-After", "5")]);
        let fatal = Policy::default().on_failure(&e, &ctx(1), 0, 0.0, now);
        assert!(matches!(fatal, Outcome::Fatal));
    }

    #[test]
    fn max_attempts_counts_failures_in_a_row() {
        let now = SystemTime::now();
        let p = Policy::default().max_attempts(Some(3));
        let e = Error::Eof;
        assert!(matches!(
            p.on_failure(&e, &ctx(1), 0, 0.0, now),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            p.on_failure(&e, &ctx(2), 1, 0.0, now),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            p.on_failure(&e, &ctx(3), 2, 0.0, now),
            Outcome::Exhausted
        ));
        // A fatal error stays fatal, whatever the count.
        let e404 = status(404, &[]);
        assert!(matches!(
            p.on_failure(&e404, &ctx(1), 0, 0.0, now),
            Outcome::Fatal
        ));
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(secs(120.0)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(secs(7.0)));
        let imf = parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now);
        assert_eq!(imf, Some(secs(60.0)));
        let rfc850 = parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now);
        assert_eq!(rfc850, Some(secs(10.0)));
        let asctime = parse_retry_after("Sun Nov  6 08:49:57 1994", now);
        assert_eq!(asctime, Some(secs(20.0)));
        // In the past: no wait.
        let past = parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now);
        assert_eq!(past, Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 25), 20_782);
    }
}
