//! The whole system on one machine: the emulator, every resource from
//! template.yaml, and the functions hosted in-process behind their triggers.

use crate::api_gateway::{ApiGateway, ApiRoute};
use crate::emulator::{self, Emulator};
use crate::functions::{self, API_FUNCTION};
use crate::provision::{self, ProvisionedStack};
use crate::template::Template;
use anyhow::{Context, Result};
use shared::aws::AwsClients;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the emulator comes from.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Start moto from the project venv on this port (0 picks a free one).
    Moto { venv: PathBuf, port: u16 },
    /// Use an emulator that is already running (moto, or LocalStack via AWS_ENDPOINT_URL).
    Existing { endpoint: String },
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub repo_root: PathBuf,
    pub stack_name: String,
    pub backend: Backend,
    /// 0 picks a free port.
    pub api_port: u16,
    pub jwt_secret: Vec<u8>,
}

impl StackOptions {
    /// The repository this crate was built from.
    pub fn repo_root() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .canonicalize()
            .unwrap_or_else(|_| PathBuf::from("."))
    }
}

pub struct LocalStack {
    pub emulator: Emulator,
    pub resources: ProvisionedStack,
    pub api_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalStack {
    pub async fn start(options: StackOptions) -> Result<LocalStack> {
        let emulator = match &options.backend {
            Backend::Moto { venv, port } => {
                let port = if *port == 0 {
                    emulator::free_port()
                } else {
                    *port
                };
                Emulator::start(venv, port).await?
            }
            Backend::Existing { endpoint } => Emulator::attach(endpoint).await?,
        };
        let sdk = emulator::sdk_config(&emulator.endpoint).await;
        let template = Template::load(&options.repo_root.join("template.yaml"))?;
        let resources = provision::provision(&template, &sdk, &options.stack_name)
            .await
            .context("provisioning template.yaml on the emulator")?;
        let clients = AwsClients::new(&sdk);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let api_spec = resources
            .function(API_FUNCTION)
            .with_context(|| format!("template.yaml has no {API_FUNCTION}"))?;
        let gateway = Arc::new(ApiGateway::new(
            ApiRoute::from_events(&api_spec.events),
            functions::api_handler(api_spec, &clients)?,
            options.jwt_secret.clone(),
        ));
        let listener = TcpListener::bind(("127.0.0.1", options.api_port))
            .await
            .with_context(|| format!("binding the API to 127.0.0.1:{}", options.api_port))?;
        let api_addr = listener.local_addr()?;
        tasks.push(tokio::spawn(gateway.serve(listener, shutdown_rx.clone())));

        Ok(LocalStack {
            emulator,
            resources,
            api_addr,
            shutdown,
            tasks,
        })
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Stops the hosted functions, then the emulator if this stack started it.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.emulator.stop().await;
    }
}
