//! The whole system on one machine: the emulator, every resource from
//! template.yaml, and the functions hosted in-process behind their triggers.

use crate::api_gateway::{ApiGateway, ApiRoute};
use crate::emulator::{self, Emulator, Endpoints, LocalStackServer};
use crate::functions::{self, FunctionHost, API_FUNCTION};
use crate::iam;
use crate::intrinsics::MapScope;
use crate::limits::LimitViolations;
use crate::provision::{self, FunctionEvent, ProvisionedStack};
use crate::runtime::FunctionRuntime;
use crate::scheduler;
use crate::schedules::{self, LocalScheduler};
use crate::sqs_poller::{self, EventSourceMapping};
use crate::stream_poller::{self, StreamStats};
use crate::template::Template;
use anyhow::{Context, Result};
use shared::aws::AwsClients;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The schedule runner, which the host fires schedules at.
pub const SCHEDULE_RUNNER_FUNCTION: &str = "ScheduleRunnerFunction";
/// How often the host looks for due firings (Scheduler's precision is a minute).
const SCHEDULE_TICK: Duration = Duration::from_secs(5);

/// An IAM user per function holding its template policies (see [`crate::iam`]), by logical id.
async fn function_identities(
    template: &Template,
    resources: &ProvisionedStack,
    sdk: &aws_config::SdkConfig,
    repo_root: &std::path::Path,
    venv: Option<&std::path::Path>,
) -> Result<BTreeMap<String, iam::AccessKey>> {
    let templates = iam::PolicyTemplates::from_venv(&iam::venv_for(repo_root, venv))?;
    let scope = MapScope {
        refs: resources.refs.clone(),
        attributes: resources.attributes.clone(),
        ..Default::default()
    };
    let mut policies = BTreeMap::new();
    for logical_id in resources.functions.keys() {
        let function = template
            .resource(logical_id)
            .with_context(|| format!("{logical_id} is not in the template"))?;
        policies.insert(
            logical_id.clone(),
            iam::function_policies(function, &scope, &templates)?,
        );
    }
    let keys = iam::create_function_users(
        &aws_sdk_iam::Client::new(sdk),
        &resources.stack_name,
        &policies,
    )
    .await?;
    tracing::info!(
        functions = keys.len(),
        "each function signs with its own IAM user; the emulator checks its policies"
    );
    Ok(keys)
}

/// Concurrent batches for an SQS event without `ScalingConfig.MaximumConcurrency`.
const DEFAULT_LOCAL_CONCURRENCY: u32 = 5;

/// Where the emulator comes from.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Start moto from the project venv on this port (0 picks a free one).
    Moto { venv: PathBuf, port: u16 },
    /// Use an emulator that is already running (moto, or LocalStack via AWS_ENDPOINT_URL).
    Existing { endpoint: String },
    /// DynamoDB on moto (started from `moto_venv` on a free port); SQS, Step Functions and S3
    /// on LocalStack. Each SDK client gets its service's endpoint.
    Hybrid {
        moto_venv: PathBuf,
        localstack: LocalStackSource,
    },
    /// A hybrid that is already running: DynamoDB on moto at `moto`, SQS, Step Functions and
    /// S3 on LocalStack at `localstack`.
    ExistingHybrid { moto: String, localstack: String },
}

/// Where the LocalStack of a [`Backend::Hybrid`] comes from.
#[derive(Debug, Clone)]
pub enum LocalStackSource {
    /// Start LocalStack's host runtime from this venv (`make venv-localstack`) on a free port.
    Start { venv: PathBuf },
    /// Use a LocalStack that is already running (e.g. `docker run -p 4566:4566 localstack/localstack`).
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
    /// Template parameter values, as `sam deploy --parameter-overrides` gives them.
    pub parameter_overrides: Vec<(String, String)>,
    /// In-process handlers, or each function's binary under the local Lambda runtime.
    pub functions: FunctionHost,
    /// How long the local API Gateway waits for the API function before answering 504:
    /// [`crate::api_gateway::INTEGRATION_TIMEOUT`] (29 s, as on AWS) unless a test needs more.
    pub api_timeout: Duration,
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
    /// moto (or the emulator at `AWS_ENDPOINT_URL`): every service, or DynamoDB only in the hybrid.
    pub emulator: Emulator,
    /// The hybrid's LocalStack (SQS, Step Functions, S3).
    pub localstack: Option<LocalStackServer>,
    /// The endpoint of each service, as the hosted functions' clients use them.
    pub endpoints: Endpoints,
    pub resources: ProvisionedStack,
    pub api_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Each function's execution environments, when they run as processes.
    runtimes: std::collections::HashMap<String, FunctionRuntime>,
    violations: LimitViolations,
    stream_stats: Arc<StreamStats>,
    /// Fires the schedules the API created (when the template has the schedule runner).
    schedules: Option<Arc<LocalScheduler>>,
}

impl LocalStack {
    pub async fn start(options: StackOptions) -> Result<LocalStack> {
        let (emulator, localstack) = match &options.backend {
            Backend::Moto { venv, port } => {
                let port = if *port == 0 {
                    emulator::free_port()
                } else {
                    *port
                };
                (Emulator::start(venv, port).await?, None)
            }
            Backend::Existing { endpoint } => (Emulator::attach(endpoint).await?, None),
            Backend::Hybrid {
                moto_venv,
                localstack,
            } => {
                let localstack = async {
                    match localstack {
                        LocalStackSource::Start { venv } => {
                            LocalStackServer::start(venv, emulator::free_port()).await
                        }
                        LocalStackSource::Existing { endpoint } => {
                            LocalStackServer::attach(endpoint).await
                        }
                    }
                };
                let (moto, localstack) = tokio::try_join!(
                    Emulator::start_for_dynamodb(moto_venv, emulator::free_port()),
                    localstack
                )?;
                (moto, Some(localstack))
            }
            Backend::ExistingHybrid { moto, localstack } => {
                let (moto, localstack) =
                    tokio::try_join!(Emulator::attach(moto), LocalStackServer::attach(localstack))?;
                (moto, Some(localstack))
            }
        };
        let endpoints = match &localstack {
            Some(localstack) => Endpoints::hybrid(&emulator.endpoint, &localstack.endpoint),
            None => Endpoints::single(&emulator.endpoint),
        };
        let sdk = emulator::sdk_config_for(&endpoints).await;
        let mut template = Template::load(&options.repo_root.join("template.yaml"))?;
        for (name, value) in &options.parameter_overrides {
            template.override_parameter(name, value)?;
        }
        let resources = provision::provision(&template, &sdk, &options.stack_name)
            .await
            .context("provisioning template.yaml on the emulator")?;
        let clients = AwsClients::new(&sdk);
        let credentials = match (&options.functions, &localstack) {
            // Function processes on moto alone: each gets its own identity, checked by moto.
            (FunctionHost::Processes { .. }, None) if emulator.is_moto() => {
                let venv = match &options.backend {
                    Backend::Moto { venv, .. } => Some(venv.as_path()),
                    _ => None,
                };
                function_identities(&template, &resources, &sdk, &options.repo_root, venv)
                    .await
                    .context("creating each function's IAM identity on the emulator")?
            }
            _ => Default::default(),
        };

        let (shutdown, shutdown_rx) = watch::channel(false);
        let violations = LimitViolations::default();
        let mut tasks = Vec::new();
        let stream_stats = Arc::new(StreamStats::default());
        let api_spec = resources
            .function(API_FUNCTION)
            .with_context(|| format!("template.yaml has no {API_FUNCTION}"))?;
        // One pool of execution environments per function, shared by all its event sources.
        let mut runtimes: std::collections::HashMap<String, FunctionRuntime> = Default::default();
        let api_invoke = match &options.functions {
            FunctionHost::InProcess => functions::api_handler(api_spec, &clients)?,
            FunctionHost::Processes { binaries } => {
                // A longer gateway wait (tests only) lengthens the API function's Timeout too.
                let mut config = functions::function_config(
                    api_spec,
                    binaries,
                    &endpoints,
                    credentials.get(&api_spec.logical_id),
                )?;
                config.timeout = config.timeout.max(options.api_timeout);
                let runtime = FunctionRuntime::new(config);
                runtimes.insert(api_spec.logical_id.clone(), runtime.clone());
                functions::api_process_handler(runtime, options.api_timeout)
            }
        };
        let mut runtime_of = |spec: &crate::provision::FunctionSpec,
                              binaries: &std::path::Path|
         -> Result<FunctionRuntime> {
            if let Some(runtime) = runtimes.get(&spec.logical_id) {
                return Ok(runtime.clone());
            }
            let runtime = functions::runtime_for(
                spec,
                binaries,
                &endpoints,
                credentials.get(&spec.logical_id),
            )?;
            runtimes.insert(spec.logical_id.clone(), runtime.clone());
            Ok(runtime)
        };
        let gateway = Arc::new(ApiGateway::new(
            ApiRoute::from_events(&api_spec.events),
            api_invoke,
            options.jwt_secret.clone(),
        ));
        let listener = TcpListener::bind(("127.0.0.1", options.api_port))
            .await
            .with_context(|| format!("binding the API to 127.0.0.1:{}", options.api_port))?;
        let api_addr = listener.local_addr()?;
        tasks.push(tokio::spawn(gateway.serve(listener, shutdown_rx.clone())));

        // Every other function, wired by its template events.
        for spec in resources.functions.values() {
            for event in &spec.events {
                match (spec.logical_id.as_str(), event) {
                    (
                        name,
                        FunctionEvent::Sqs {
                            queue_url,
                            queue_arn,
                            batch_size,
                            max_batching_window_seconds,
                            maximum_concurrency,
                            report_batch_item_failures,
                            ..
                        },
                    ) => {
                        let mapping = EventSourceMapping {
                            queue_url: queue_url.clone(),
                            queue_arn: queue_arn.clone(),
                            batch_size: *batch_size,
                            max_batching_window: Duration::from_secs(u64::from(
                                *max_batching_window_seconds,
                            )),
                            maximum_concurrency: maximum_concurrency
                                .unwrap_or(DEFAULT_LOCAL_CONCURRENCY),
                            report_batch_item_failures: *report_batch_item_failures,
                        };
                        let handler = match (&options.functions, name) {
                            (FunctionHost::Processes { binaries }, _) => {
                                functions::sqs_process_handler(runtime_of(spec, binaries)?)
                            }
                            (_, functions::WORKER_FUNCTION) => {
                                functions::worker_handler(spec, &clients)?
                            }
                            (_, functions::BATCH_TRIGGER_FUNCTION) => {
                                functions::batch_trigger_handler(spec, &clients)?
                            }
                            (_, other) => {
                                anyhow::bail!("no local handler for {other}'s SQS event")
                            }
                        };
                        tasks.extend(sqs_poller::spawn(
                            mapping,
                            clients.sqs.clone(),
                            handler,
                            violations.clone(),
                            shutdown_rx.clone(),
                        ));
                    }
                    (
                        functions::SWEEPER_FUNCTION,
                        FunctionEvent::Schedule {
                            period: Some(period),
                            ..
                        },
                    ) => {
                        let handler = match &options.functions {
                            FunctionHost::InProcess => functions::sweeper_handler(spec, &clients)?,
                            FunctionHost::Processes { binaries } => {
                                functions::scheduled_process_handler(runtime_of(spec, binaries)?)
                            }
                        };
                        tasks.push(scheduler::spawn(*period, handler, shutdown_rx.clone()));
                    }
                    (name, FunctionEvent::DynamoDb(source)) => {
                        let handler = match (&options.functions, name) {
                            (FunctionHost::Processes { binaries }, _) => {
                                functions::stream_process_handler(runtime_of(spec, binaries)?)
                            }
                            (_, functions::EVENT_PUBLISHER_FUNCTION) => {
                                functions::event_publisher_handler(spec, &sdk)?
                            }
                            (_, other) => {
                                anyhow::bail!("no local handler for {other}'s DynamoDB event")
                            }
                        };
                        let on_failure_queue_url = source
                            .on_failure_queue_arn
                            .as_deref()
                            .and_then(|arn| resources.queue_url_by_arn(arn));
                        let mapping = stream_poller::StreamMapping {
                            source: source.clone(),
                            on_failure_queue_url,
                            stats: stream_stats.clone(),
                        };
                        tasks.push(stream_poller::spawn(
                            mapping,
                            aws_sdk_dynamodbstreams::Client::new(&sdk),
                            clients.sqs.clone(),
                            handler,
                            shutdown_rx.clone(),
                        ));
                    }
                    (_, FunctionEvent::Api { .. }) => {}
                    (name, other) => {
                        tracing::warn!(function = name, event = ?other, "no local wiring for this event")
                    }
                }
            }
        }

        // Schedules: the API creates them on the emulator (its SCHEDULE_* settings name the
        // group and the target); this host fires them, as EventBridge Scheduler would.
        let schedules = match (
            api_spec.environment.get("SCHEDULE_GROUP"),
            api_spec.environment.get("SCHEDULE_TARGET_ARN"),
            resources.function(SCHEDULE_RUNNER_FUNCTION),
        ) {
            (Some(group), Some(arn), Some(spec)) => {
                let target = match &options.functions {
                    FunctionHost::InProcess => schedules::in_process_target(spec, &clients)?,
                    FunctionHost::Processes { binaries } => {
                        schedules::process_target(runtime_of(spec, binaries)?)
                    }
                };
                let scheduler = Arc::new(LocalScheduler::new(
                    aws_sdk_scheduler::Client::new(&sdk),
                    aws_sdk_sqs::Client::new(&sdk),
                    group.clone(),
                    std::collections::HashMap::from([(arn.clone(), target)]),
                    chrono::Utc::now(),
                ));
                scheduler.create_group().await?;
                tasks.push(schedules::spawn(
                    scheduler.clone(),
                    SCHEDULE_TICK,
                    shutdown_rx.clone(),
                ));
                Some(scheduler)
            }
            _ => None,
        };

        Ok(LocalStack {
            emulator,
            localstack,
            endpoints,
            resources,
            api_addr,
            shutdown,
            tasks,
            runtimes,
            violations,
            stream_stats,
            schedules,
        })
    }

    /// The host's schedule firer (tests fire it at the time they choose, or restart it).
    pub fn schedules(&self) -> Option<&Arc<LocalScheduler>> {
        self.schedules.as_ref()
    }

    /// What the table's stream mappings have read, passed and delivered so far.
    pub fn stream_stats(&self) -> Arc<StreamStats> {
        self.stream_stats.clone()
    }

    /// AWS limits exceeded so far that the emulator let through (see [`crate::limits`]).
    pub fn limit_violations(&self) -> Vec<String> {
        self.violations.all()
    }

    /// What each function runs with, when the functions run as processes.
    pub fn function_configs(&self) -> Vec<crate::runtime::FunctionConfig> {
        let mut configs: Vec<_> = self.runtimes.values().map(|r| r.config().clone()).collect();
        configs.sort_by(|a, b| a.name.cmp(&b.name));
        configs
    }

    /// A function's execution environments (when the functions run as processes), by logical id.
    pub fn function_runtime(&self, logical_id: &str) -> Option<&FunctionRuntime> {
        self.runtimes.get(logical_id)
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// The backend for another host on this stack's emulators (the same services, attached).
    pub fn attach_backend(&self) -> Backend {
        match &self.localstack {
            Some(localstack) => Backend::ExistingHybrid {
                moto: self.emulator.endpoint.clone(),
                localstack: localstack.endpoint.clone(),
            },
            None => Backend::Existing {
                endpoint: self.emulator.endpoint.clone(),
            },
        }
    }

    /// Ends every hosted function at once, mid-work, as a crash would, and returns once all
    /// of them are gone (nothing of this host acts afterwards). The emulator keeps running, so
    /// another host can pick up where this one died.
    pub async fn kill_functions(&mut self) {
        let tasks: Vec<_> = self.tasks.drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        for runtime in self.runtimes.values() {
            runtime.shut_down();
        }
    }

    /// Stops the hosted functions, then the emulators this stack started.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        for runtime in self.runtimes.values() {
            runtime.shut_down();
        }
        if let Some(localstack) = self.localstack {
            localstack.stop().await;
        }
        self.emulator.stop().await;
    }
}
