//! Label children resolved once. A `MetricVec` looks a child up by hashing its label values
//! under a lock; on the request path that is avoidable work, so each family keeps a fixed table
//! of slots (route × method × status, say) whose child is resolved on first use and then read
//! with one atomic load.
//!
//! Children are created lazily rather than up front so that the scrape only carries series that
//! have happened: pre-creating every route × method × status would export thousands of zeros.

use std::sync::OnceLock;

use prometheus::core::{MetricVec, MetricVecBuilder};

/// A labelled family: `IntCounterVec`, `HistogramVec`, ….
pub(crate) trait Family {
    type Child;
    fn child(&self, labels: &[&str]) -> prometheus::Result<Self::Child>;
}

impl<T: MetricVecBuilder> Family for MetricVec<T> {
    type Child = T::M;
    fn child(&self, labels: &[&str]) -> prometheus::Result<T::M> {
        self.get_metric_with_label_values(labels)
    }
}

pub(crate) struct Children<V: Family> {
    vec: V,
    cells: Box<[OnceLock<V::Child>]>,
}

impl<V: Family> Children<V> {
    pub(crate) fn new(vec: V, slots: usize) -> Self {
        Self {
            vec,
            cells: (0..slots).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The child in `slot`; `labels` is called only the first time the slot is used.
    /// `None` only for a slot out of range or label values of the wrong arity (wiring bugs,
    /// which the unit tests rule out); callers then skip the observation.
    pub(crate) fn get<const N: usize>(
        &self,
        slot: usize,
        labels: impl FnOnce() -> [&'static str; N],
    ) -> Option<&V::Child> {
        let cell = self.cells.get(slot)?;
        if let Some(m) = cell.get() {
            return Some(m);
        }
        let m = self.vec.child(&labels()).ok()?;
        Some(cell.get_or_init(|| m))
    }

    /// A child outside the slot table, through the vec's own map (rare label values).
    pub(crate) fn lookup(&self, labels: &[&str]) -> Option<V::Child> {
        self.vec.child(labels).ok()
    }
}
