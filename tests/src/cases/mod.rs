//! Adversarial cases against real processes: each sets up what it needs (a trained checkpoint, a
//! predictor, a trainer, an S3 server), does what a hostile or careless caller, a store that
//! lies, or a kill at the worst moment would do, and reports what it expected and what it saw.
//! The tests assert `pass`; `scripts/chaos.sh` prints them all as a table.
pub mod predictor;
pub mod trainer;

/// One case's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub case: &'static str,
    pub expected: String,
    pub observed: String,
    pub pass: bool,
}

impl Outcome {
    pub fn new(case: &'static str, expected: impl Into<String>) -> Self {
        Self {
            case,
            expected: expected.into(),
            observed: String::new(),
            pass: false,
        }
    }

    /// Records what was seen and whether it matches.
    pub fn saw(mut self, observed: impl Into<String>, pass: bool) -> Self {
        self.observed = observed.into();
        self.pass = pass;
        self
    }

    /// Panics with the whole outcome unless it passed (for tests).
    pub fn assert(&self) {
        assert!(
            self.pass,
            "{}: expected {}, observed {}",
            self.case, self.expected, self.observed
        );
    }
}

/// A markdown table of outcomes.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from("| case | expected | observed | |\n|---|---|---|---|\n");
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            o.case,
            o.expected.replace('|', "/"),
            o.observed.replace('|', "/"),
            if o.pass { "ok" } else { "FAIL" }
        ));
    }
    out
}
