//! `local-stack dev`: the whole system on this machine, no Docker, no AWS account.
//! `local-stack token`: a bearer token for the local API.

use anyhow::{bail, Context, Result};
use local_stack::{jwt, Backend, LocalStack, StackOptions};
use std::collections::HashMap;

const USAGE: &str = "usage:
  local-stack dev    [--port 3000] [--emulator-port 5050] [--stack taskflow-local]
  local-stack token  --agency ID --user ID --role manager|member|agent [--ttl SECONDS]
  local-stack invoke --function LogicalId --event FILE [--stack taskflow-local]
                     (one invocation of the function's binary against the running `dev` stack;
                     the response goes to stdout, the function's logs to stderr)
  local-stack redrive --tier critical|high|normal|low|background [--stack taskflow-local]
                     (moves the tier's dead letters back to its queue on the running `dev` stack,
                     as SQS's StartMessageMoveTask does on AWS)

environment: AWS_ENDPOINT_URL uses an already running emulator (e.g. LocalStack)
instead of starting moto; LOCAL_JWT_SECRET overrides the development signing secret.";

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    if command == "invoke" {
        // The response is the output; everything else goes to stderr.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_target(false)
            .without_time()
            .init();
    } else {
        shared::telemetry::init();
    }
    let flags = parse_flags(args.collect())?;
    match command.as_str() {
        "dev" => dev(&flags).await,
        "token" => token(&flags),
        "invoke" => invoke(&flags).await,
        "redrive" => redrive(&flags).await,
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn parse_flags(args: Vec<String>) -> Result<HashMap<String, String>> {
    let mut flags = HashMap::new();
    let mut iter = args.into_iter();
    while let Some(flag) = iter.next() {
        let Some(name) = flag.strip_prefix("--") else {
            bail!("unexpected argument '{flag}'\n{USAGE}")
        };
        let value = iter
            .next()
            .with_context(|| format!("--{name} needs a value"))?;
        flags.insert(name.to_owned(), value);
    }
    Ok(flags)
}

fn port_flag(flags: &HashMap<String, String>, name: &str, env: &str, default: u16) -> Result<u16> {
    match flags.get(name).cloned().or_else(|| std::env::var(env).ok()) {
        Some(v) => v
            .parse()
            .with_context(|| format!("--{name} must be a port number")),
        None => Ok(default),
    }
}

async fn dev(flags: &HashMap<String, String>) -> Result<()> {
    let repo_root = StackOptions::repo_root();
    let backend = match std::env::var("AWS_ENDPOINT_URL") {
        Ok(endpoint) if !endpoint.is_empty() => Backend::Existing { endpoint },
        _ => Backend::Moto {
            venv: repo_root.join(".venv"),
            port: port_flag(flags, "emulator-port", "EMULATOR_PORT", 5050)?,
        },
    };
    let options = StackOptions {
        repo_root,
        stack_name: flags
            .get("stack")
            .cloned()
            .unwrap_or_else(|| "taskflow-local".into()),
        backend,
        api_port: port_flag(flags, "port", "PORT", 3000)?,
        jwt_secret: jwt::secret_from_env(),
        parameter_overrides: Vec::new(),
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
        "\nTaskflow is running.\n  API        {}/api  (OpenAPI: {}/api/openapi.json)\n  emulator   {}\n",
        stack.api_url(),
        stack.api_url(),
        stack.emulator.endpoint
    );
    let mut refs: Vec<_> = stack.resources.refs.iter().collect();
    refs.sort();
    for (logical, physical) in refs {
        summary.push_str(&format!("  {logical:<22} {physical}\n"));
    }
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

fn token(flags: &HashMap<String, String>) -> Result<()> {
    let get = |name: &str| {
        flags
            .get(name)
            .cloned()
            .with_context(|| format!("--{name} is required\n{USAGE}"))
    };
    let role = get("role")?;
    if role.parse::<shared::domain::Role>().is_err() {
        bail!("--role must be manager, member or agent");
    }
    let ttl = match flags.get("ttl") {
        Some(t) => t.parse().context("--ttl must be a number of seconds")?,
        None => 12 * 60 * 60,
    };
    let token = jwt::sign(
        &jwt::secret_from_env(),
        &get("user")?,
        &get("agency")?,
        &role,
        ttl,
    );
    // The token is the command's output, for $(make -s token ...).
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, format!("{token}\n").as_bytes())?;
    Ok(())
}

/// Where `dev` records how each function runs, for `invoke`.
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

/// Moves a tier's dead letters back to its queue on the running `dev` stack.
async fn redrive(flags: &HashMap<String, String>) -> Result<()> {
    let tier = flags
        .get("tier")
        .with_context(|| format!("--tier is required\n{USAGE}"))?;
    if tier.parse::<shared::domain::Priority>().is_err() {
        bail!("unknown tier '{tier}': one of critical, high, normal, low, background");
    }
    let tier = tier.to_ascii_uppercase();
    let stack = flags
        .get("stack")
        .cloned()
        .unwrap_or_else(|| "taskflow-local".into());
    let configs = stack_functions(&stack)?;
    let api = configs
        .iter()
        .find(|c| c.name == local_stack::functions::API_FUNCTION)
        .context("the stack's manifest has no API function")?;
    let env = |name: &str| {
        api.environment
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .with_context(|| format!("no {name} in the stack's environment"))
    };
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

fn functions_manifest(stack: &str) -> std::path::PathBuf {
    StackOptions::repo_root()
        .join(".local")
        .join(stack)
        .join("functions.json")
}

/// One invocation of a function's binary, as `sam local invoke` does it, against the stack
/// `dev` is running: that function's environment, Timeout and MemorySize.
async fn invoke(flags: &HashMap<String, String>) -> Result<()> {
    let function = flags
        .get("function")
        .with_context(|| format!("--function is required\n{USAGE}"))?;
    let event_file = flags
        .get("event")
        .with_context(|| format!("--event is required\n{USAGE}"))?;
    let stack = flags
        .get("stack")
        .cloned()
        .unwrap_or_else(|| "taskflow-local".into());
    let manifest = functions_manifest(&stack);
    let configs = stack_functions(&stack)?;
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let Some(config) = configs.into_iter().find(|c| &c.name == function) else {
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
