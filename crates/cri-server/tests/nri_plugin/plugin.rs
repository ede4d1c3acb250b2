//! An NRI plugin for criusd's tests, started by criusd from its plugin
//! directory (a pre-started plugin): it takes the connection criusd hands
//! it (`NRI_PLUGIN_SOCKET`), registers under the name and index criusd
//! gives it, and at CreateContainer sets, in the container's environment,
//! `NRI_PRESTART_PLUGIN=<index>-<name>` and each `KEY=VALUE` line of the
//! configuration it received in Configure. It exits when criusd closes the
//! connection.

use std::sync::{Arc, Mutex};

use crius_nri::api;
use crius_nri::api_ttrpc;
use crius_nri::runtime::event_bit;
use crius_nri::stub::Stub;
use ttrpc::asynchronous::TtrpcContext;

struct Plugin {
    identity: String,
    config: Mutex<String>,
}

#[async_trait::async_trait]
impl api_ttrpc::Plugin for Plugin {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        eprintln!(
            "configured by {} with {} bytes of configuration",
            req.runtime_name,
            req.config.len()
        );
        *self.config.lock().unwrap() = req.config;
        Ok(api::ConfigureResponse {
            events: event_bit(api::Event::CREATE_CONTAINER),
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        _req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        Ok(api::SynchronizeResponse::default())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        let mut adjust = api::ContainerAdjustment::new();
        let mut set = |key: &str, value: &str| {
            adjust.env.push(api::KeyValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })
        };
        set("NRI_PRESTART_PLUGIN", &self.identity);
        for line in self.config.lock().unwrap().lines() {
            if let Some((k, v)) = line.split_once('=') {
                set(k.trim(), v.trim());
            }
        }
        eprintln!("adjusted container {}", req.container.name);
        Ok(api::CreateContainerResponse {
            adjust: Some(adjust).into(),
            ..Default::default()
        })
    }
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let plugin = Arc::new(Plugin {
            identity: format!(
                "{}-{}",
                var(crius_nri::runtime::PLUGIN_IDX_ENV),
                var(crius_nri::runtime::PLUGIN_NAME_ENV)
            ),
            config: Mutex::new(String::new()),
        });
        let stub = Stub::launched(plugin)
            .await
            .map_err(|e| anyhow::anyhow!("not started as an NRI plugin: {e}"))?;
        eprintln!("registered");
        stub.closed().await;
        eprintln!("connection closed, exiting");
        Ok(())
    })
}
