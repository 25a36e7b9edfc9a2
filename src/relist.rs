//! A watch that lists again after an error. After an error, kube-runtime's watcher resumes from
//! the last resourceVersion without listing, and nothing it yields says when it is back; a store
//! it feeds could then never be known to be in step again, and every read it would have spared
//! went to the API server for the life of the process. Started over instead, the watch lists
//! (`Init` ... `InitDone`), which says so.
//!
//! Each watch paces its own attempts: after an error it waits kube-runtime's default back-off
//! (0.8 s doubling to 30 s, with jitter), reset only once a list completes, so a watch the API
//! server keeps refusing is retried ever more slowly. Consumers give the controller none of its
//! errors: the controller backs off all its triggers together after any one's error, so watches
//! failing at once (an API server restarting) would wait out each other's back-off in turn.

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, DefaultBackoff};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::time::Duration;

struct State<K> {
    events: Option<BoxStream<'static, watcher::Result<watcher::Event<K>>>>,
    backoff: DefaultBackoff,
    /// How long to wait before the next watch starts (after an error).
    wait: Option<Duration>,
}

pub fn relisting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let start = State {
        events: None,
        backoff: DefaultBackoff::default(),
        wait: None,
    };
    futures::stream::unfold(start, move |mut state| {
        let (api, config) = (api.clone(), config.clone());
        async move {
            if state.events.is_none() {
                if let Some(wait) = state.wait.take() {
                    tokio::time::sleep(wait).await;
                }
                state.events = Some(watcher::watcher(api, config).boxed());
            }
            let event = state.events.as_mut()?.next().await?;
            match &event {
                // The next poll waits, then starts a new watch, with a list.
                Err(_) => {
                    state.events = None;
                    state.wait = Some(state.backoff.next().unwrap_or(MAX_WAIT));
                }
                Ok(watcher::Event::InitDone) => state.backoff.reset(),
                Ok(_) => {}
            }
            Some((event, state))
        }
    })
}

/// Should the back-off ever end, attempts go on this far apart.
const MAX_WAIT: Duration = Duration::from_secs(30);
