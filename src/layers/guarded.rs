//! The answer of a service that either answers at once or runs its inner future while holding
//! something until that future ends (a concurrency slot, a stream's place in its connection's
//! count): one named future for both, so neither boxes an `async` block per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::Body;

/// What is held until the inner future ends, and what it does to the answer then.
pub trait Finish {
    /// Called with the inner future's answer; an error answer drops the guard instead.
    fn finish(self, res: &mut Response<Body>);
}

/// A slot of a semaphore: given back when the answer is ready.
impl Finish for OwnedSemaphorePermit {
    fn finish(self, _res: &mut Response<Body>) {}
}

/// A guard that may be absent (a pass request that asked for no upgrade).
impl<G: Finish> Finish for Option<G> {
    fn finish(self, res: &mut Response<Body>) {
        if let Some(g) = self {
            g.finish(res);
        }
    }
}

pin_project_lite::pin_project! {
    /// An answer given at once, or an inner future's with `G` held until it ends.
    #[project = GuardedProj]
    pub enum Guarded<F, G> {
        Now { res: Option<Response<Body>> },
        Later {
            #[pin]
            fut: F,
            guard: Option<G>,
        },
    }
}

impl<F, G> Guarded<F, G> {
    pub fn now(res: Response<Body>) -> Self {
        Guarded::Now { res: Some(res) }
    }

    pub fn later(fut: F, guard: G) -> Self {
        Guarded::Later {
            fut,
            guard: Some(guard),
        }
    }
}

impl<F, G, E> Future for Guarded<F, G>
where
    F: Future<Output = Result<Response<Body>, E>>,
    G: Finish,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            // Polled once more after its answer (no caller does): nothing more comes.
            GuardedProj::Now { res } => res.take().map_or(Poll::Pending, |r| Poll::Ready(Ok(r))),
            GuardedProj::Later { fut, guard } => {
                let mut out = futures_util::ready!(fut.poll(cx));
                if let (Some(g), Ok(res)) = (guard.take(), &mut out) {
                    g.finish(res);
                }
                Poll::Ready(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::FutureExt;
    use http::StatusCode;

    use super::*;

    struct Mark;

    impl Finish for Mark {
        fn finish(self, res: &mut Response<Body>) {
            *res.status_mut() = StatusCode::ACCEPTED;
        }
    }

    #[test]
    fn the_guard_finishes_an_answer_and_is_dropped_on_an_error() {
        let answer = || std::future::ready(Ok::<_, ()>(Response::new(Body::empty())));
        let res = Guarded::later(answer(), Mark)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);

        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let slot = slots.clone().try_acquire_owned().unwrap();
        let failed = std::future::ready(Err::<Response<Body>, _>("upstream"));
        assert!(Guarded::later(failed, slot)
            .now_or_never()
            .unwrap()
            .is_err());
        assert_eq!(slots.available_permits(), 1, "the slot is back");

        let now =
            Guarded::<std::future::Pending<Result<_, ()>>, Mark>::now(Response::new(Body::empty()));
        assert_eq!(
            now.now_or_never().unwrap().unwrap().status(),
            StatusCode::OK
        );
    }
}
