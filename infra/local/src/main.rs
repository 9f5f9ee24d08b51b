//! `local-stack dev`: the whole system on this machine, no Docker, no AWS account.
//! `local-stack token`: a bearer token for the local API.
//! `local-stack upload`: a file dropped under uploads/<agency>/ in the batch bucket.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use local_stack::{jwt, Backend, LocalStack, StackOptions};

/// The local Taskflow stack: moto, every resource from template.yaml, and each function's
/// binary under a local Lambda runtime. No Docker, no AWS account.
///
/// Environment: AWS_ENDPOINT_URL uses an already running emulator (e.g. LocalStack) instead of
/// starting moto; LOCAL_JWT_SECRET overrides the development signing secret.
#[derive(Parser)]
#[command(name = "local-stack", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system until Ctrl-C.
    Dev {
        /// The API's port on 127.0.0.1.
        #[arg(long, env = "PORT", default_value_t = 3000)]
        port: u16,
        /// moto's port on 127.0.0.1.
        #[arg(long, env = "EMULATOR_PORT", default_value_t = 5050)]
        emulator_port: u16,
        #[arg(long, default_value = "taskflow-local")]
        stack: String,
    },
    /// Print a bearer token for the local API.
    Token {
        #[arg(long)]
        agency: String,
        #[arg(long)]
        user: String,
        /// The caller's role (manager, member, agent, ...).
        #[arg(long)]
        role: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 12 * 60 * 60)]
        ttl: i64,
    },
    /// One invocation of a function's binary against the running `dev` stack, as `sam local
    /// invoke` does: the response goes to stdout, the function's logs to stderr.
    Invoke {
        /// The function's logical id in template.yaml, e.g. ApiFunction.
        #[arg(long)]
        function: String,
        /// A JSON event file, e.g. events/api-openapi.json.
        #[arg(long)]
        event: String,
        #[arg(long, default_value = "taskflow-local")]
        stack: String,
    },
    /// Put a file under uploads/<agency>/ in the running `dev` stack's batch bucket, with the
    /// emulator's credentials: the upload trigger makes it a batch. Prints the object's key.
    Upload {
        #[arg(long)]
        agency: String,
        /// A .json, .jsonl or .csv file.
        #[arg(long)]
        file: std::path::PathBuf,
        /// Batch parameters as object metadata, e.g. --meta priority=high --meta items-per-batch=50
        /// (title, parallelism, tolerated-failure-percentage, priority, executor, items-per-batch).
        #[arg(long = "meta")]
        meta: Vec<String>,
        #[arg(long, default_value = "taskflow-local")]
        stack: String,
        /// The batch bucket; default: the running stack's.
        #[arg(long, env = "TASKFLOW_BATCH_BUCKET")]
        bucket: Option<String>,
        /// The emulator; default: the running stack's.
        #[arg(long, env = "TASKFLOW_EMULATOR_ENDPOINT")]
        endpoint: Option<String>,
    },
    /// Move a tier's dead letters back to its queue on the running `dev` stack, as SQS's
    /// StartMessageMoveTask does on AWS.
    Redrive {
        /// critical, high, normal, low or background.
        #[arg(long)]
        tier: String,
        #[arg(long, default_value = "taskflow-local")]
        stack: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Invoke { .. } | Command::Upload { .. }) {
        // The response is the output; everything else goes to stderr.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_target(false)
            .without_time()
            .init();
    } else {
        shared::telemetry::init();
    }
    match cli.command {
        Command::Dev {
            port,
            emulator_port,
            stack,
        } => dev(port, emulator_port, stack).await,
        Command::Token {
            agency,
            user,
            role,
            ttl,
        } => token(&agency, &user, &role, ttl),
        Command::Invoke {
            function,
            event,
            stack,
        } => invoke(&function, &event, &stack).await,
        Command::Redrive { tier, stack } => redrive(&tier, &stack).await,
        Command::Upload {
            agency,
            file,
            meta,
            stack,
            bucket,
            endpoint,
        } => upload(&agency, &file, &meta, &stack, bucket, endpoint).await,
    }
}

async fn dev(port: u16, emulator_port: u16, stack_name: String) -> Result<()> {
    let repo_root = StackOptions::repo_root();
    let backend = match std::env::var("AWS_ENDPOINT_URL") {
        Ok(endpoint) if !endpoint.is_empty() => Backend::Existing { endpoint },
        _ => Backend::Moto {
            venv: repo_root.join(".venv"),
            port: emulator_port,
        },
    };
    let options = StackOptions {
        repo_root,
        stack_name,
        backend,
        api_port: port,
        jwt_secret: jwt::secret_from_env(),
        // Local demos post to receivers on this machine.
        parameter_overrides: vec![(
            "HttpExecutorAllowedHosts".to_owned(),
            local_stack::LOOPBACK_ALLOWED.to_owned(),
        )],
        functions: local_stack::FunctionHost::from_env(&StackOptions::repo_root()),
        api_timeout: local_stack::api_gateway::INTEGRATION_TIMEOUT,
    };
    let stack_name = options.stack_name.clone();
    let stack = LocalStack::start(options).await?;
    // What `local-stack invoke` needs to run a function against this stack.
    let manifest = functions_manifest(&stack_name);
    std::fs::create_dir_all(manifest.parent().expect("a directory"))?;
    std::fs::write(
        &manifest,
        serde_json::to_vec_pretty(&stack.function_configs())?,
    )?;
    let mut summary = format!(
        "\nTaskflow is running.\n  API        {}/api  (OpenAPI: {}/api/openapi.json)\n  console    {}/console/  (sign in with a token from make token)\n  emulator   {}\n",
        stack.api_url(),
        stack.api_url(),
        stack.api_url(),
        stack.emulator.endpoint
    );
    let mut refs: Vec<_> = stack.resources.refs.iter().collect();
    refs.sort();
    for (logical, physical) in refs {
        summary.push_str(&format!("  {logical:<22} {physical}\n"));
    }
    summary.push_str(&format!(
        "\nThe http executor may reach loopback here (HttpExecutorAllowedHosts={}); on AWS it refuses it by default.\n",
        local_stack::LOOPBACK_ALLOWED
    ));
    summary.push_str(
        "\nState-change events go to the bus EventBus names above; each one shows below as an EventPublisherFunction \"state change\" line (README \"State-change events\").\n",
    );
    summary.push_str(
        "\nGet a token: make token AGENCY=acme USER=alice ROLE=manager\nCtrl-C stops everything.\n",
    );
    tracing::info!("{summary}");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("stopping");
    stack.stop().await;
    Ok(())
}

fn token(agency: &str, user: &str, role: &str, ttl: i64) -> Result<()> {
    role.parse::<shared::domain::Role>()
        .map_err(|problem| anyhow!("--role: {problem}"))?;
    let token = jwt::sign(&jwt::secret_from_env(), user, agency, role, ttl);
    // The token is the command's output, for $(make -s token ...).
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, format!("{token}\n").as_bytes())?;
    Ok(())
}

/// The running `dev` stack's functions, from the manifest it wrote.
fn stack_functions(stack: &str) -> Result<Vec<local_stack::runtime::FunctionConfig>> {
    let manifest = functions_manifest(stack);
    let text = std::fs::read(&manifest).with_context(|| {
        format!(
            "reading {} (start the stack first: make dev)",
            manifest.display()
        )
    })?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a functions manifest", manifest.display()))
}

/// A variable of the running `dev` stack's API function environment.
fn stack_env(stack: &str, name: &str) -> Result<String> {
    let configs = stack_functions(stack)?;
    let api = configs
        .iter()
        .find(|c| c.name == local_stack::functions::API_FUNCTION)
        .context("the stack's manifest has no API function")?;
    api.environment
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .with_context(|| format!("no {name} in the stack's environment"))
}

/// Puts a file under uploads/<agency>/ in the stack's batch bucket.
async fn upload(
    agency: &str,
    file: &std::path::Path,
    meta: &[String],
    stack: &str,
    bucket: Option<String>,
    endpoint: Option<String>,
) -> Result<()> {
    let metadata = local_stack::upload::parse_metadata(meta)?;
    let key = local_stack::upload::upload_key(agency, file)?;
    let bucket = match bucket {
        Some(bucket) => bucket,
        None => stack_env(stack, "BATCH_BUCKET")?,
    };
    let endpoint = match endpoint {
        Some(endpoint) => endpoint,
        None => stack_env(stack, "AWS_ENDPOINT_URL")?,
    };
    local_stack::upload::upload(&endpoint, &bucket, &key, file, &metadata).await?;
    // The key is the command's output.
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, format!("{key}\n").as_bytes())?;
    Ok(())
}

/// Moves a tier's dead letters back to its queue on the running `dev` stack.
async fn redrive(tier: &str, stack: &str) -> Result<()> {
    if tier.parse::<shared::domain::Priority>().is_err() {
        bail!("unknown tier '{tier}': one of critical, high, normal, low, background");
    }
    let tier = tier.to_ascii_uppercase();
    let env = |name: &str| stack_env(stack, name);
    let (queue, dead_letters) = (
        env(&format!("QUEUE_URL_{tier}"))?,
        env(&format!("DLQ_URL_{tier}"))?,
    );
    let endpoint = env("AWS_ENDPOINT_URL")?;
    let sdk = local_stack::emulator::sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    tracing::info!("moving the dead letters of {dead_letters} back to {queue}");
    let moved = local_stack::redrive::redrive(&sqs, &dead_letters, &queue, |n| {
        tracing::info!("{n} moved so far")
    })
    .await?;
    tracing::info!(
        "{moved} messages moved; now POST /api/tasks/{{id}}/retry for their failed tasks"
    );
    Ok(())
}

/// Where `dev` records how each function runs, for `invoke` and `redrive`.
fn functions_manifest(stack: &str) -> std::path::PathBuf {
    StackOptions::repo_root()
        .join(".local")
        .join(stack)
        .join("functions.json")
}

/// One invocation of a function's binary, as `sam local invoke` does it, against the stack
/// `dev` is running: that function's environment, Timeout and MemorySize.
async fn invoke(function: &str, event_file: &str, stack: &str) -> Result<()> {
    let manifest = functions_manifest(stack);
    let configs = stack_functions(stack)?;
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let Some(config) = configs.into_iter().find(|c| c.name == function) else {
        bail!(
            "no function '{function}' in {}; the stack has: {}",
            manifest.display(),
            names.join(", ")
        );
    };
    let event = std::fs::read(event_file).with_context(|| format!("reading {event_file}"))?;
    serde_json::from_slice::<serde_json::Value>(&event)
        .with_context(|| format!("{event_file} is not JSON"))?;
    let runtime = local_stack::runtime::FunctionRuntime::new(config);
    let started = std::time::Instant::now();
    let outcome = runtime.invoke(event).await;
    let millis = started.elapsed().as_millis();
    match outcome {
        Ok(body) => {
            let pretty = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            tracing::info!("REPORT {function}: {millis} ms, cold start");
            let mut out = std::io::stdout().lock();
            std::io::Write::write_all(&mut out, format!("{pretty}\n").as_bytes())?;
            Ok(())
        }
        Err(err) => {
            tracing::error!("REPORT {function}: {millis} ms, failed");
            bail!("{function}: {err}")
        }
    }
}
