use super::*;

use std::path::Path;

/// A config file in a temporary directory, valid with `AMITY_API_KEY` unset: the key is in it.
fn write(path: &Path, rate_limit: &str) {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [api_key]\nvalue = \"k\"\n[rate_limit]\n{rate_limit}\n"
    );
    crate::reload::tests::replace(path, &text);
}

fn reloader(path: &Path) -> (Reloader<Arc<Config>>, Current<Shared>) {
    let (_, config) = FileConfig::load_effective(path, &Env::default()).unwrap();
    let shared = Shared::new(config).unwrap();
    shared.metrics.config_in_use(&shared.config.hash);
    let current = Arc::new(ArcSwap::from_pointee(shared));
    let build: Build<Arc<Config>> = Box::new(|s: &Shared| s.config.clone());
    (
        Reloader::new(path.to_owned(), current.clone(), build),
        current,
    )
}

fn scraped(shared: &Shared, series: &str) -> Option<f64> {
    let text = String::from_utf8(shared.metrics.encode().1).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn a_good_file_swaps_in_keeping_the_parts_whose_settings_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    write(&path, "requests = 10");
    let (mut r, current) = reloader(&path);
    let before = current.load_full();
    let old_hash = before.config.hash.clone();

    // Same limiter and cache settings, another request budget: everything kept.
    crate::reload::tests::replace(
        &path,
        &std::fs::read_to_string(&path)
            .unwrap()
            .replace("[server]\n", "[server]\nrequest_timeout_ms = 14000\n"),
    );
    let kept = r.reload("test").unwrap();
    assert_eq!(
        kept,
        Kept {
            cache: true,
            rate_limit: true,
            api_key: true
        }
    );
    let after = current.load_full();
    assert!(Arc::ptr_eq(&before.cache, &after.cache));
    assert!(Arc::ptr_eq(
        before.rate_limit.as_ref().unwrap(),
        after.rate_limit.as_ref().unwrap()
    ));
    assert_eq!(after.config.request_timeout, Duration::from_millis(14_000));
    assert_eq!(
        r.service.load().request_timeout,
        Duration::from_millis(14_000)
    );

    // A new limit: a new limiter, the cache still kept.
    write(&path, "requests = 3");
    let kept = r.reload("test").unwrap();
    assert!(kept.cache && !kept.rate_limit);
    let now = current.load_full();
    assert!(Arc::ptr_eq(&before.cache, &now.cache));
    assert_eq!(
        now.config
            .rate_limit
            .as_ref()
            .unwrap()
            .session
            .requests
            .get(),
        3
    );
    assert_ne!(now.config.hash, old_hash);
    let info = format!("gateway_config_info{{hash=\"{}\"}}", now.config.hash);
    assert_eq!(scraped(&now, &info), Some(1.0));
    let old_info = format!("gateway_config_info{{hash=\"{old_hash}\"}}");
    assert_eq!(
        scraped(&now, &old_info),
        None,
        "only the config in use is named"
    );
    assert_eq!(
        scraped(&now, "gateway_config_reloads_total{result=\"ok\"}"),
        Some(2.0)
    );
}

/// `[cache.shared]` reloads with `[cache]`: unchanged, the cache (and its link) is kept; a new
/// Redis for it, named directly or through the limiter's URL it falls back to, is a new cache.
#[test]
fn the_shared_cache_link_is_kept_until_its_redis_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let shared = |url: &str| {
        format!(
            "requests = 10\n[rate_limit.redis]\nurl = \"{url}\"\n[cache.shared]\nenabled = true\n"
        )
    };
    write(&path, &shared("redis://127.0.0.1:1/"));
    let (mut r, current) = reloader(&path);
    let before = current.load_full();
    assert!(before.config.cache.shared.is_some());

    crate::reload::tests::replace(
        &path,
        &std::fs::read_to_string(&path)
            .unwrap()
            .replace("[server]\n", "[server]\nrequest_timeout_ms = 14000\n"),
    );
    assert!(r.reload("test").unwrap().cache);
    assert!(Arc::ptr_eq(&before.cache, &current.load_full().cache));

    write(&path, &shared("redis+sentinel://127.0.0.1:2/mymaster"));
    let kept = r.reload("test").unwrap();
    assert!(
        !kept.cache && kept.rate_limit,
        "the limiter's backend is local"
    );
    assert!(!Arc::ptr_eq(&before.cache, &current.load_full().cache));
}

#[test]
fn a_bad_file_or_a_new_listener_keeps_the_running_config_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    write(&path, "requests = 10");
    let (mut r, current) = reloader(&path);
    let running = current.load_full();

    write(&path, "request = 3");
    let err = r.reload("test").unwrap_err();
    assert!(err.contains("request"), "{err}");
    write(&path, "requests = 0");
    let err = r.reload("test").unwrap_err();
    assert!(err.contains("rate_limit.requests"), "{err}");
    std::fs::remove_file(&path).unwrap();
    assert!(r.reload("test").is_err(), "a missing file");

    write(&path, "requests = 3");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    crate::reload::tests::replace(&path, &text);
    let err = r.reload("test").unwrap_err();
    assert!(
        err.contains("server.listen (127.0.0.1:0 to 127.0.0.1:1)")
            && err.contains("server.admin_listen")
            && err.contains("restart"),
        "{err}"
    );

    let now = current.load_full();
    assert!(Arc::ptr_eq(&running, &now), "nothing was swapped");
    assert!(Arc::ptr_eq(&running.config, &r.service.load()));
    assert_eq!(
        scraped(&now, "gateway_config_reloads_total{result=\"error\"}"),
        Some(4.0)
    );
    assert_eq!(
        scraped(&now, "gateway_config_reloads_total{result=\"ok\"}"),
        Some(0.0)
    );
}

#[test]
fn every_setting_read_once_at_start_up_is_named() {
    let base = FileConfig::default()
        .resolve(&Env {
            api_key: Some("k".into()),
            ..Env::default()
        })
        .unwrap();
    let mut other = base.clone();
    other.worker_threads = 2;
    other.drain_timeout = Duration::from_secs(1);
    other.header_read_timeout = Duration::from_secs(1);
    other.log.level = "debug".into();
    other.log.format = crate::config::LogFormat::Pretty;
    let named = needs_restart(&base, &other);
    assert_eq!(
        named,
        [
            "server.worker_threads",
            "server.drain_timeout_secs",
            "server.header_read_timeout_ms",
            "log.format",
            "log.level"
        ]
    );
    let mut reloadable = base.clone();
    reloadable.request_timeout = Duration::from_secs(3);
    reloadable.max_body_bytes = 10;
    reloadable.log.access = false;
    assert!(needs_restart(&base, &reloadable).is_empty());
}

#[tokio::test]
async fn a_request_runs_on_the_service_in_use_when_it_started() {
    let service = |n: u32| tower::service_fn(move |()| async move { Ok::<_, Infallible>(n) });
    let current = Arc::new(ArcSwap::from_pointee(service(1)));
    let mut live = Live::new(current.clone());
    let started = live.call(());
    current.store(Arc::new(service(2)));
    assert_eq!(started.await.unwrap(), 1, "in flight: the old service");
    assert_eq!(
        live.call(()).await.unwrap(),
        2,
        "started after: the new one"
    );
}

/// A service that counts its clones and answers with its generation; ready only while
/// `ready` says so, and it remembers the waker of a poll that found it not ready.
#[derive(Clone)]
struct Counted {
    generation: u32,
    clones: Arc<std::sync::atomic::AtomicUsize>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    waiting: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    called_unready: Arc<std::sync::atomic::AtomicBool>,
}

impl Counted {
    fn new(generation: u32) -> Self {
        Self {
            generation,
            clones: Arc::default(),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            waiting: Arc::default(),
            called_unready: Arc::default(),
        }
    }

    fn clones(&self) -> usize {
        self.clones.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct CountedClone(Counted);

impl Clone for CountedClone {
    fn clone(&self) -> Self {
        self.0
            .clones
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CountedClone(self.0.clone())
    }
}

impl Service<()> for CountedClone {
    type Response = u32;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u32, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.0.ready.load(std::sync::atomic::Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.0.waiting.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn call(&mut self, (): ()) -> Self::Future {
        if !self.0.ready.load(std::sync::atomic::Ordering::SeqCst) {
            self.0
                .called_unready
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        std::future::ready(Ok(self.0.generation))
    }
}

#[tokio::test]
async fn a_handle_keeps_its_copy_until_a_reload() {
    let first = Counted::new(1);
    let current = Arc::new(ArcSwap::from_pointee(CountedClone(first.clone())));
    let mut live = Live::new(current.clone());
    for _ in 0..5 {
        assert_eq!(live.call(()).await.unwrap(), 1);
    }
    assert_eq!(
        first.clones(),
        1,
        "one copy for the handle, none per request"
    );

    let second = Counted::new(2);
    current.store(Arc::new(CountedClone(second.clone())));
    let mut other = live.clone();
    for _ in 0..3 {
        assert_eq!(live.call(()).await.unwrap(), 2, "a new copy after the swap");
    }
    assert_eq!(other.call(()).await.unwrap(), 2);
    assert_eq!(second.clones(), 2, "one copy for each handle");
}

#[tokio::test]
async fn a_service_not_ready_is_called_only_once_it_is() {
    use std::sync::atomic::Ordering::SeqCst;
    let s = Counted::new(7);
    s.ready.store(false, SeqCst);
    let mut svc = CountedClone(s.clone());
    let answer = tokio::spawn(call_ready(&mut svc, ()));
    // The clone that waits has registered its waker; nothing was called.
    for _ in 0..100 {
        if s.waiting.lock().unwrap().is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(!answer.is_finished());
    s.ready.store(true, SeqCst);
    if let Some(w) = s.waiting.lock().unwrap().take() {
        w.wake();
    }
    assert_eq!(answer.await.unwrap().unwrap(), 7);
    assert!(
        !s.called_unready.load(SeqCst),
        "never called while not ready"
    );
    assert_eq!(s.clones(), 1, "waited for on a clone of its own");
}
