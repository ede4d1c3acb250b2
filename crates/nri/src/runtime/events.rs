//! The lifecycle events after CreateContainer, and Synchronize in pages.
//!
//! Each event goes to the plugins subscribed to it, in index order, each
//! call bounded by the request timeout. A plugin that does not answer in
//! time or whose connection breaks is dropped and logged, and the event
//! goes on with the next plugin. A plugin that answers with an error is
//! kept: for the events that can fail the runtime's operation
//! (RunPodSandbox, StartContainer, UpdateContainer, UpdatePodSandbox, as in
//! containerd) the first such error is returned as a [`Refusal`]; for the
//! others it is logged.

use std::future::Future;
use std::sync::Arc;

use protobuf::Message;

use super::{event_bit, CallError, Nri, Plugin};
use crate::api;
use crate::api_ttrpc;

/// A plugin answered an event with an error that fails the operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NRI plugin {plugin} refused {event}: {message}")]
pub struct Refusal {
    /// `<index>-<name>` of the plugin.
    pub plugin: String,
    /// The event (`RunPodSandbox`, ...).
    pub event: &'static str,
    /// The plugin's error.
    pub message: String,
}

/// The container updates and evictions one plugin asked for in its answer.
#[derive(Debug, Clone, Default)]
pub struct PluginUpdates {
    /// `<index>-<name>` of the plugin.
    pub plugin: String,
    /// Updates to containers' resources.
    pub update: Vec<api::ContainerUpdate>,
    /// Containers to stop.
    pub evict: Vec<api::ContainerEviction>,
}

/// What an event sent as a StateChange carries.
struct Legacy<'a> {
    pod: &'a api::PodSandbox,
    container: Option<&'a api::Container>,
}

fn pod_only(pod: &api::PodSandbox) -> Legacy<'_> {
    Legacy {
        pod,
        container: None,
    }
}

fn with_container<'a>(pod: &'a api::PodSandbox, ctr: &'a api::Container) -> Legacy<'a> {
    Legacy {
        pod,
        container: Some(ctr),
    }
}

/// The most a Synchronize message may hold, well under ttrpc's 4 MiB
/// message limit (room for the framing and the ttrpc request around it).
pub const SYNC_MESSAGE_BUDGET: usize = 3 << 20;

/// Splits the pods and containers into the pages of a Synchronize, each
/// page's pods and containers together at most `budget` bytes encoded
/// (an object bigger than that alone on its page), the pods first; one
/// page, maybe empty, at least.
pub fn sync_pages(
    pods: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
    budget: usize,
) -> Vec<(Vec<api::PodSandbox>, Vec<api::Container>)> {
    // Each repeated field costs its tag and a length prefix (<= 6 bytes).
    const OVERHEAD: usize = 6;
    let mut pages = vec![(Vec::new(), Vec::new())];
    let mut used = 0usize;
    for p in pods {
        let size = p.compute_size() as usize + OVERHEAD;
        if used > 0 && used + size > budget {
            pages.push((Vec::new(), Vec::new()));
            used = 0;
        }
        used += size;
        pages.last_mut().expect("a page").0.push(p);
    }
    for c in containers {
        let size = c.compute_size() as usize + OVERHEAD;
        if used > 0 && used + size > budget {
            pages.push((Vec::new(), Vec::new()));
            used = 0;
        }
        used += size;
        pages.last_mut().expect("a page").1.push(c);
    }
    pages
}

impl Nri {
    /// Synchronize: the pods and containers in pages (`more` on all but
    /// the last); a plugin must answer `more` to each page but the last and
    /// ask for updates only in its last answer. Returns those updates.
    pub(super) async fn synchronize(
        &self,
        label: &str,
        client: &api_ttrpc::PluginClient,
        pods: Vec<api::PodSandbox>,
        containers: Vec<api::Container>,
    ) -> Result<Vec<api::ContainerUpdate>, String> {
        let pages = sync_pages(pods, containers, SYNC_MESSAGE_BUDGET);
        let last = pages.len() - 1;
        for (i, (pods, containers)) in pages.into_iter().enumerate() {
            let more = i < last;
            let req = api::SynchronizeRequest {
                pods,
                containers,
                more,
                ..Default::default()
            };
            let resp = self
                .invoke(label, "Synchronize", client.synchronize(self.ctx(), &req))
                .await
                .map_err(|e| e.to_string())?;
            if !more {
                return Ok(resp.update);
            }
            if !resp.more || !resp.update.is_empty() {
                return Err("the plugin does not handle a Synchronize in pages".into());
            }
        }
        unreachable!("the last page returns")
    }

    /// Calls `call` on each plugin subscribed to `event`, in order. Late
    /// or disconnected plugins are dropped; an error answer is returned
    /// at once when `refusable`, else logged. A plugin without the call
    /// (UNIMPLEMENTED, an older plugin) gets the event as a StateChange
    /// when `legacy` says what to send (as in NRI); its answer is not among
    /// the answers returned.
    async fn dispatch<R, F, Fut>(
        &self,
        event: api::Event,
        name: &'static str,
        refusable: bool,
        legacy: Option<Legacy<'_>>,
        call: F,
    ) -> Result<Vec<(String, R)>, Refusal>
    where
        F: Fn(Arc<Plugin>, ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<R>>,
    {
        let bit = event_bit(event);
        let mut out = Vec::new();
        for plugin in self.list() {
            if plugin.events & bit == 0 {
                continue;
            }
            let label = plugin.label();
            let result = match self
                .invoke(&label, name, call(plugin.clone(), self.ctx()))
                .await
            {
                Ok(r) => {
                    out.push((label, r));
                    continue;
                }
                Err(CallError::Unimplemented(m)) => match &legacy {
                    Some(l) => {
                        let req = api::StateChangeEvent {
                            event: event.into(),
                            pod: Some(l.pod.clone()).into(),
                            container: l.container.cloned().into(),
                            ..Default::default()
                        };
                        tracing::debug!(plugin = %label, event = name, "NRI: an older plugin, the event sent as StateChange");
                        self.invoke(
                            &label,
                            "StateChange",
                            plugin.client.state_change(self.ctx(), &req),
                        )
                        .await
                        .map(drop)
                    }
                    None => Err(CallError::Unimplemented(m)),
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {}
                Err(CallError::Fatal(e)) => self.drop_plugin(&plugin, &format!("{name}: {e}")),
                Err(CallError::Refused(message) | CallError::Unimplemented(message))
                    if refusable =>
                {
                    tracing::warn!(plugin = %label, event = name, error = %message, "NRI plugin refused");
                    return Err(Refusal {
                        plugin: label,
                        event: name,
                        message,
                    });
                }
                Err(CallError::Refused(message) | CallError::Unimplemented(message)) => {
                    tracing::warn!(plugin = %label, event = name, error = %message, "NRI plugin failed an event");
                }
            }
        }
        Ok(out)
    }

    /// A notification: errors are logged, never returned; an older plugin
    /// gets it as a StateChange.
    async fn notify<R, F, Fut>(
        &self,
        event: api::Event,
        name: &'static str,
        legacy: Legacy<'_>,
        call: F,
    ) where
        F: Fn(Arc<Plugin>, ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<R>>,
    {
        let _ = self.dispatch(event, name, false, Some(legacy), call).await;
    }

    /// RunPodSandbox, once the pod is up; a plugin's error fails the pod.
    pub async fn run_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), Refusal> {
        let req = &api::RunPodSandboxRequest {
            pod: Some(pod.clone()).into(),
            ..Default::default()
        };
        self.dispatch(
            api::Event::RUN_POD_SANDBOX,
            "RunPodSandbox",
            true,
            Some(pod_only(pod)),
            |p, ctx| async move { p.client.run_pod_sandbox(ctx, req).await },
        )
        .await
        .map(drop)
    }

    /// UpdatePodSandbox, before a pod's resources change; an error fails it.
    pub async fn update_pod_sandbox(
        &self,
        pod: &api::PodSandbox,
        overhead: Option<api::LinuxResources>,
        resources: Option<api::LinuxResources>,
    ) -> Result<(), Refusal> {
        let req = &api::UpdatePodSandboxRequest {
            pod: Some(pod.clone()).into(),
            overhead_linux_resources: overhead.into(),
            linux_resources: resources.into(),
            ..Default::default()
        };
        self.dispatch(
            api::Event::UPDATE_POD_SANDBOX,
            "UpdatePodSandbox",
            true,
            None,
            |p, ctx| async move { p.client.update_pod_sandbox(ctx, req).await },
        )
        .await
        .map(drop)
    }

    /// PostUpdatePodSandbox, after a pod's resources changed.
    pub async fn post_update_pod_sandbox(&self, pod: &api::PodSandbox) {
        let req = &api::PostUpdatePodSandboxRequest {
            pod: Some(pod.clone()).into(),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_UPDATE_POD_SANDBOX,
            "PostUpdatePodSandbox",
            pod_only(pod),
            |p, ctx| async move { p.client.post_update_pod_sandbox(ctx, req).await },
        )
        .await
    }

    /// StopPodSandbox, once the pod's containers are stopped.
    pub async fn stop_pod_sandbox(&self, pod: &api::PodSandbox) {
        let req = &api::StopPodSandboxRequest {
            pod: Some(pod.clone()).into(),
            ..Default::default()
        };
        self.notify(
            api::Event::STOP_POD_SANDBOX,
            "StopPodSandbox",
            pod_only(pod),
            |p, ctx| async move { p.client.stop_pod_sandbox(ctx, req).await },
        )
        .await
    }

    /// RemovePodSandbox, once the pod is removed.
    pub async fn remove_pod_sandbox(&self, pod: &api::PodSandbox) {
        let req = &api::RemovePodSandboxRequest {
            pod: Some(pod.clone()).into(),
            ..Default::default()
        };
        self.notify(
            api::Event::REMOVE_POD_SANDBOX,
            "RemovePodSandbox",
            pod_only(pod),
            |p, ctx| async move { p.client.remove_pod_sandbox(ctx, req).await },
        )
        .await
    }

    /// PostCreateContainer, once the container is created.
    pub async fn post_create_container(&self, pod: &api::PodSandbox, ctr: &api::Container) {
        let req = &api::PostCreateContainerRequest {
            pod: Some(pod.clone()).into(),
            container: Some(ctr.clone()).into(),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_CREATE_CONTAINER,
            "PostCreateContainer",
            with_container(pod, ctr),
            |p, ctx| async move { p.client.post_create_container(ctx, req).await },
        )
        .await
    }

    /// StartContainer, before the container's process starts; a plugin's
    /// error fails the start.
    pub async fn start_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> Result<(), Refusal> {
        let req = &api::StartContainerRequest {
            pod: Some(pod.clone()).into(),
            container: Some(ctr.clone()).into(),
            ..Default::default()
        };
        self.dispatch(
            api::Event::START_CONTAINER,
            "StartContainer",
            true,
            Some(with_container(pod, ctr)),
            |p, ctx| async move { p.client.start_container(ctx, req).await },
        )
        .await
        .map(drop)
    }

    /// PostStartContainer, once the container runs.
    pub async fn post_start_container(&self, pod: &api::PodSandbox, ctr: &api::Container) {
        let req = &api::PostStartContainerRequest {
            pod: Some(pod.clone()).into(),
            container: Some(ctr.clone()).into(),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_START_CONTAINER,
            "PostStartContainer",
            with_container(pod, ctr),
            |p, ctx| async move { p.client.post_start_container(ctx, req).await },
        )
        .await
    }

    /// UpdateContainer, before new resources are applied to `ctr`: the
    /// plugins' updates (to `ctr` itself, which change what is applied, and
    /// to others) and evictions; a plugin's error fails the update.
    pub async fn update_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
        resources: &api::LinuxResources,
    ) -> Result<Vec<PluginUpdates>, Refusal> {
        let req = &api::UpdateContainerRequest {
            pod: Some(pod.clone()).into(),
            container: Some(ctr.clone()).into(),
            linux_resources: Some(resources.clone()).into(),
            ..Default::default()
        };
        let answers = self
            .dispatch(
                api::Event::UPDATE_CONTAINER,
                "UpdateContainer",
                true,
                None,
                |p, ctx| async move { p.client.update_container(ctx, req).await },
            )
            .await?;
        Ok(answers
            .into_iter()
            .map(|(plugin, r)| PluginUpdates {
                plugin,
                update: r.update,
                evict: r.evict,
            })
            .filter(|u| !u.update.is_empty() || !u.evict.is_empty())
            .collect())
    }

    /// PostUpdateContainer, once new resources were applied.
    pub async fn post_update_container(&self, pod: &api::PodSandbox, ctr: &api::Container) {
        let req = &api::PostUpdateContainerRequest {
            pod: Some(pod.clone()).into(),
            container: Some(ctr.clone()).into(),
            ..Default::default()
        };
        self.notify(
            api::Event::POST_UPDATE_CONTAINER,
            "PostUpdateContainer",
            with_container(pod, ctr),
            |p, ctx| async move { p.client.post_update_container(ctx, req).await },
        )
        .await
    }

    /// StopContainer, once the container has stopped: the updates to other
    /// containers the plugins asked for (errors are logged).
    pub async fn stop_container(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> Vec<PluginUpdates> {
        let req = &api::StopContainerRequest {
            pod: Some(pod.clone()).into(),
            container: Some(ctr.clone()).into(),
            ..Default::default()
        };
        let answers = self
            .dispatch(
                api::Event::STOP_CONTAINER,
                "StopContainer",
                false,
                None,
                |p, ctx| async move { p.client.stop_container(ctx, req).await },
            )
            .await
            .unwrap_or_default();
        answers
            .into_iter()
            .map(|(plugin, r)| PluginUpdates {
                plugin,
                update: r.update,
                evict: Vec::new(),
            })
            .filter(|u| !u.update.is_empty())
            .collect()
    }

    /// StopContainer once per container (until its RemoveContainer): the
    /// first caller sends it and gets the plugins' updates; a concurrent
    /// caller waits until it is sent, a later one returns at once, both
    /// with no updates. Whoever saw the container stop calls this (an
    /// exit, StopContainer, the pod's stop or removal): plugins hear of it
    /// once, and before anything that waits for it.
    pub async fn stop_container_once(
        &self,
        pod: &api::PodSandbox,
        ctr: &api::Container,
    ) -> Vec<PluginUpdates> {
        let cell = self
            .stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ctr.id.clone())
            .or_default()
            .clone();
        let mut updates = Vec::new();
        cell.get_or_init(|| async {
            updates = self.stop_container(pod, ctr).await;
        })
        .await;
        updates
    }

    /// RemoveContainer, once the container is removed.
    pub async fn remove_container(&self, pod: &api::PodSandbox, ctr: &api::Container) {
        self.stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ctr.id);
        let req = &api::RemoveContainerRequest {
            pod: Some(pod.clone()).into(),
            container: Some(ctr.clone()).into(),
            ..Default::default()
        };
        self.notify(
            api::Event::REMOVE_CONTAINER,
            "RemoveContainer",
            with_container(pod, ctr),
            |p, ctx| async move { p.client.remove_container(ctx, req).await },
        )
        .await
    }

    /// Applies plugins' updates and evictions through the runtime's
    /// [`StateSource`](super::StateSource), one plugin after the other;
    /// the updates that failed (not `ignore_failure`), by plugin.
    pub async fn apply_updates(
        &self,
        updates: Vec<PluginUpdates>,
    ) -> Vec<(String, Vec<api::ContainerUpdate>)> {
        let mut failed = Vec::new();
        for u in updates {
            let f = self
                .state
                .update_containers(u.plugin.clone(), u.update, u.evict)
                .await;
            if !f.is_empty() {
                tracing::warn!(plugin = %u.plugin, failed = f.len(), "NRI: container updates failed");
                failed.push((u.plugin, f));
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str, pad: usize) -> api::PodSandbox {
        api::PodSandbox {
            id: id.into(),
            annotations: [("pad".to_string(), "x".repeat(pad))].into(),
            ..Default::default()
        }
    }

    fn ctr(id: &str, pad: usize) -> api::Container {
        api::Container {
            id: id.into(),
            args: vec!["x".repeat(pad)],
            ..Default::default()
        }
    }

    #[test]
    fn synchronize_pages() {
        // (pods (id, padding), containers (id, padding), budget) -> the
        // ids on each page.
        type Page = (Vec<&'static str>, Vec<&'static str>);
        type Objects = Vec<(&'static str, usize)>;
        let cases: Vec<(Objects, Objects, usize, Vec<Page>)> = vec![
            (vec![], vec![], 1000, vec![(vec![], vec![])]),
            (
                vec![("p1", 10), ("p2", 10)],
                vec![("c1", 10)],
                1000,
                vec![(vec!["p1", "p2"], vec!["c1"])],
            ),
            // Each object ~ 420 bytes: two to a 1000-byte page.
            (
                vec![("p1", 400), ("p2", 400), ("p3", 400)],
                vec![("c1", 400), ("c2", 400)],
                1000,
                vec![
                    (vec!["p1", "p2"], vec![]),
                    (vec!["p3"], vec!["c1"]),
                    (vec![], vec!["c2"]),
                ],
            ),
            // Bigger than the budget: alone on its page.
            (
                vec![("p1", 10)],
                vec![("big", 5000), ("c2", 10)],
                1000,
                vec![
                    (vec!["p1"], vec![]),
                    (vec![], vec!["big"]),
                    (vec![], vec!["c2"]),
                ],
            ),
        ];
        for (i, (pods, ctrs, budget, want)) in cases.into_iter().enumerate() {
            let pages = sync_pages(
                pods.iter().map(|(id, n)| pod(id, *n)).collect(),
                ctrs.iter().map(|(id, n)| ctr(id, *n)).collect(),
                budget,
            );
            let got: Vec<(Vec<String>, Vec<String>)> = pages
                .iter()
                .map(|(p, c)| {
                    (
                        p.iter().map(|p| p.id.clone()).collect(),
                        c.iter().map(|c| c.id.clone()).collect(),
                    )
                })
                .collect();
            let want: Vec<(Vec<String>, Vec<String>)> = want
                .into_iter()
                .map(|(p, c)| {
                    (
                        p.into_iter().map(String::from).collect(),
                        c.into_iter().map(String::from).collect(),
                    )
                })
                .collect();
            assert_eq!(got, want, "case {i}");
            // Every page but one with an oversized object fits.
            for (p, c) in &pages {
                let req = api::SynchronizeRequest {
                    pods: p.clone(),
                    containers: c.clone(),
                    more: true,
                    ..Default::default()
                };
                let size = req.compute_size() as usize;
                assert!(size <= budget || p.len() + c.len() == 1, "case {i}: {size}");
            }
        }
    }
}
