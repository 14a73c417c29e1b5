//! Cloud-neutral fault injection shared by every fake: a persistent latency and a
//! FIFO program of faults, each applied to a number of requests.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// One injected misbehaviour. `count: None` means "every request until cleared".
///
/// JSON form (`POST /_fake/faults`): `{"kind":"error","code":"Throttling","count":3}`,
/// `{"kind":"status","status":503,"count":2,"retry_after":1}`, `{"kind":"timeout","count":1}`,
/// `{"kind":"garbage","count":1}`, `{"kind":"oversized","count":1}`, `{"kind":"reset","count":1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// A named upstream error code; each fake renders it in its cloud's own error shape.
    Error {
        code: String,
        #[serde(default)]
        count: Option<u32>,
    },
    /// A bare HTTP status in the fake's error shape, optionally with `Retry-After` (seconds).
    Status {
        status: u16,
        #[serde(default)]
        count: Option<u32>,
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Read the request and never answer (held for at most [`TIMEOUT_HOLD`]).
    Timeout {
        #[serde(default)]
        count: Option<u32>,
    },
    /// `200 OK` with a body the client cannot parse.
    Garbage {
        #[serde(default)]
        count: Option<u32>,
    },
    /// `200 OK` with an [`OVERSIZED_BODY`]-byte body.
    Oversized {
        #[serde(default)]
        count: Option<u32>,
    },
    /// Close the connection without writing a response.
    Reset {
        #[serde(default)]
        count: Option<u32>,
    },
}

/// How long a `timeout` fault holds a request before dropping the connection. Long enough
/// to outlast any sane client timeout, short enough that a leaked request cannot pin a test.
pub const TIMEOUT_HOLD: Duration = Duration::from_secs(120);

/// Body size of an `oversized` fault: 8 MiB, far above any credential response, so clients
/// that do not cap what they read are caught.
pub const OVERSIZED_BODY: usize = 8 * 1024 * 1024;

impl Fault {
    /// The `kind` tag, also used in request logs as `fault:<kind>`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Error { .. } => "error",
            Fault::Status { .. } => "status",
            Fault::Timeout { .. } => "timeout",
            Fault::Garbage { .. } => "garbage",
            Fault::Oversized { .. } => "oversized",
            Fault::Reset { .. } => "reset",
        }
    }

    fn count_mut(&mut self) -> &mut Option<u32> {
        match self {
            Fault::Error { count, .. }
            | Fault::Status { count, .. }
            | Fault::Timeout { count }
            | Fault::Garbage { count }
            | Fault::Oversized { count }
            | Fault::Reset { count } => count,
        }
    }
}

/// A command accepted by `POST /_fake/faults`: a [`Fault`] or `{"kind":"latency","ms":50}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultCommand {
    Latency(Duration),
    Fault(Fault),
}

impl FaultCommand {
    /// Parses one JSON object; see [`Fault`] for the shapes.
    pub fn from_json(value: serde_json::Value) -> Result<FaultCommand, serde_json::Error> {
        if value.get("kind").and_then(|k| k.as_str()) == Some("latency") {
            #[derive(Deserialize)]
            struct Latency {
                ms: u64,
            }
            let l: Latency = serde_json::from_value(value)?;
            Ok(FaultCommand::Latency(Duration::from_millis(l.ms)))
        } else {
            Ok(FaultCommand::Fault(serde_json::from_value(value)?))
        }
    }
}

#[derive(Debug, Default)]
struct State {
    latency: Duration,
    program: VecDeque<Fault>,
}

/// Shared fault state of one fake. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

impl Faults {
    pub fn new() -> Faults {
        Faults::default()
    }

    /// Appends `fault` to the program. Faults apply one at a time in the order they were
    /// set: the front one serves its `count` requests, then the next takes over. A fault
    /// with `count: None` stays at the front until [`Faults::clear`]. `count: Some(0)` is a no-op.
    pub fn set(&self, fault: Fault) {
        let mut fault = fault;
        if *fault.count_mut() == Some(0) {
            return;
        }
        self.state.lock().program.push_back(fault);
    }

    /// Sets the delay added to every non-admin request (zero disables it).
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().latency = latency;
    }

    /// Applies a parsed admin command.
    pub fn apply(&self, command: FaultCommand) {
        match command {
            FaultCommand::Latency(d) => self.set_latency(d),
            FaultCommand::Fault(f) => self.set(f),
        }
    }

    /// Removes every pending fault and the latency.
    pub fn clear(&self) {
        let mut state = self.state.lock();
        state.latency = Duration::ZERO;
        state.program.clear();
    }

    pub fn latency(&self) -> Duration {
        self.state.lock().latency
    }

    /// Consumes one occurrence of the front fault. The returned value carries the count
    /// that remained *before* this occurrence.
    pub fn take(&self) -> Option<Fault> {
        let mut state = self.state.lock();
        let front = state.program.front_mut()?;
        let taken = front.clone();
        match front.count_mut() {
            None => {}
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                state.program.pop_front();
            }
        }
        Some(taken)
    }

    /// The faults still queued, front first.
    pub fn pending(&self) -> Vec<Fault> {
        self.state.lock().program.iter().cloned().collect()
    }

    /// `{"latency_ms":..,"pending":[..]}` for `GET /_fake/faults`.
    pub fn to_json(&self) -> serde_json::Value {
        let state = self.state.lock();
        serde_json::json!({
            "latency_ms": state.latency.as_millis() as u64,
            "pending": state.program.iter().collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shapes_round_trip() {
        let cases = [
            json!({"kind":"error","code":"Throttling","count":3}),
            json!({"kind":"status","status":503,"count":2,"retry_after":1}),
            json!({"kind":"timeout","count":1}),
            json!({"kind":"garbage","count":1}),
            json!({"kind":"oversized","count":1}),
            json!({"kind":"reset","count":1}),
        ];
        for case in cases {
            let FaultCommand::Fault(f) = FaultCommand::from_json(case.clone()).unwrap() else {
                panic!("not a fault: {case}");
            };
            assert_eq!(serde_json::to_value(&f).unwrap(), case);
        }
        assert_eq!(
            FaultCommand::from_json(json!({"kind":"latency","ms":50})).unwrap(),
            FaultCommand::Latency(Duration::from_millis(50))
        );
        let f = FaultCommand::from_json(json!({"kind":"reset"})).unwrap();
        assert_eq!(f, FaultCommand::Fault(Fault::Reset { count: None }));
        assert!(FaultCommand::from_json(json!({"kind":"nope"})).is_err());
    }

    #[test]
    fn program_is_fifo_and_counted() {
        let faults = Faults::new();
        faults.set(Fault::Garbage { count: Some(2) });
        faults.set(Fault::Reset { count: Some(1) });
        faults.set(Fault::Timeout { count: Some(0) });
        assert_eq!(faults.take().unwrap().kind(), "garbage");
        assert_eq!(faults.take().unwrap().kind(), "garbage");
        assert_eq!(faults.take().unwrap().kind(), "reset");
        assert_eq!(faults.take(), None);

        faults.set(Fault::Oversized { count: None });
        for _ in 0..5 {
            assert_eq!(faults.take().unwrap().kind(), "oversized");
        }
        faults.set_latency(Duration::from_millis(5));
        let clone = faults.clone();
        clone.clear();
        assert_eq!(faults.take(), None);
        assert_eq!(faults.latency(), Duration::ZERO);
    }
}
