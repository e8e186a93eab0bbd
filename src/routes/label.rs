//! Route labels: the one route identity that reaches metrics and logs.
//!
//! A label is a route's configured name (checked at load: `[a-z][a-z0-9_]*`, at most 32 bytes),
//! never a path, so the set of label values is the set of configured routes. Each distinct name
//! gets a small slot, process-wide, the first time a table naming it is compiled; the metrics
//! index their pre-resolved children by it. Slots are never reused, so a reloaded table that
//! renames a route cannot make one route's counters carry another's name. Distinct names are
//! capped at [`MAX_LABELS`]; the cap is what bounds the metric series.

use std::sync::{Mutex, PoisonError};

/// Most distinct route names one process labels with; one more slot is [`RouteLabel::UNMATCHED`].
pub const MAX_LABELS: usize = 64;

/// The label of a route: its name and its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteLabel {
    name: &'static str,
    slot: u8,
}

/// Label of requests that match no route.
pub const UNMATCHED: &str = "unmatched";

static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

impl RouteLabel {
    /// Requests that match no route share this label.
    pub const UNMATCHED: RouteLabel = RouteLabel {
        name: UNMATCHED,
        slot: MAX_LABELS as u8,
    };

    /// The label for `name`, given a slot the first time it is seen; `None` once
    /// [`MAX_LABELS`] distinct names have been labelled.
    pub fn intern(name: &str) -> Option<RouteLabel> {
        if name == UNMATCHED {
            return Some(Self::UNMATCHED);
        }
        let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = names.iter().position(|n| *n == name) {
            return Some(RouteLabel {
                name: names[slot],
                slot: slot as u8,
            });
        }
        if names.len() >= MAX_LABELS {
            return None;
        }
        // Leaked once per distinct name: at most MAX_LABELS short strings per process.
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.push(name);
        Some(RouteLabel {
            name,
            slot: (names.len() - 1) as u8,
        })
    }

    pub fn name(self) -> &'static str {
        self.name
    }

    /// Index in `0..=MAX_LABELS`; `MAX_LABELS` is the unmatched label.
    pub fn slot(self) -> usize {
        usize::from(self.slot)
    }

    /// The label in `slot` (as returned by [`RouteLabel::slot`]); unknown slots are unmatched.
    pub fn of_slot(slot: usize) -> &'static str {
        let names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        names.get(slot).copied().unwrap_or(UNMATCHED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_per_name_and_unmatched_apart() {
        let a = RouteLabel::intern("label_test_a").unwrap();
        let b = RouteLabel::intern("label_test_b").unwrap();
        assert_ne!(a.slot(), b.slot());
        assert_eq!(RouteLabel::intern("label_test_a").unwrap(), a);
        assert_eq!(RouteLabel::of_slot(a.slot()), "label_test_a");
        assert_eq!(RouteLabel::intern(UNMATCHED), Some(RouteLabel::UNMATCHED));
        assert_eq!(RouteLabel::of_slot(RouteLabel::UNMATCHED.slot()), UNMATCHED);
        assert!(a.slot() < MAX_LABELS);
    }
}
