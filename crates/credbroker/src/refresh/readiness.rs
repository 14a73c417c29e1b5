//! Whether a set of credentials is servable, and if not, which and why: typed, so callers
//! decide on the variant (`credbroker check` waits while everything is pending), never on text.

use std::fmt;

use super::slot::Unavailable;

/// The credentials that are not servable, each named (a role, a resource, a file) with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotReady(Vec<(String, Unavailable)>);

impl NotReady {
    pub fn new(label: impl Into<String>, why: Unavailable) -> Self {
        NotReady(vec![(label.into(), why)])
    }

    pub fn push(&mut self, label: impl Into<String>, why: Unavailable) {
        self.0.push((label.into(), why));
    }

    pub fn extend(&mut self, other: NotReady) {
        self.0.extend(other.0);
    }

    /// `Ok(())` when nothing was pushed.
    pub fn into_result(self) -> Result<(), NotReady> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// Each credential that is not servable, and why.
    pub fn reasons(&self) -> &[(String, Unavailable)] {
        &self.0
    }

    /// Whether every reason is an exchange that is running or due (waiting can help).
    pub fn is_pending(&self) -> bool {
        self.0.iter().all(|(_, why)| why.is_pending())
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (label, why)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if label.is_empty() {
                write!(f, "{why}")?;
            } else {
                write!(f, "{label}: {why}")?;
            }
        }
        Ok(())
    }
}
