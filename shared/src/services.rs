//! Wires adapters to use cases. Every function builds `Services` once per cold
//! start (from its environment) and uses the parts it needs.

use crate::aws::AwsClients;
use crate::config::{Config, FairShare};
use crate::executors::egress::EgressPolicy;
use crate::executors::ExecutorRegistry;
use crate::ports::SchedulingIndex;
use crate::service::{
    AgentService, BatchPreparer, BatchRunner, BatchService, ChainRunner, Ports, QueueOverview,
    Sweeper, TaskRunner, TaskService,
};
use crate::store::{
    DynamoAgentStore, DynamoBatchStore, DynamoSchedulingIndex, DynamoTaskStore,
    S3AttachmentStorage, S3ObjectStore, SfnOrchestrator, SqsDispatcher, SqsPreparations,
};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Services {
    pub tasks: TaskService,
    pub agents: AgentService,
    pub queues: QueueOverview,
    pub runner: TaskRunner,
    pub chains: ChainRunner,
    pub batches: BatchService,
    pub batch_preparer: BatchPreparer,
    pub batch_runner: BatchRunner,
    pub sweeper: Sweeper,
}

impl Services {
    /// The production wiring: DynamoDB, S3, SQS and Step Functions.
    pub fn new(config: &Config, clients: &AwsClients) -> Self {
        let table = &config.table_name;
        let ports = Ports {
            store: Arc::new(
                DynamoTaskStore::new(clients.dynamodb.clone(), table)
                    .with_open_task_limit(config.quotas.open_tasks),
            ),
            attachments: Arc::new(S3AttachmentStorage::new(
                clients.s3.clone(),
                &config.attachments_bucket,
            )),
            dispatcher: Arc::new(SqsDispatcher::new(
                clients.sqs.clone(),
                config.queue_urls.clone(),
                config.dlq_urls.clone(),
            )),
            agents: Arc::new(DynamoAgentStore::new(clients.dynamodb.clone(), table)),
            orchestrator: Arc::new(SfnOrchestrator::new(
                clients.sfn.clone(),
                &config.chain_state_machine_arn,
            )),
            batches: Arc::new(
                DynamoBatchStore::new(clients.dynamodb.clone(), table)
                    .with_daily_item_limit(config.quotas.batch_items_per_day),
            ),
            objects: Arc::new(S3ObjectStore::new(clients.s3.clone(), &config.batch_bucket)),
            batch_orchestrator: Arc::new(SfnOrchestrator::new(
                clients.sfn.clone(),
                &config.batch_state_machine_arn,
            )),
            preparations: Arc::new(SqsPreparations::new(
                clients.sqs.clone(),
                &config.batch_preparation_queue_url,
            )),
        };
        let index = Arc::new(DynamoSchedulingIndex::new(clients.dynamodb.clone(), table));
        let executors = ExecutorRegistry::builtin_with(EgressPolicy::from_config(config));
        if config.fair_share == FairShare::SqsFairQueues {
            // SQS's fair queues share each tier by the messages' MessageGroupId; nothing here.
            return Self::from_ports(ports, index, executors, config);
        }
        // Fair share inside each tier: dispatches stamp their agency's demand, and task runs,
        // chain steps and batch chunks hold each agency to its tier's in-flight cap while
        // another agency waits.
        let slots = crate::store::dynamo::DynamoInFlightSlots::new(clients.dynamodb.clone(), table);
        let fairness =
            crate::service::fairness::Fairness::new(Arc::new(slots), config.in_flight_caps.clone());
        let mut ports = ports;
        let stamping: Arc<dyn crate::ports::Dispatcher> =
            Arc::new(crate::service::fairness::DemandStampingDispatcher::new(
                ports.dispatcher,
                fairness.clone(),
            ));
        // And each agency has at most a window of task runs in a tier's queue; the rest wait
        // parked, so another agency's work is never queued behind a whole flood.
        let pacing = crate::service::pacing::Pacing::new(
            Arc::new(crate::store::dynamo::DynamoDispatchWindow::new(
                clients.dynamodb.clone(),
                table,
            )),
            config.dispatch_windows.clone(),
            stamping.clone(),
        );
        ports.dispatcher = Arc::new(crate::service::pacing::PacedDispatcher::new(
            pacing.clone(),
            stamping,
        ));
        let mut services = Self::from_ports(ports, index, executors, config);
        services.chains.fairness = Some(fairness.clone());
        services.batch_runner.fairness = Some(fairness.clone());
        services.sweeper.fairness = Some(fairness.clone());
        services.sweeper.pacing = Some(pacing.clone());
        services.runner = services.runner.with_fairness(fairness).with_pacing(pacing);
        services
    }

    pub fn from_ports(
        ports: Ports,
        index: Arc<dyn SchedulingIndex>,
        executors: ExecutorRegistry,
        config: &Config,
    ) -> Self {
        let lease = Duration::from_secs(config.lease_seconds);
        let executors = executors.with_run_limit(crate::service::runner::run_limit(lease));
        let tasks = TaskService::new(ports.clone(), executors.clone());
        Self {
            agents: AgentService::new(ports.agents.clone()),
            queues: QueueOverview {
                dispatcher: ports.dispatcher.clone(),
                index: index.clone(),
            },
            chains: ChainRunner {
                store: ports.store.clone(),
                orchestrator: ports.orchestrator.clone(),
                executors: executors.clone(),
                lease,
                fairness: None,
            },
            batches: BatchService {
                tasks: ports.store.clone(),
                batches: ports.batches.clone(),
                objects: ports.objects.clone(),
                preparations: ports.preparations.clone(),
                executors: executors.clone(),
            },
            batch_preparer: BatchPreparer {
                tasks: ports.store.clone(),
                batches: ports.batches.clone(),
                objects: ports.objects.clone(),
                dispatcher: ports.dispatcher.clone(),
                orchestrator: ports.batch_orchestrator.clone(),
                preparations: ports.preparations.clone(),
            },
            batch_runner: BatchRunner {
                tasks: ports.store.clone(),
                batches: ports.batches.clone(),
                objects: ports.objects.clone(),
                orchestrator: ports.batch_orchestrator.clone(),
                executors: executors.clone(),
                fairness: None,
            },
            runner: TaskRunner::new(ports.store.clone(), executors, lease),
            sweeper: Sweeper {
                store: ports.store.clone(),
                index,
                dispatcher: ports.dispatcher.clone(),
                agents: ports.agents.clone(),
                tasks: tasks.clone(),
                aging_fraction: config.aging_fraction,
                batches: ports.batches.clone(),
                batch_orchestrator: ports.batch_orchestrator.clone(),
                preparations: ports.preparations.clone(),
                fairness: None,
                pacing: None,
            },
            tasks,
        }
    }
}

/// The schedule use cases over DynamoDB and EventBridge Scheduler (the API and the schedule
/// runner; without `SCHEDULE_*` settings the trigger refuses changes with a 503).
pub fn schedule_service(
    config: &Config,
    clients: &AwsClients,
    settings: crate::service::schedules::ScheduleSettings,
    tasks: TaskService,
) -> crate::service::ScheduleService {
    let trigger: Arc<dyn crate::ports::ScheduleTrigger> = match settings.target {
        Some(target) => Arc::new(crate::store::EventBridgeScheduler::new(
            clients.scheduler.clone(),
            target,
        )),
        None => Arc::new(crate::service::schedules::Unconfigured),
    };
    crate::service::ScheduleService {
        store: Arc::new(crate::store::dynamo::DynamoScheduleStore::new(
            clients.dynamodb.clone(),
            &config.table_name,
        )),
        trigger,
        tasks,
        limit: settings.limit,
    }
}
