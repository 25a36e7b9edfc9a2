//! A watch that lists again after an error. After an error, kube-runtime's watcher resumes from
//! the last resourceVersion without listing, and nothing it yields says when it is back; a store
//! it feeds could then never be known to be in step again, and every read it would have spared
//! went to the API server for the life of the process. Started over instead, the watch lists
//! (`Init` ... `InitDone`), which says so. Each watch paces its own attempts
//! (`default_backoff`), and the controller is given no errors: it backs off all its triggers
//! together after any one's error, so watches failing at once (an API server restarting) would
//! wait out each other's back-off in turn.

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

pub fn relisting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    type Events<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;
    futures::stream::unfold(None::<Events<K>>, move |current| {
        let (api, config) = (api.clone(), config.clone());
        async move {
            let mut events = current.unwrap_or_else(|| watcher(api, config).boxed());
            let event = events.next().await?;
            // After an error the next poll starts a new watch, with a list.
            let next = event.is_ok().then_some(events);
            Some((event, next))
        }
    })
}
